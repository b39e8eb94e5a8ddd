package mimic

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/agent"
	"github.com/cgfs/cgfs/proc"
)

// Nester answers a container's cgroupfs mounts (nesting keeps the
// rules): a process of the container that mounts cgroupfs (a nested
// runtime giving its container a /sys/fs/cgroup) gets, instead of the
// kernel's mount, a cgfs view of its own cgroups, owned as the kernel
// owns such a mount (by the user namespace that owns the caller's cgroup
// namespace): the nested container is served by cgfs, its limits locked
// from it, its processes in hidden leaves, as the outer one is.
type Nester struct {
	// Serve serves a new view of the caller's cgroups, detached, and
	// says when its connection ends (done); ErrDecline leaves the mount
	// to the kernel (no container cgfs serves holds the caller).
	Serve  func(c agent.Caller) (view *os.File, done <-chan struct{}, err error)
	Ident  *access.Identifier
	Set    *Set // the nested views join it
	Mounts []Mount
	Log    *slog.Logger

	mu         sync.Mutex
	lastLog    time.Time
	suppressed int
}

// ErrDecline is Nester.Serve's answer for a caller of no container cgfs
// serves: the kernel judges its mount.
var ErrDecline = errors.New("no container of cgfs's: the kernel answers")

// Mount is the agent's Mounter. The caller must be allowed the mount as
// the kernel would allow it: CAP_SYS_ADMIN over the user namespace that
// owns its mount namespace (may_mount) and over the one that owns its
// cgroup namespace (cgroup_init_fs_context, then mount_capable). cgfs
// makes the mount as host root, so these checks are all that stand
// between an unprivileged process of the container and a mount anywhere
// in its namespace, or a view that makes it its cgroups' admin (a user
// namespace of its own, made with unshare -Ur, owns neither of the
// container's). Everything read of the caller (its credentials, its
// namespaces, its owner) is read before the notification is checked
// alive once more, so a thread id reused meanwhile can name nobody but
// the caller.
func (n *Nester) Mount(c agent.Caller, m agent.MountCall) (bool, unix.Errno) {
	dir, ok := n.hierarchy(m)
	if !ok {
		n.refuse("a cgroupfs mount of no hierarchy the host has", "tid", c.Tid, "fstype", m.FSType, "options", m.Data)
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
	mntns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", c.Tid))
	if err != nil {
		return true, unix.ESRCH
	}
	defer mntns.Close()
	if err := n.mayMount(c.Tid, mntns); err != nil {
		n.refuse("a cgroupfs mount by a caller the kernel would refuse", "tid", c.Tid, "why", err)
		return true, unix.EPERM
	}
	if !c.Valid() {
		return true, unix.ESRCH // the caller is gone: nobody waits for the answer
	}
	view, done, err := n.Serve(c)
	if errors.Is(err, ErrDecline) {
		return false, 0
	}
	if err != nil {
		n.refuse("no nested view for a cgroupfs mount", "tid", c.Tid, "err", err)
		return true, errnoOf(err, unix.EPERM)
	}
	defer view.Close()
	if !c.Valid() {
		return true, unix.ESRCH
	}
	var vst unix.Stat_t
	if err := unix.Fstat(int(view.Fd()), &vst); err != nil {
		return true, unix.EIO
	}
	remove := n.Set.Add(vst.Dev)
	go func() { <-done; remove() }() // a view not placed ends with view's Close
	if err := inMountNamespace(mntns, func(fds *os.File) error { return place(view, target, dir, m.Flags&unix.MS_RDONLY != 0, fds) }); err != nil {
		n.refuse("placing a nested view", "tid", c.Tid, "target", m.Target, "err", err)
		return true, errnoOf(err, unix.EINVAL)
	}
	n.Log.Info("a nested view", "tid", c.Tid, "target", m.Target, "hierarchy", dir)
	return true, 0
}

// mayMount is nil if thread tid may mount cgroupfs in its mount
// namespace mntns as the kernel judges it: CAP_SYS_ADMIN (effective, by
// cap_capable's rules) over the user namespace that owns mntns, and over
// the one that owns its cgroup namespace.
func (n *Nester) mayMount(tid int, mntns *os.File) error {
	p, err := procfs.NewProc(tid)
	if err != nil {
		return err
	}
	status, err := p.NewStatus()
	if err != nil {
		return err
	}
	caller, err := n.Ident.Identify(tid, uint32(status.UIDs[3]), uint32(status.GIDs[3]))
	if err != nil {
		return err
	}
	mntOwner, err := ownerChain(int(mntns.Fd()))
	if err != nil {
		return fmt.Errorf("the owner of its mount namespace: %w", err)
	}
	if !access.CapableOver(caller, mntOwner) {
		return errors.New("no CAP_SYS_ADMIN over the user namespace that owns its mount namespace")
	}
	cgns, err := os.Open(fmt.Sprintf("/proc/%d/ns/cgroup", tid))
	if err != nil {
		return err
	}
	defer cgns.Close()
	cgOwner, err := ownerChain(int(cgns.Fd()))
	if err != nil {
		return fmt.Errorf("the owner of its cgroup namespace: %w", err)
	}
	if !access.CapableOver(caller, cgOwner) {
		return errors.New("no CAP_SYS_ADMIN over the user namespace that owns its cgroup namespace")
	}
	return nil
}

// ownerChain is the chain of the user namespace that owns the namespace
// nsfd (NS_GET_USERNS), itself first.
func ownerChain(nsfd int) ([]proc.Ancestor, error) {
	fd, err := unix.IoctlRetInt(nsfd, unix.NS_GET_USERNS)
	if err != nil {
		return nil, fmt.Errorf("NS_GET_USERNS: %w", err)
	}
	return proc.Ancestry(fd, proc.MaxDepth)
}

// refuse logs a refusal of a container's mount, at most one line a
// second (a container can ask as often as it likes), with how many were
// left out.
func (n *Nester) refuse(msg string, args ...any) {
	n.mu.Lock()
	now := time.Now()
	if now.Sub(n.lastLog) < time.Second {
		n.suppressed++
		n.mu.Unlock()
		return
	}
	suppressed := n.suppressed
	n.lastLog, n.suppressed = now, 0
	n.mu.Unlock()
	n.Log.Warn(msg, append(args, "rule", "nested-mount", "suppressed", suppressed)...)
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

// inMountNamespace runs fn on a thread of its own in mount namespace
// mntns (proc.InNamespace), with this process's /proc/self/fd opened
// before.
func inMountNamespace(mntns *os.File, fn func(fds *os.File) error) error {
	fds, err := os.Open("/proc/self/fd")
	if err != nil {
		return err
	}
	defer fds.Close()
	return proc.InNamespace(int(mntns.Fd()), unix.CLONE_NEWNS, func() error { return fn(fds) })
}

// errnoOf is err's errno, or def.
func errnoOf(err error, def unix.Errno) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return def
}
