package translate

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// ioctls of nsfs (linux/nsfs.h) and pidfd (linux/pidfd.h); x/sys does
// not name them.
const (
	NSGetParent           = 0xb702 // _IO(0xb7, 0x2)
	NSGetOwnerUID         = 0xb704 // _IO(0xb7, 0x4)
	PidfdGetUserNamespace = 0xff09 // _IO(0xff, 9)
	PidfdGetPidNamespace  = 0xff05 // _IO(0xff, 5)
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
