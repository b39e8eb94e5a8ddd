package access

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
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
	if o.Chain, err = proc.UserNSAncestry(int(o.UserNS.Fd())); err != nil {
		o.Close()
		return nil, err
	}
	if err := o.fill(procs, pin); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// fill takes the pinned task's pid namespace, thread and (its user
// namespace being o's, below the server's) id maps, and checks it alive
// after.
func (o *Owner) fill(procs *proc.Procs, pin *proc.Pin) error {
	var err error
	if o.PidNS, err = pin.NamespaceFile("pid"); err != nil {
		return err
	}
	if o.Thread, err = pin.Thread(); err != nil {
		return err
	}
	if len(o.Chain) > 1 {
		dir := procs.Root() + "/" + strconv.Itoa(pin.Tid())
		uids, err := user.ParseIDMapFile(dir + "/uid_map")
		if err != nil {
			return err
		}
		gids, err := user.ParseIDMapFile(dir + "/gid_map")
		if err != nil {
			return err
		}
		o.IDs = &user.IdentityMapping{UIDMaps: uids, GIDMaps: gids}
	}
	if !pin.Alive() {
		return fmt.Errorf("task %d exited while being read", pin.Tid())
	}
	return nil
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

// IDMapping is a user namespace's id maps as a Mapping.
type IDMapping struct{ *user.IdentityMapping }

// UIDMapped reports whether host uid uid has an id in the namespace.
func (m IDMapping) UIDMapped(uid uint32) bool { return mapped(m.UIDMaps, uid) }

// GIDMapped reports whether host gid gid has an id in the namespace.
func (m IDMapping) GIDMapped(gid uint32) bool { return mapped(m.GIDMaps, gid) }

func mapped(maps []user.IDMap, id uint32) bool {
	for _, m := range maps {
		if int64(id) >= m.ParentID && int64(id) < m.ParentID+m.Count {
			return true
		}
	}
	return false
}

// ErrNotInCgroupOwner refuses a cgroupfs mount by a caller that is not in
// the user namespace that owns its cgroup namespace (it would need to be
// privileged over it from an ancestor): cgfs reads a namespace's id maps
// only through a process in it.
var ErrNotInCgroupOwner = errors.New("the caller is not in the user namespace that owns its cgroup namespace")

// CgroupNSOwner is the owner of a cgroupfs mount made by host thread tid,
// as the kernel takes it (kernel/cgroup/cgroup.c cgroup_init_fs_context:
// the user namespace that owns the caller's cgroup namespace, never one
// the caller made below it): that user namespace, with its id maps, and
// tid's pid namespace and thread for the task ids it writes. The user
// namespace is tid's own, or ErrNotInCgroupOwner.
func CgroupNSOwner(procs *proc.Procs, tid int) (*Owner, error) {
	pin, err := procs.Pin(tid)
	if err != nil {
		return nil, fmt.Errorf("thread %d: %w", tid, err)
	}
	defer pin.Close()
	cgns, err := pin.Namespace("cgroup")
	if err != nil {
		return nil, err
	}
	ownerFd, err := unix.IoctlRetInt(cgns, unix.NS_GET_USERNS)
	unix.Close(cgns)
	if err != nil {
		return nil, fmt.Errorf("the owner of %d's cgroup namespace: %w", tid, err)
	}
	o := &Owner{UserNS: os.NewFile(uintptr(ownerFd), "cgroupns owner")}
	if o.Chain, err = proc.UserNSAncestry(ownerFd); err != nil {
		o.Close()
		return nil, err
	}
	own, err := pin.UserNS()
	if err != nil {
		o.Close()
		return nil, err
	}
	if own != o.Chain[0].NS {
		o.Close()
		return nil, ErrNotInCgroupOwner
	}
	if err := o.fill(procs, pin); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}
