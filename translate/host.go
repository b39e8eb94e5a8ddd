package translate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/prometheus/procfs"

	"golang.org/x/sys/unix"
)

// resolve is how every host name is resolved: beneath the root fd, never
// through a symlink or magic link, never onto another filesystem.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS |
	unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// Error is a failed host operation. It names the operation and the host
// path for the log; Unwrap gives the errno a container sees.
type Error struct {
	Op   string // "open", "mkdir", "write", ...
	Path string // relative to the host root, "." for the root itself
	Data string // what was written, shortened, for writes
	Err  error
}

func (e *Error) Error() string {
	if e.Data != "" {
		return fmt.Sprintf("%s %s (data %q): %v", e.Op, e.Path, e.Data, e.Err)
	}
	return fmt.Sprintf("%s %s: %v", e.Op, e.Path, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Host is a host cgroup directory, opened once, through which all host
// I/O of a view is done. A Host is safe for concurrent use.
type Host struct {
	root *os.File // O_PATH directory fd of the delegated host cgroup
	dir  string   // for messages only; never used to resolve names
	// cgroupPath is the root's path in its hierarchy, as
	// /proc/PID/cgroup shows it to the server ("/a/b"); empty for a
	// directory that is not a cgroup.
	cgroupPath string
	// controllers is the hierarchy's field in /proc/PID/cgroup lines:
	// "" for cgroup v2, "memory", "cpu,cpuacct", "name=systemd" for v1.
	controllers string
}

// OpenHost opens dir as the root of all later host access. The fd is held
// until Close.
func OpenHost(dir string) (*Host, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Op: "open", Path: dir, Err: err}
	}
	return &Host{root: os.NewFile(uintptr(fd), dir), dir: dir}, nil
}

// OpenCgroup2 opens dir, which must be a directory on a cgroup2
// filesystem, as the root of later host access.
func OpenCgroup2(dir string) (*Host, error) {
	h, err := OpenHost(dir)
	if err != nil {
		return nil, err
	}
	if ok, err := h.IsCgroup2(); err != nil || !ok {
		h.Close()
		return nil, fmt.Errorf("%s is not a directory on a cgroup2 filesystem", dir)
	}
	if h.cgroupPath, err = cgroupPathOf(dir); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// cgroupPathOf finds the cgroup2 mount holding dir and returns dir's path
// within the hierarchy.
func cgroupPathOf(dir string) (string, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	mounts, err := procfs.GetMounts()
	if err != nil {
		return "", err
	}
	best, bestRoot := "", ""
	for _, m := range mounts {
		if m.FSType != "cgroup2" {
			continue
		}
		if real == m.MountPoint || strings.HasPrefix(real, strings.TrimSuffix(m.MountPoint, "/")+"/") {
			if len(m.MountPoint) > len(best) {
				best, bestRoot = m.MountPoint, m.Root
			}
		}
	}
	if best == "" {
		return "", fmt.Errorf("%s: no cgroup2 mount holds it", dir)
	}
	rel, err := filepath.Rel(best, real)
	if err != nil {
		return "", err
	}
	return filepath.Join(bestRoot, rel), nil
}

// Close releases the root fd.
func (h *Host) Close() error { return h.root.Close() }

// Dir is the host directory the Host was opened on, for messages.
func (h *Host) Dir() string { return h.dir }

// IsCgroup2 reports whether the host root lies on a cgroup2 filesystem.
func (h *Host) IsCgroup2() (bool, error) {
	st, err := h.Statfs()
	return err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC, err
}

// Statfs returns the host filesystem's statistics.
func (h *Host) Statfs() (unix.Statfs_t, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(h.root.Fd()), &st); err != nil {
		return st, &Error{Op: "statfs", Path: ".", Err: err}
	}
	return st, nil
}

func clean(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

// openFd resolves rel beneath the root and opens it with flags.
func (h *Host) openFd(op, rel string, flags int) (int, error) {
	rel = clean(rel)
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolve}
	for {
		fd, err := unix.Openat2(int(h.root.Fd()), rel, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			// openat2 returns EAGAIN when a concurrent rename raced
			// with RESOLVE_BENEATH; retrying is what the man page asks.
			continue
		}
		if err != nil {
			return -1, &Error{Op: op, Path: rel, Err: err}
		}
		return fd, nil
	}
}

// Open opens a host file beneath the root. flags are open(2) flags; the
// caller closes the file.
func (h *Host) Open(rel string, flags int) (*os.File, error) {
	fd, err := h.openFd("open", rel, flags)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), clean(rel)), nil
}

// ReadFile reads a host control file from offset 0 to its end.
func (h *Host) ReadFile(rel string) ([]byte, error) {
	f, err := h.Open(rel, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := preadAll(f)
	if err != nil {
		return nil, &Error{Op: "read", Path: clean(rel), Err: err}
	}
	return b, nil
}

// Stat returns the host attributes of rel without following links.
func (h *Host) Stat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := h.openFd("stat", rel, unix.O_PATH)
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return st, &Error{Op: "stat", Path: clean(rel), Err: err}
	}
	return st, nil
}

// Entry is one name in a host directory.
type Entry struct {
	Name string
	Ino  uint64
	Mode uint32 // full st_mode
}

