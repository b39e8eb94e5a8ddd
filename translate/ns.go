package translate

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// ioctls of nsfs (linux/nsfs.h, since Linux 4.9); x/sys does not name
// them.
const (
	NSGetParent   = 0xb702 // _IO(0xb7, 0x2)
	NSGetOwnerUID = 0xb704 // _IO(0xb7, 0x4)
)

// NS identifies a namespace by its nsfs inode.
type NS struct{ Dev, Ino uint64 }

// NSOf identifies the namespace an nsfs fd refers to.
func NSOf(fd int) (NS, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return NS{}, err
	}
	return NS{Dev: st.Dev, Ino: st.Ino}, nil
}

// NamespaceOf returns the namespace of kind ("user", "pid", ...) of host
// task tid, by stat(2) of proc/tid/ns/kind.
func NamespaceOf(proc string, tid int, kind string) (NS, error) {
	var st unix.Stat_t
	p := proc + "/" + strconv.Itoa(tid) + "/ns/" + kind
	if err := unix.Stat(p, &st); err != nil {
		return NS{}, fmt.Errorf("stat %s: %w", p, err)
	}
	return NS{Dev: st.Dev, Ino: st.Ino}, nil
}

// ancestorNS returns the namespace up steps levels above the nsfs file
// path (a pid or user namespace), identified.
func ancestorNS(path string, up int) (NS, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return NS{}, err
	}
	for range up {
		parent, err := unix.IoctlRetInt(fd, NSGetParent)
		unix.Close(fd)
		if err != nil {
			return NS{}, fmt.Errorf("NS_GET_PARENT: %w", err)
		}
		fd = parent
	}
	defer unix.Close(fd)
	return NSOf(fd)
}

// TaskDir pins one host task through an open /proc/TID directory: names
// looked up through it reach that task or nothing (ENOENT once it is
// gone), even after its id is reused. Unlike pidfd_open it works for
// any thread on every kernel (PIDFD_THREAD needs 6.9, the pidfd
// namespace ioctls 6.11).
type TaskDir struct {
	fd  int
	tid int
}

// OpenTaskDir pins host task tid, as the proc filesystem at proc shows it.
func OpenTaskDir(proc string, tid int) (*TaskDir, error) {
	fd, err := unix.Open(proc+"/"+strconv.Itoa(tid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOENT {
			return nil, unix.ESRCH
		}
		return nil, err
	}
	return &TaskDir{fd: fd, tid: tid}, nil
}

// Close releases the pin.
func (d *TaskDir) Close() { unix.Close(d.fd) }

// Alive reports whether the pinned task still exists (a zombie does: its
// id is not free yet). Whatever was read about its id since the pin was
// about it if it is still alive.
func (d *TaskDir) Alive() bool {
	var st unix.Stat_t
	return unix.Fstatat(d.fd, "stat", &st, 0) == nil
}

// Namespace opens the pinned task's namespace of kind ("user", "pid").
func (d *TaskDir) Namespace(kind string) (int, error) {
	fd, err := unix.Openat(d.fd, "ns/"+kind, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("namespace %s of %d: %w", kind, d.tid, err)
	}
	return fd, nil
}
