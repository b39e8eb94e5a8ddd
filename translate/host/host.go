package host

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

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
	// rc reaches root's descriptor holding it (withRoot).
	rc  syscall.RawConn
	dir string // for messages only; never used to resolve names
	// cgroupfs is set when the directory is on a cgroup filesystem (v1
	// or v2); otherwise it is a tree of plain files (unit tests' fake
	// hierarchies), where writes must truncate.
	cgroupfs bool
}

// Open opens dir as the root of all later host access. The fd is held
// until Close.
func Open(dir string) (*Host, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Op: "open", Path: dir, Err: err}
	}
	return FromFile(os.NewFile(uintptr(fd), dir)), nil
}

// FromFile roots a Host at the open directory f (a root handed to a
// helper process).
func FromFile(f *os.File) *Host {
	h := &Host{root: f, dir: f.Name()}
	h.rc, _ = f.SyscallConn() // an *os.File always has one
	if st, err := h.Statfs(); err == nil {
		h.cgroupfs = st.Type == unix.CGROUP2_SUPER_MAGIC || st.Type == unix.CGROUP_SUPER_MAGIC
	}
	return h
}

// Root is the directory the Host is rooted at, for handing to a helper
// process.
func (h *Host) Root() *os.File { return h.root }

// Close releases the root fd: at once, or when the last operation using
// it (withRoot) ends.
func (h *Host) Close() error { return h.root.Close() }

// withRoot runs f on the root's descriptor, held meanwhile: a Close that
// races f (a view dropped while a control request uses it) closes the
// descriptor after f, and f never runs on its number reused by another
// file meanwhile, which a bare root.Fd() could (an openat2 relative to
// another container's directory). After Close it is EBADF.
func (h *Host) withRoot(f func(fd int) error) error {
	var ferr error
	if err := h.rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return unix.EBADF
	}
	return ferr
}

// Dir is the host directory the Host was opened on, for messages.
func (h *Host) Dir() string { return h.dir }