// ReadDir lists the host directory rel, sorted by name, without "." and
// "..", with each entry's inode and mode.
func (h *Host) ReadDir(rel string) ([]Entry, error) {
	fd, err := h.openFd("readdir", rel, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	names, err := h.Names(rel)
	if err != nil {
		return nil, err
	}
	out := names[:0]
	for _, e := range names {
		// The name comes from the host directory itself, so it is a
		// single component; AT_SYMLINK_NOFOLLOW keeps fstatat on this fd.
		var st unix.Stat_t
		if err := unix.Fstatat(fd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed on the host while we listed
			}
			return nil, &Error{Op: "stat", Path: Join(rel, e.Name), Err: err}
		}
		out = append(out, Entry{Name: e.Name, Ino: st.Ino, Mode: st.Mode})
	}
	return out, nil
}

// Names lists the host directory rel, sorted, with each entry's file
// type only (from getdents' d_type, no stat per entry): the cheap listing
// for walks that need no attributes. Ino is 0.
func (h *Host) Names(rel string) ([]Entry, error) {
	fd, err := h.openFd("readdir", rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	dir := os.NewFile(uintptr(fd), clean(rel))
	defer dir.Close()
	des, err := dir.ReadDir(-1)
	if err != nil {
		return nil, &Error{Op: "readdir", Path: clean(rel), Err: err}
	}
	out := make([]Entry, 0, len(des))
	for _, de := range des {
		mode := uint32(unix.S_IFREG)
		if de.IsDir() {
			mode = unix.S_IFDIR
		}
		out = append(out, Entry{Name: de.Name(), Mode: mode})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Mkdir creates the directory name in the host directory parent.
func (h *Host) Mkdir(parent, name string, mode uint32) error {
	return h.atParent("mkdir", parent, name, func(fd int) error {
		return unix.Mkdirat(fd, name, mode)
	})
}

// Rmdir removes the directory name from the host directory parent.
func (h *Host) Rmdir(parent, name string) error {
	return h.atParent("rmdir", parent, name, func(fd int) error {
		return unix.Unlinkat(fd, name, unix.AT_REMOVEDIR)
	})
}

// Rename renames oldName in oldParent to newName in newParent with
// renameat2 flags. cgroup v2 refuses every rename (EPERM); v1 allows one
// within a parent.
func (h *Host) Rename(oldParent, oldName, newParent, newName string, flags uint) error {
	return h.atParent("rename", oldParent, oldName, func(ofd int) error {
		return h.atParent("rename", newParent, newName, func(nfd int) error {
			return unix.Renameat2(ofd, oldName, nfd, newName, flags)
		})
	})
}

// atParent opens parent beneath the root and runs f on its fd. name must
// already be a single valid component (see ValidName).
func (h *Host) atParent(op, parent, name string, f func(fd int) error) error {
	fd, err := h.openFd(op, parent, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := f(fd); err != nil {
		return &Error{Op: op, Path: Join(parent, name), Err: err}
	}
	return nil
}

// Chmod sets the permission bits of rel.
func (h *Host) Chmod(rel string, mode uint32) error {
	return h.onPath("chmod", rel, func(p string) error { return unix.Chmod(p, mode) })
}

// Chown sets the owner of rel; -1 leaves an id unchanged.
func (h *Host) Chown(rel string, uid, gid int) error {
	fd, err := h.openFd("chown", rel, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return &Error{Op: "chown", Path: clean(rel), Err: err}
	}
	return nil
}

// Utimes sets access and modification times of rel.
func (h *Host) Utimes(rel string, ts []unix.Timespec) error {
	return h.onPath("utimes", rel, func(p string) error {
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0)
	})
}

// onPath runs f on the /proc/self/fd path of an O_PATH fd of rel: the way
// to chmod or utimes a file resolved with openat2 (fchmod and futimens
// refuse O_PATH fds). The magic link is followed by the kernel, not by
// a name a container chose.
func (h *Host) onPath(op, rel string, f func(p string) error) error {
	fd, err := h.openFd(op, rel, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := f(fmt.Sprintf("/proc/self/fd/%d", fd)); err != nil {
		return &Error{Op: op, Path: clean(rel), Err: err}
	}
	return nil
}

// Join joins a directory path of a tree ("" for its root) and a name.
func Join(dir, name string) string {
	if dir == "" || dir == "." {
		return name
	}
	if name == "" {
		return dir
	}
	return dir + "/" + name
}

// MaxName is the longest name cgfs accepts for a cgroup (NAME_MAX).
const MaxName = 255

// ValidName checks a single name a container sends. The kernel refuses
// '\n' in cgroup names (EINVAL, kernel/cgroup/cgroup.c cgroup_mkdir, so
// /proc/PID/cgroup stays parseable); cgfs also refuses names longer than
// NAME_MAX (ENAMETOOLONG; kernfs itself would take them) and anything
// that is not one plain component.
func ValidName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return unix.EINVAL
	case len(name) > MaxName:
		return unix.ENAMETOOLONG
	case strings.ContainsAny(name, "/\x00\n"):
		return unix.EINVAL
	}
	return nil
}
