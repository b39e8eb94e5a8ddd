package access

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
)

// maxNSDepth bounds walks up a namespace tree (the kernel nests at most
// 32 user namespaces).
const maxNSDepth = 33

// UserNSLink is one user namespace on a path to the initial one.
type UserNSLink struct {
	NS NS
	// OwnerUID is the host uid of the namespace's creator (its owner, as
	// NS_GET_OWNER_UID tells it). It has every capability in the
	// namespace when it acts from the parent namespace.
	OwnerUID uint32
}

// userNSChain returns the user namespace of fd and its ancestors, the
// namespace itself first. The fd is consumed.
func userNSChain(fd int) ([]UserNSLink, error) {
	var chain []UserNSLink
	for range maxNSDepth {
		ns, err := translate.NSOf(fd)
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		var uid uint32
		owner, err := unix.IoctlGetUint32(fd, translate.NSGetOwnerUID)
		if err == nil {
			uid = owner
		}
		chain = append(chain, UserNSLink{NS: ns, OwnerUID: uid})
		parent, err := unix.IoctlRetInt(fd, translate.NSGetParent)
		unix.Close(fd)
		if err == unix.EPERM {
			// The initial namespace (or the server's own): no parent
			// visible from here.
			return chain, nil
		}
		if err != nil {
			return nil, fmt.Errorf("NS_GET_PARENT: %w", err)
		}
		fd = parent
	}
	unix.Close(fd)
	return nil, fmt.Errorf("user namespace nested deeper than %d", maxNSDepth)
}

// UserNSChainOf returns the user namespace chain of an open nsfs file
// (an opened /proc/PID/ns/user), without consuming it.
func UserNSChainOf(f *os.File) ([]UserNSLink, error) {
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	return userNSChain(fd)
}
