package access

import (
	"fmt"
	"os"
	"strconv"

	"github.com/moby/sys/user"

	"github.com/cgfs/cgfs/access/proc"
)

// Owner is the container a view belongs to, taken from one of its
// processes when the view is mounted. It holds the namespaces open, so
// later pid reuse cannot change who the owner is.
type Owner struct {
	UserNS *os.File // the owner's user namespace (nsfs)
	PidNS  *os.File // the owner's pid namespace (nsfs)
	// Chain is the owner's user namespace, then its ancestors.
	Chain []proc.Ancestor
	// IDs are the user namespace's id maps; nil when the owner is in the
	// server's own user namespace.
	IDs *user.IdentityMapping
	// Thread is the owner process as a reader of task ids: its pid
	// namespace and how deep that is below the server's.
	Thread proc.Thread
}

// OwnerOf pins host process pid and takes its namespaces and id maps;
// it fails if the process exits meanwhile.
func OwnerOf(procs *proc.Procs, pid int) (*Owner, error) {
	pin, err := procs.Pin(pid)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	defer pin.Close()
	o := &Owner{}
	if o.UserNS, err = pin.NamespaceFile("user"); err != nil {
		return nil, err
	}
	if o.PidNS, err = pin.NamespaceFile("pid"); err != nil {
		o.Close()
		return nil, err
	}
	if o.Chain, err = proc.UserNSAncestry(int(o.UserNS.Fd())); err != nil {
		o.Close()
		return nil, err
	}
	if o.Thread, err = pin.Thread(); err != nil {
		o.Close()
		return nil, err
	}
	if len(o.Chain) > 1 {
		dir := procs.Root() + "/" + strconv.Itoa(pid)
		uids, err := user.ParseIDMapFile(dir + "/uid_map")
		if err != nil {
			o.Close()
			return nil, err
		}
		gids, err := user.ParseIDMapFile(dir + "/gid_map")
		if err != nil {
			o.Close()
			return nil, err
		}
		o.IDs = &user.IdentityMapping{UIDMaps: uids, GIDMaps: gids}
	}
	if !pin.Alive() {
		o.Close()
		return nil, fmt.Errorf("owner %d exited while being read", pid)
	}
	return o, nil
}

// SelfOwner is the owner of a view without a container: the server's own
// namespaces.
func SelfOwner(procs *proc.Procs) (*Owner, error) {
	return OwnerOf(procs, os.Getpid())
}

// Close releases the namespace handles.
func (o *Owner) Close() {
	if o.UserNS != nil {
		o.UserNS.Close()
	}
	if o.PidNS != nil {
		o.PidNS.Close()
	}
}
