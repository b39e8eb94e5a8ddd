package launch

import (
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/agent"
	"github.com/cgfs/cgfs/translate/layout"
)

// kernelMount is one cgroup hierarchy as the kernel mounts it: where in
// the layout, and its file system type and options.
type kernelMount struct {
	Dir    string // "" for the whole of /sys/fs/cgroup (a cgroup v2 only host)
	FSType string // cgroup2 or cgroup
	Data   string // v1: the controllers ("cpu,cpuacct", "none,name=systemd")
}

func kernelMountOf(h layout.Hierarchy) kernelMount {
	if !h.V1 {
		return kernelMount{Dir: h.Name, FSType: "cgroup2"}
	}
	data := string(h.Controllers)
	if strings.HasPrefix(data, "name=") {
		data = "none," + data
	}
	return kernelMount{Dir: h.Name, FSType: "cgroup", Data: data}
}

// placeView puts the view (a detached mount) at target so that the
// mount table looks as a host's: under every view directory of a
// hierarchy lies the kernel's own mount of it (read-only, of the
// container's cgroup namespace), so /proc/self/mountinfo and
// /proc/mounts name a cgroup2 (or, per v1 hierarchy, a cgroup) mount at
// each mount point, with the view on top, where every path resolves. On
// v1 and hybrid hosts the layout root lies on a read-only tmpfs, as the
// host's /sys/fs/cgroup is one, and each hierarchy directory is a mount
// point of its own (a bind of the view's directory).
//
// The mounts beneath give the container nothing: they are read-only,
// and the kernel judges writes to them by host ownership, which is host
// root's throughout (cgfs shows owners through an xattr and never
// chowns a host cgroup).
func placeView(view int, target string, mounts []kernelMount) error {
	const ro = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if len(mounts) == 1 && mounts[0].Dir == "" {
		err := unix.Mount(mounts[0].FSType, target, mounts[0].FSType, ro, "")
		if err == unix.EBUSY {
			// target is the root of the host's own cgroup2 mount (the
			// host's file system is shared), and the kernel stacks no
			// superblock on its own root: a tmpfs goes between.
			if err = unix.Mount("tmpfs", target, "tmpfs", ro, "mode=755"); err == nil {
				err = unix.Mount(mounts[0].FSType, target, mounts[0].FSType, ro, "")
			}
		}
		if err != nil {
			return fmt.Errorf("mounting %s at %s: %w", mounts[0].FSType, target, err)
		}
		return moveMount(view, target)
	}
	if err := unix.Mount("tmpfs", target, "tmpfs", ro, "mode=755"); err != nil {
		return fmt.Errorf("mounting a tmpfs at %s: %w", target, err)
	}
	if err := moveMount(view, target); err != nil {
		return err
	}
	// The binds are taken before anything covers their directories.
	binds := make([]int, len(mounts))
	defer func() {
		for _, fd := range binds {
			if fd > 0 {
				unix.Close(fd)
			}
		}
	}()
	for i, m := range mounts {
		fd, err := unix.OpenTree(view, m.Dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return fmt.Errorf("a bind of the view's %s: %w", m.Dir, err)
		}
		binds[i] = fd
	}
	for i, m := range mounts {
		dir := filepath.Join(target, m.Dir)
		if err := unix.Mount(m.FSType, dir, m.FSType, ro, m.Data); err != nil {
			return fmt.Errorf("mounting %s (%s) at %s: %w", m.FSType, m.Data, dir, err)
		}
		if err := moveMount(binds[i], dir); err != nil {
			return err
		}
	}
	return nil
}

func moveMount(fd int, to string) error {
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, to, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("putting the view at %s: %w", to, err)
	}
	return nil
}

// Magic is what statfs reports for the files of a view served as
// mounts lays out, on the FUSE device dev: cgroup2 for a cgroup v2 only
// host; on v1 and hybrid hosts tmpfs for the layout root (its inode
// numbers carry no hierarchy) and, by the hierarchy each inode number's
// base names (serve gives view i the base (i+1)<<48), cgroup for v1 and
// cgroup2 for the v2 one.
func Magic(dev uint64, mounts []kernelMount) agent.Magic {
	return func(d, ino uint64) (int64, bool) {
		if d != dev {
			return 0, false
		}
		if len(mounts) == 1 && mounts[0].Dir == "" {
			return unix.CGROUP2_SUPER_MAGIC, true
		}
		i := ino >> 48
		switch {
		case i == 0:
			return unix.TMPFS_MAGIC, true
		case int(i) > len(mounts):
			return 0, false
		case mounts[i-1].FSType == "cgroup2":
			return unix.CGROUP2_SUPER_MAGIC, true
		}
		return unix.CGROUP_SUPER_MAGIC, true
	}
}
