//go:build linux

package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Caller is the thread that made the notified syscall.
//
// Its methods use /proc files of the thread the agent opened for this
// notification; they work only while the Mounter it was given to runs.
type Caller struct {
	// Tid is the thread id in the pid namespace of whoever received the
	// notification: the agent's (Serve), or the LXC monitor's
	// (ServeLXCProxy).
	Tid int
	// Init is the container's init as the LXC monitor names it (the
	// proxy message's init_pid, in the monitor's pid namespace): which
	// container the caller is of. 0 for a listener served directly
	// (Serve), whose container is the one it was handed over for.
	Init int

	p *proc
}

// Resolve opens path (O_PATH) as the caller would find it: in its root
// directory and, if relative, from its working directory, following
// symbolic links. The caller of Resolve closes the file.
func (c Caller) Resolve(path string) (*os.File, error) {
	fd, err := c.p.resolve(path)
	if err != nil {
		return nil, &os.PathError{Op: "resolve", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// Valid reports whether the caller is still waiting in its syscall. While
// it is, Tid cannot name another thread.
func (c Caller) Valid() bool { return c.p.valid() }

// errGone means the notification is no longer alive: the caller was
// killed, or interrupted by a signal (it then restarts the syscall and is
// notified again).
var errGone = errors.New("notification no longer alive")

// proc holds the /proc files of one notification's thread, opened as they
// are needed and closed by close. Whatever is read through them is acted
// on only after valid has said, later than every open, that the
// notification is alive: a thread id cannot be reused while its thread
// waits in a syscall.
type proc struct {
	tid  int
	init int // Caller.Init
	id   uint64
	v    validator

	// dir is a /proc/TID directory the files are opened from (an LXC
	// monitor's); -1: "/proc/TID/" in the agent's /proc.
	dir       int
	mem       int // /proc/TID/mem, O_RDWR; -1 until opened
	root, cwd int // O_PATH; -1 until opened
}

// validator says whether a notification is still alive
// (SECCOMP_IOCTL_NOTIF_ID_VALID on its listener).
type validator interface {
	valid(id uint64) bool
}

func newProc(v validator, n *seccompNotif) *proc {
	return &proc{tid: int(n.Pid), id: n.ID, v: v, dir: -1, mem: -1, root: -1, cwd: -1}
}

// close closes the files p opened or was given (dir and mem included).
func (p *proc) close() {
	for _, fd := range []int{p.dir, p.mem, p.root, p.cwd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	p.dir, p.mem, p.root, p.cwd = -1, -1, -1, -1
}

func (p *proc) valid() bool { return p.v.valid(p.id) }

// path is /proc/TID/name.
func (p *proc) path(name string) string {
	return "/proc/" + strconv.Itoa(p.tid) + "/" + name
}

// openFile opens /proc/TID/name (from dir if p has one).
func (p *proc) openFile(name string, flags int) (int, error) {
	if p.dir >= 0 {
		return unix.Openat(p.dir, name, flags|unix.O_CLOEXEC, 0)
	}
	return unix.Open(p.path(name), flags|unix.O_CLOEXEC, 0)
}

// readlink reads the symbolic link /proc/TID/name (from dir if p has one).
func (p *proc) readlink(name string) (string, error) {
	if p.dir < 0 {
		return os.Readlink(p.path(name))
	}
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(p.dir, name, b)
		if err != nil {
			return "", &os.PathError{Op: "readlinkat", Path: name, Err: err}
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
}

// procError is a failure to open one of the caller's /proc files: a fault
// of the agent (or a thread that just died), not of the caller.
type procError struct {
	name string
	err  error
}

func (e *procError) Error() string { return "open /proc/TID/" + e.name + ": " + e.err.Error() }
func (e *procError) Unwrap() error { return e.err }

// open opens /proc/TID/name once, keeping it in *fd.
func (p *proc) open(name string, flags int, fd *int) (int, error) {
	if *fd >= 0 {
		return *fd, nil
	}
	f, err := p.openFile(name, flags)
	if err != nil {
		return -1, &procError{name, err}
	}
	*fd = f
	return f, nil
}

// openMem opens /proc/TID/mem. Every handler calls it first, before any
// valid check, so that the memory it later writes is the caller's.
func (p *proc) openMem() error {
	_, err := p.open("mem", unix.O_RDWR, &p.mem)
	return err
}

// pathMax is PATH_MAX: the kernel refuses longer paths (ENAMETOOLONG), and
// strings longer than that are not read.
const pathMax = unix.PathMax

// readString reads a NUL-terminated string of at most max bytes
// (terminator included) at addr in the caller's memory. It reads up to a
// page boundary at a time, so a string at the end of a mapping is read
// without touching the next page. A NULL addr is the empty string if
// nullOK.
func (p *proc) readString(addr uint64, max int, nullOK bool) (string, error) {
	if addr == 0 {
		if nullOK {
			return "", nil
		}
		return "", unix.EFAULT
	}
	mem, err := p.open("mem", unix.O_RDWR, &p.mem)
	if err != nil {
		return "", err
	}
	page := uint64(os.Getpagesize())
	var s []byte
	buf := make([]byte, page)
	for len(s) < max {
		at := addr + uint64(len(s))
		if at < addr || at > 1<<63-1 {
			return "", unix.EFAULT
		}
		chunk := min(page-at%page, uint64(max-len(s)))
		n, err := unix.Pread(mem, buf[:chunk], int64(at))
		if n <= 0 {
			if err == nil {
				err = unix.EFAULT
			}
			return "", err
		}
		if i := bytes.IndexByte(buf[:n], 0); i >= 0 {
			return string(append(s, buf[:i]...)), nil
		}
		s = append(s, buf[:n]...)
	}
	return "", unix.ENAMETOOLONG
}

// write writes b at addr in the caller's memory. The kernel's
// /proc/TID/mem writes even read-only pages (FOLL_FORCE), where the
// syscall itself would fail with EFAULT; a short write is EFAULT.
func (p *proc) write(addr uint64, b []byte) error {
	mem, err := p.open("mem", unix.O_RDWR, &p.mem)
	if err != nil {
		return err
	}
	if addr > 1<<63-1 {
		return unix.EFAULT
	}
	n, err := unix.Pwrite(mem, b, int64(addr))
	if err == nil && n < len(b) {
		err = unix.EFAULT
	}
	return err
}

// resolve opens path O_PATH as the caller's kernel would look it up, or
// fails; any failure means "let the kernel do it".
//
// An absolute path is looked up with RESOLVE_IN_ROOT from /proc/TID/root,
// so ".." and absolute symbolic links stay in the caller's root. A
// relative one is looked up from /proc/TID/cwd with RESOLVE_BENEATH: when
// that succeeds the lookup never left the working directory and is the
// caller's own. When it leaves (".." or an absolute symbolic link: EXDEV)
// the path is looked up again from the caller's root, joined to the
// working directory's path in that root. Both scoped lookups refuse magic
// links (/proc/self/fd/N...), which the caller's kernel would follow.
func (p *proc) resolve(path string) (int, error) {
	if path == "" {
		return -1, unix.ENOENT
	}
	if fd, ok := selfFd(path); ok {
		// The caller's own descriptor (runtimes mount and stat through
		// /proc/self/fd/N, securejoin style): its open file, as the
		// magic link names it.
		f := -1
		f, err := p.open("fd/"+strconv.Itoa(fd), unix.O_PATH, &f)
		if err != nil {
			return -1, err
		}
		if !p.valid() {
			unix.Close(f)
			return -1, errGone
		}
		return f, nil
	}
	if filepath.IsAbs(path) {
		return p.inRoot(path)
	}
	cwd, err := p.open("cwd", unix.O_PATH|unix.O_DIRECTORY, &p.cwd)
	if err != nil {
		return -1, err
	}
	if !p.valid() {
		return -1, errGone
	}
	fd, err := openat2(cwd, path, unix.RESOLVE_BENEATH)
	if !errors.Is(err, unix.EXDEV) {
		return fd, err
	}
	dir, err := p.cwdInRoot()
	if err != nil {
		return -1, err
	}
	return p.inRoot(dir + "/" + path)
}

// inRoot opens path from the caller's root directory.
func (p *proc) inRoot(path string) (int, error) {
	root, err := p.open("root", unix.O_PATH|unix.O_DIRECTORY, &p.root)
	if err != nil {
		return -1, err
	}
	if !p.valid() {
		return -1, errGone
	}
	return openat2(root, path, unix.RESOLVE_IN_ROOT)
}

// cwdInRoot is the path of the caller's working directory in its root:
// /proc/TID/cwd's link with /proc/TID/root's stripped, checked to lead to
// the working directory itself.
func (p *proc) cwdInRoot() (string, error) {
	root, err := p.readlink("root")
	if err != nil {
		return "", err
	}
	cwd, err := p.readlink("cwd")
	if err != nil {
		return "", err
	}
	dir, ok := strings.CutPrefix(cwd, strings.TrimSuffix(root, "/"))
	if !ok || (dir != "" && dir[0] != '/') {
		return "", unix.EXDEV
	}
	if dir == "" {
		dir = "/"
	}
	fd, err := p.inRoot(dir)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	same, err := sameFile(fd, p.cwd)
	if err != nil {
		return "", err
	}
	if !same {
		return "", unix.EXDEV
	}
	return dir, nil
}

func sameFile(a, b int) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		return false, err
	}
	if err := unix.Fstat(b, &sb); err != nil {
		return false, err
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// openat2 opens path O_PATH from dir with the resolve flags. A scoped
// lookup fails with EAGAIN when a rename or mount raced with it; it is
// retried a few times, never forever (the caller may rename in a loop).
func openat2(dir int, path string, resolve uint64) (fd int, err error) {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: resolve}
	for range 8 {
		fd, err = unix.Openat2(dir, path, &how)
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			break
		}
	}
	return fd, err
}

// selfFd is N of /proc/self/fd/N or /proc/thread-self/fd/N.
func selfFd(path string) (int, bool) {
	for _, prefix := range []string{"/proc/self/fd/", "/proc/thread-self/fd/"} {
		if rest, ok := strings.CutPrefix(path, prefix); ok {
			n, err := strconv.Atoi(rest)
			return n, err == nil && n >= 0
		}
	}
	return 0, false
}
