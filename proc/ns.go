package proc

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ioctls of nsfs (linux/nsfs.h, since Linux 4.9); x/sys does not name
// them.
const (
	nsGetParent   = 0xb702 // _IO(0xb7, 0x2)
	nsGetOwnerUID = 0xb704 // _IO(0xb7, 0x4)
)

// MaxDepth bounds every walk up a namespace tree: the kernel nests at
// most 32 user or pid namespaces below the initial one.
const MaxDepth = 33

// NS identifies a namespace by its nsfs inode.
type NS struct{ Dev, Ino uint64 }

// Ancestor is one namespace on the way from a namespace up to the
// initial one.
type Ancestor struct {
	NS NS
	// OwnerUID is, for a user namespace, the host uid of its creator
	// (NS_GET_OWNER_UID): it has every capability in the namespace when
	// it acts from the parent. 0 for other kinds.
	OwnerUID uint32
}

// nsOf identifies the namespace an nsfs fd refers to.
func nsOf(fd int) (NS, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return NS{}, err
	}
	return NS{Dev: st.Dev, Ino: st.Ino}, nil
}

// Ancestry returns the namespace the nsfs descriptor fd refers to and its
// ancestors, itself first, up to the initial namespace (or the highest
// one visible from the server's), at most limit of them. It consumes fd.
// This is the only walk up a namespace tree in cgfs.
func Ancestry(fd, limit int) ([]Ancestor, error) {
	var out []Ancestor
	for {
		ns, err := nsOf(fd)
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		a := Ancestor{NS: ns}
		if uid, err := unix.IoctlGetUint32(fd, nsGetOwnerUID); err == nil {
			a.OwnerUID = uid // user namespaces only; EINVAL for others
		}
		out = append(out, a)
		if len(out) >= limit {
			unix.Close(fd)
			return out, nil
		}
		parent, err := unix.IoctlRetInt(fd, nsGetParent)
		unix.Close(fd)
		if err == unix.EPERM {
			// The initial namespace, or the top of what the server's
			// own namespace lets it see.
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("NS_GET_PARENT: %w", err)
		}
		fd = parent
	}
}

// UserNSAncestry returns the user namespace chain of an open nsfs file
// descriptor (a /proc/PID/ns/user), without consuming it.
func UserNSAncestry(fd int) ([]Ancestor, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return Ancestry(dup, MaxDepth)
}
