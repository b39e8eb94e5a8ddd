package translate

import (
	"errors"
	"fmt"
	"os"

	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"
)

// View is one container's cgroup tree as the container sees it: virtual
// paths ("" for the view root, "a/b" below it) carried onto a Host. Each
// mount has its own View; nothing is shared between views.
type View struct {
	host *Host
	// ids maps the owner's user namespace; nil when the view has no
	// container owner (ids are shown as they are).
	ids              *user.IdentityMapping
	rootUID, rootGID uint32 // host ids of the owner namespace's root
	pids             *Pids  // nil: pids are not translated (fake hosts)
	v1               bool
	inoBase          uint64
	migrations       migrations
}

// ViewConfig is how a view shows its host hierarchy.
type ViewConfig struct {
	// IDs are the owner user namespace's id maps; nil shows host ids.
	IDs *user.IdentityMapping
	// Pids reads and caches task identities; nil serves no pid files
	// (fake hierarchies in unit tests).
	Pids *Pids
	// V1 marks a cgroup v1 hierarchy: tasks files, no hidden leaves,
	// cpuset children set up so tasks can join.
	V1 bool
	// InoBase is added to every inode number, so that hierarchies
	// served side by side (whose numbers may collide) never share one.
	InoBase uint64
}

// NewView returns the view of host as cfg says.
func NewView(host *Host, cfg ViewConfig) *View {
	v := &View{host: host, ids: cfg.IDs, pids: cfg.Pids, v1: cfg.V1, inoBase: cfg.InoBase}
	if cfg.IDs != nil {
		u, g := cfg.IDs.RootPair()
		v.rootUID, v.rootGID = uint32(u), uint32(g)
	}
	return v
}

// show turns host attributes into the ones the container sees: what host
// root owns appears owned by the owner namespace's root, so `ls -l`
// inside shows root, not nobody.
func (v *View) show(st unix.Stat_t, err error) (unix.Stat_t, error) {
	if err != nil {
		return st, err
	}
	st.Ino += v.inoBase
	if v.ids == nil {
		return st, nil
	}
	if st.Uid == 0 {
		st.Uid = v.rootUID
	}
	if st.Gid == 0 {
		st.Gid = v.rootGID
	}
	return st, nil
}

// Host is the host hierarchy behind the view.
func (v *View) Host() *Host { return v.host }

// hostPath maps a virtual path to the host path below the view root.
func (v *View) hostPath(vpath string) string { return vpath }

// Stat returns the attributes the view shows for vpath.
func (v *View) Stat(vpath string) (unix.Stat_t, error) {
	return v.show(v.host.Stat(v.hostPath(vpath)))
}

// Fstat returns the attributes the view shows for a file it opened.
func (v *View) Fstat(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return st, &Error{Op: "stat", Path: f.Name(), Err: err}
	}
	return v.show(st, nil)
}

// Lookup returns the attributes of name in the virtual directory dir.
func (v *View) Lookup(dir, name string) (unix.Stat_t, error) {
	if err := ValidName(name); err != nil {
		return unix.Stat_t{}, err
	}
	if name == LeafName {
		return unix.Stat_t{}, unix.ENOENT
	}
	return v.show(v.host.Stat(v.hostPath(Join(dir, name))))
}

// List returns the entries of the virtual directory vpath, sorted,
// without hidden leaves.
func (v *View) List(vpath string) ([]Entry, error) {
	entries, err := v.host.ReadDir(v.hostPath(vpath))
	if err != nil {
		return nil, err
	}
	out := entries[:0]
	for _, e := range entries {
		if e.Name != LeafName {
			e.Ino += v.inoBase
			out = append(out, e)
		}
	}
	return out, nil
}

// Open opens the file at vpath on the host with open(2) flags. O_CREAT
// and O_EXCL are dropped: the file exists (the FUSE kernel looked it up)
// and cgroupfs creates nothing.
func (v *View) Open(vpath string, flags int) (*os.File, error) {
	flags &^= unix.O_CREAT | unix.O_EXCL
	return v.host.Open(v.hostPath(vpath), flags|unix.O_NOFOLLOW)
}

