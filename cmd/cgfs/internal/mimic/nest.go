package mimic

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/agent"
)

// Nester answers a container's cgroupfs mounts (nesting keeps the
// rules): a process of the container that mounts cgroupfs (a nested
// runtime giving its container a /sys/fs/cgroup) gets, instead of the
// kernel's mount, a cgfs view of its own cgroups with itself as the
// owner: the nested container is served by cgfs, its limits locked from
// it, its processes in hidden leaves, as the outer one is.
type Nester struct {
	Serve  func(owner int) (*os.File, error) // a new view of owner's cgroups, detached
	Set    *Set                              // the nested views join it
	Mounts []Mount
	Log    *slog.Logger
}

// Mount is the agent's Mounter.
func (n *Nester) Mount(c agent.Caller, m agent.MountCall) (bool, unix.Errno) {
	dir, ok := n.hierarchy(m)
	if !ok {
		n.Log.Warn("refused a cgroupfs mount of no hierarchy the host has", "rule", "nested-mount",
			"tid", c.Tid, "fstype", m.FSType, "options", m.Data)
		return true, unix.EPERM
	}
	if m.Flags&(unix.MS_REMOUNT|unix.MS_BIND|unix.MS_MOVE) != 0 {
		return false, 0 // a change of a mount that exists: the kernel's
	}
	target, err := c.Resolve(m.Target)
	if err != nil {
		return true, errnoOf(err, unix.ENOENT)
	}
	defer target.Close()
	st, err := procfs.NewProc(c.Tid)
	if err != nil {
		return true, unix.ESRCH
	}
	status, err := st.NewStatus()
	if err != nil {
		return true, unix.ESRCH
	}
	owner := int(status.TGID)
	view, err := n.Serve(owner)
	if err != nil {
		n.Log.Warn("no nested view for a cgroupfs mount", "rule", "nested-mount", "owner", owner, "err", err)
		return true, unix.EPERM
	}
	defer view.Close()
	var vst unix.Stat_t
	if err := unix.Fstat(int(view.Fd()), &vst); err != nil {
		return true, unix.EIO
	}
	n.Set.Add(vst.Dev)
	if err := inMountNamespace(c.Tid, func(fds *os.File) error { return place(view, target, dir, m.Flags&unix.MS_RDONLY != 0, fds) }); err != nil {
		n.Log.Warn("placing a nested view", "owner", owner, "target", m.Target, "err", err)
		return true, errnoOf(err, unix.EINVAL)
	}
	n.Log.Info("a nested view", "owner", owner, "target", m.Target, "hierarchy", dir)
	return true, 0
}

// hierarchy is the layout directory of the hierarchy a mount asks for:
// cgroup2, or the v1 hierarchy whose controllers (or name=) its options
// name.
func (n *Nester) hierarchy(m agent.MountCall) (string, bool) {
	want := controllerSet(m.Data)
	for _, k := range n.Mounts {
		if k.FSType != m.FSType {
			continue
		}
		if m.FSType == "cgroup2" || slices.Equal(controllerSet(k.Data), want) {
			return k.Dir, true
		}
	}
	return "", false
}

// controllerSet is the sorted controllers and name= of mount options,
// without the others (none, xattr, ...).
func controllerSet(data string) []string {
	var out []string
	for _, o := range strings.Split(data, ",") {
		switch {
		case strings.HasPrefix(o, "name="):
			out = append(out, o)
		case o == "" || o == "none" || o == "xattr" || o == "noprefix" || o == "clone_children" ||
			o == "cpuset_v2_mode" || o == "favordynmods" || o == "nofavordynmods" || o == "ro" || o == "rw" ||
			strings.HasPrefix(o, "release_agent="):
		default:
			out = append(out, o)
		}
	}
	slices.Sort(out)
	return out
}

// place puts the layout mount view on target, or only its directory dir
// (a hierarchy of a v1 or hybrid layout): moved there whole, its
// directory cloned, and the whole taken away again. It runs in the
// caller's mount namespace; fds is this process's /proc/self/fd, from
// its own mount namespace.
func place(view, target *os.File, dir string, readOnly bool, fds *os.File) error {
	const empty = unix.MOVE_MOUNT_F_EMPTY_PATH | unix.MOVE_MOUNT_T_EMPTY_PATH
	final := view
	if dir != "" {
		if err := unix.MoveMount(int(view.Fd()), "", int(target.Fd()), "", empty); err != nil {
			return fmt.Errorf("move_mount: %w", err)
		}
		fd, err := unix.OpenTree(int(view.Fd()), dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return fmt.Errorf("open_tree %s: %w", dir, err)
		}
		final = os.NewFile(uintptr(fd), dir)
		defer final.Close()
		// umount2 takes a path: the view's descriptor's magic link, from
		// this process's fd directory (the namespace's /proc is not
		// this process's).
		if err := unix.Fchdir(int(fds.Fd())); err != nil {
			return err
		}
		if err := unix.Unmount(strconv.Itoa(int(view.Fd())), unix.MNT_DETACH); err != nil {
			return fmt.Errorf("umount: %w", err)
		}
	}
	if readOnly {
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(int(final.Fd()), "", unix.AT_EMPTY_PATH, attr); err != nil {
			return fmt.Errorf("mount_setattr: %w", err)
		}
	}
	if err := unix.MoveMount(int(final.Fd()), "", int(target.Fd()), "", empty); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// inMountNamespace runs fn on a thread of its own in the mount
// namespace of thread tid, with this process's /proc/self/fd opened
// before. The thread is never used again (its goroutine stays locked to
// it and ends).
func inMountNamespace(tid int, fn func(fds *os.File) error) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", tid))
	if err != nil {
		return err
	}
	defer ns.Close()
	fds, err := os.Open("/proc/self/fd")
	if err != nil {
		return err
	}
	defer fds.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			done <- fmt.Errorf("unshare(CLONE_FS): %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			done <- fmt.Errorf("setns: %w", err)
			return
		}
		done <- fn(fds)
	}()
	return <-done
}

// errnoOf is err's errno, or def.
func errnoOf(err error, def unix.Errno) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return def
}