// IsCgroup2 reports whether the host root lies on a cgroup2 filesystem.
func (h *Host) IsCgroup2() bool {
	st, err := h.Statfs()
	return err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// Statfs returns the host filesystem's statistics.
func (h *Host) Statfs() (unix.Statfs_t, error) {
	var st unix.Statfs_t
	if err := h.withRoot(func(fd int) error { return unix.Fstatfs(fd, &st) }); err != nil {
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
		var fd int
		err := h.withRoot(func(root int) (err error) {
			fd, err = unix.Openat2(root, rel, &how)
			return err
		})
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
	b, err := PreadAll(f)
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
	Ino  uint64 // the host inode number
	Mode uint32 // the file type only (S_IFDIR, S_IFREG)
}

// IsDir reports whether the entry is a directory (a cgroup).
func (e Entry) IsDir() bool { return e.Mode&unix.S_IFMT == unix.S_IFDIR }

// openDir opens the host directory rel for reading its entries.
func (h *Host) openDir(op, rel string) (*os.File, int, error) {
	fd, err := h.openFd(op, rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, -1, err
	}
	return os.NewFile(uintptr(fd), clean(rel)), fd, nil
}

// Names reads the host directory rel once and returns its entries,
// sorted, without "." and "..", with their types and inode numbers as
// the directory itself gives them (getdents: no stat of each).
func (h *Host) Names(rel string) ([]Entry, error) {
	dir, fd, err := h.openDir("readdir", rel)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	var out []Entry
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &Error{Op: "readdir", Path: clean(rel), Err: err}
		}
		if n == 0 {
			break
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8,
		// name NUL-terminated.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return nil, &Error{Op: "readdir", Path: clean(rel), Err: unix.EIO}
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				e := Entry{Name: s, Ino: binary.NativeEndian.Uint64(b[0:8]), Mode: unix.S_IFREG}
				switch b[18] {
				case unix.DT_DIR:
					e.Mode = unix.S_IFDIR
				case unix.DT_UNKNOWN: // a file system that gives no types
					var st unix.Stat_t
					if err := unix.Fstatat(fd, s, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
						b = b[reclen:]
						continue // removed meanwhile
					}
					e.Mode = st.Mode & unix.S_IFMT
				}
				out = append(out, e)
			}
			b = b[reclen:]
		}
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

// StatXattr returns the host attributes of rel and the value of its
// extended attribute name (nil when it has none): one openat2.
func (h *Host) StatXattr(rel, name string) (unix.Stat_t, []byte, error) {
	var st unix.Stat_t
	fd, err := h.openFd("stat", rel, unix.O_PATH)
	if err != nil {
		return st, nil, err
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return st, nil, &Error{Op: "stat", Path: clean(rel), Err: err}
	}
	// getxattr refuses O_PATH descriptors; the kernel follows the fd's
	// magic link to the very file opened.
	val, err := getxattr(fmt.Sprintf("/proc/self/fd/%d", fd), name, unix.Getxattr)
	if err != nil {
		return st, nil, &Error{Op: "getxattr", Path: clean(rel), Err: err}
	}
	return st, val, nil
}

// Xattr returns the value of the extended attribute name of the open
// host file f (nil when it has none).
func Xattr(f *os.File, name string) ([]byte, error) {
	val, err := getxattr(name, name, func(_, attr string, dest []byte) (int, error) {
		return unix.Fgetxattr(int(f.Fd()), attr, dest)
	})
	if err != nil {
		return nil, &Error{Op: "getxattr", Path: f.Name(), Err: err}
	}
	return val, nil
}

// SetFileXattr sets the extended attribute name of the open host file f
// to val, or removes it for a nil val (none to remove, or a file system
// that keeps none, is no error).
func SetFileXattr(f *os.File, name string, val []byte) error {
	op, err := "setxattr", error(nil)
	if val == nil {
		op, err = "removexattr", unix.Fremovexattr(int(f.Fd()), name)
		if err == unix.ENODATA || err == unix.EOPNOTSUPP {
			err = nil
		}
	} else {
		err = unix.Fsetxattr(int(f.Fd()), name, val, 0)
	}
	if err != nil {
		return &Error{Op: op, Path: f.Name(), Err: err}
	}
	return nil
}

// getxattr reads an attribute with get, nil when there is none.
func getxattr(path, name string, get func(path, name string, dest []byte) (int, error)) ([]byte, error) {
	buf := make([]byte, 256)
	n, err := get(path, name, buf)
	switch {
	case err == unix.ENODATA:
		return nil, nil
	case err != nil:
		return nil, err
	}
	return buf[:n], nil
}

// SetXattr sets the extended attribute name of rel to val.
func (h *Host) SetXattr(rel, name string, val []byte) error {
	return h.onPath("setxattr", rel, func(p string) error { return unix.Setxattr(p, name, val, 0) })
}

// SetXattrTree sets the extended attribute name to val on the directory
// rel and on every entry in it: one open, one setxattr per entry, each
// entry named by the host's own listing (a single component, never
// followed if a symlink).
func (h *Host) SetXattrTree(rel, name string, val []byte) error {
	dir, fd, err := h.openDir("setxattr", rel)
	if err != nil {
		return err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return &Error{Op: "readdir", Path: clean(rel), Err: err}
	}
	if err := unix.Fsetxattr(fd, name, val, 0); err != nil {
		return &Error{Op: "setxattr", Path: clean(rel), Err: err}
	}
	for _, e := range names {
		p := fmt.Sprintf("/proc/self/fd/%d/%s", fd, e)
		if err := unix.Lsetxattr(p, name, val, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return &Error{Op: "setxattr", Path: Join(rel, e), Err: err}
		}
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

// WriteFile writes data to the host file rel in one write(2).
func (h *Host) WriteFile(rel string, data []byte) (int, error) {
	f, err := h.Open(rel, unix.O_WRONLY)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return h.Write(f, clean(rel), data)
}

// Write writes data to the open host file f (named rel, for messages) in
// one write(2) at offset 0, as cgroupfs takes each write whole. On a
// tree of plain files (a fake hierarchy) the file is cut to what was
// written, as if it were a control file that holds its last value.
func (h *Host) Write(f *os.File, rel string, data []byte) (int, error) {
	n, err := unix.Pwrite(int(f.Fd()), data, 0)
	if err != nil {
		return 0, &Error{Op: "write", Path: rel, Data: Shorten(data), Err: err}
	}
	if !h.cgroupfs {
		_ = unix.Ftruncate(int(f.Fd()), int64(n))
	}
	return n, nil
}

// PreadAll reads a control file from offset 0 to its end.
func PreadAll(f *os.File) ([]byte, error) { return PreadAllHint(f, 0) }

// PreadAllHint is PreadAll into a buffer of at least hint bytes (what
// the file held last time): one read for a file that did not grow.
func PreadAllHint(f *os.File, hint int) ([]byte, error) {
	buf := make([]byte, 0, max(4096, hint+hint/8+1))
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := unix.Pread(int(f.Fd()), buf[len(buf):cap(buf)], int64(len(buf)))
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// Keyed parses flat-keyed cgroup text ("key value" lines: cgroup.stat,
// memory.events, cpu.stat, ...) into numbers, the one parser of it:
// prometheus/procfs reads /proc, not cgroup files.
func Keyed(b []byte) map[string]int64 {
	out := map[string]int64{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) == 2 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				out[f[0]] = n
			}
		}
	}
	return out
}

// Shorten keeps what a container wrote short enough for a log line.
func Shorten(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}

// fileidKernfs is the file handle type of kernfs (cgroupfs): its bytes
// are the node's 64-bit id, which is its inode number.
const fileidKernfs = 0xfe

// PathOf is the path below the root of the host file or cgroup whose
// inode number is ino ("" for the root itself), found through its file
// handle (open_by_handle_at(2), which needs CAP_DAC_READ_SEARCH): how a
// server that takes a connection over learns what the kernel's node ids
// name. A node outside the root, or gone, is ESTALE.
func (h *Host) PathOf(ino uint64) (string, error) {
	mnt, err := unix.Open(h.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &Error{Op: "open", Path: h.dir, Err: err}
	}
	defer unix.Close(mnt)
	b := make([]byte, 8)
	binary.NativeEndian.PutUint64(b, ino)
	fd, err := unix.OpenByHandleAt(mnt, unix.NewFileHandle(fileidKernfs, b), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", &Error{Op: "open_by_handle_at", Path: fmt.Sprintf("inode %d", ino), Err: unix.ESTALE}
	}
	defer unix.Close(fd)
	var st, root unix.Stat_t
	if unix.Fstat(fd, &st) != nil || h.withRoot(func(r int) error { return unix.Fstat(r, &root) }) != nil || st.Dev != root.Dev || st.Ino != ino {
		return "", &Error{Op: "open_by_handle_at", Path: fmt.Sprintf("inode %d", ino), Err: unix.ESTALE}
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", &Error{Op: "readlink", Path: fmt.Sprintf("inode %d", ino), Err: err}
	}
	if link == h.dir {
		return "", nil
	}
	rel, ok := strings.CutPrefix(link, strings.TrimSuffix(h.dir, "/")+"/")
	if !ok || rel == "" || strings.HasSuffix(link, " (deleted)") {
		return "", &Error{Op: "open_by_handle_at", Path: fmt.Sprintf("inode %d", ino), Err: unix.ESTALE}
	}
	return rel, nil
}