// Mkdir creates the cgroup name in the virtual directory dir for a
// caller whose host fsuid/fsgid are uid/gid, and returns its attributes.
// As the kernel does (cgroup_kn_set_ugid), the new cgroup and its files
// belong to the creator unless that is host root.
func (v *View) Mkdir(dir, name string, mode, uid, gid uint32) (unix.Stat_t, error) {
	if err := ValidName(name); err != nil {
		return unix.Stat_t{}, err
	}
	if name == LeafName {
		return unix.Stat_t{}, errReservedName
	}
	if err := v.checkLimits(dir); err != nil {
		return unix.Stat_t{}, &Error{Op: "mkdir", Path: Join(dir, name), Data: "container limit reached", Err: err}
	}
	if err := v.host.Mkdir(v.hostPath(dir), name, mode); err != nil {
		return unix.Stat_t{}, err
	}
	hp := v.hostPath(Join(dir, name))
	if v.v1 {
		if err := v.cloneCpuset(v.hostPath(dir), hp); err != nil {
			return unix.Stat_t{}, err
		}
	}
	if uid != 0 || gid != 0 {
		entries, err := v.host.Names(hp)
		if err != nil {
			return unix.Stat_t{}, err
		}
		for _, e := range append(entries, Entry{Name: ""}) {
			if err := v.host.Chown(Join(hp, e.Name), int(uid), int(gid)); err != nil {
				return unix.Stat_t{}, err
			}
		}
	}
	return v.show(v.host.Stat(hp))
}

// Rmdir removes the cgroup name from the virtual directory dir, and its
// hidden leaf first when that is all it holds.
func (v *View) Rmdir(dir, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if name == LeafName {
		return unix.ENOENT
	}
	vpath := Join(dir, name)
	defer v.migrations.lock()()
	hp := v.hostPath(vpath)
	if v.hasLeaf(hp) {
		children, err := v.host.Names(hp)
		if err != nil {
			return err
		}
		for _, e := range children {
			if e.Mode&unix.S_IFMT == unix.S_IFDIR && e.Name != LeafName {
				return &Error{Op: "rmdir", Path: hp, Data: "has children", Err: unix.EBUSY}
			}
		}
		if err := v.host.Rmdir(hp, LeafName); err != nil && !errors.Is(err, unix.ENOENT) {
			return err // EBUSY: the leaf holds processes, so V is populated
		}
	}
	return v.host.Rmdir(v.hostPath(dir), name)
}

// Rename renames a cgroup; the host decides (cgroup v2 refuses).
func (v *View) Rename(oldDir, oldName, newDir, newName string, flags uint) error {
	if err := ValidName(oldName); err != nil {
		return err
	}
	if err := ValidName(newName); err != nil {
		return err
	}
	if oldName == LeafName || newName == LeafName {
		return errReservedName
	}
	return v.host.Rename(v.hostPath(oldDir), oldName, v.hostPath(newDir), newName, flags)
}

// Chmod sets permission bits at vpath.
func (v *View) Chmod(vpath string, mode uint32) error {
	return v.host.Chmod(v.hostPath(vpath), mode)
}

// Chown sets owner ids (host ids, as FUSE gives them; -1 keeps one) at
// vpath. Ids the owner's user namespace does not map are EINVAL, as the
// kernel answers a chown to an unmappable id.
func (v *View) Chown(vpath string, uid, gid int) error {
	if v.ids != nil {
		u, g := uid, gid
		if u == -1 {
			u = int(v.rootUID)
		}
		if g == -1 {
			g = int(v.rootGID)
		}
		if _, _, err := v.ids.ToContainer(u, g); err != nil {
			return &Error{Op: "chown", Path: clean(vpath), Data: fmt.Sprintf("%d:%d is not mapped", uid, gid), Err: unix.EINVAL}
		}
	}
	return v.host.Chown(v.hostPath(vpath), uid, gid)
}

// Utimes sets times at vpath.
func (v *View) Utimes(vpath string, ts []unix.Timespec) error {
	return v.host.Utimes(v.hostPath(vpath), ts)
}

// cloneCpuset gives a new v1 cpuset cgroup its parent's cpus and mems:
// an empty cpuset takes no tasks (ENOSPC), so the container could not
// use the cgroup it just made (what cgroup.clone_children would do).
func (v *View) cloneCpuset(parent, child string) error {
	for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
		val, err := v.host.ReadFile(Join(parent, file))
		if errors.Is(err, unix.ENOENT) {
			return nil // not a cpuset hierarchy
		}
		if err != nil {
			return err
		}
		if len(val) == 0 || val[0] == '\n' {
			continue
		}
		if _, err := v.writeHost(Join(child, file), val); err != nil {
			return err
		}
	}
	return nil
}
