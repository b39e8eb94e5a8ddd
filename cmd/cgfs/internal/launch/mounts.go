package launch

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/mimic"
)

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
func placeView(view int, target string, mounts []mimic.Mount) error {
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
