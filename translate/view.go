package translate

import (
	"errors"
	"fmt"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
	"github.com/cgfs/cgfs/translate/pidns"
)

// View is one container's cgroup tree as the container sees it, carried
// onto one host hierarchy below the container's cgroup. Each mount has
// its own views; nothing is shared between views. A View is safe for
// concurrent use.
type View struct {
	host   *host.Host
	policy *access.Policy
	procs  *proc.Procs
	// nsMu guards nsScopes: the cgroup namespaces task files were
	// opened from, by inode (openerNS).
	nsMu     sync.Mutex
	nsScopes map[uint64]keptScope
	// ids maps the owner's user namespace; nil when the view has no
	// container owner (ids are shown as they are).
	ids              *user.IdentityMapping
	rootUID, rootGID uint32 // host ids of the owner namespace's root
	v1               bool
	inoBase          uint64
	controllers      proc.Controllers
	cgroupPath       string
	delegate         map[string]bool
	readOnly         bool
	limits           *Limits
	leaves           leafIndex
	movers           *pidns.Pool
	root             int        // the view's root among movers'
	outer            *host.Host // the hierarchy's root, for putting a stranger back
	// v1Limit bounds the cgroups below a v1 view root; v1Count is how
	// many there are, -1 until counted at v1Counted (under the view
	// lock).
	v1Limit, v1Count int
	v1Counted        time.Time
	// dev is the serving mount's device number (SetMountDev): a
	// cgroup.event_control writer's control file must be one of it.
	dev atomic.Uint64

	// mu is the view lock (see the package doc): migrations share it,
	// everything else that changes the tree holds it alone.
	mu sync.RWMutex
}

// Config is what a view serves and how.
type Config struct {
	// Policy judges the view's callers. Required.
	Policy *access.Policy
	// Procs reads the tasks of the host. Required.
	Procs *proc.Procs
	// IDs are the owner user namespace's id maps; nil shows host ids.
	IDs *user.IdentityMapping
	// RootShownAs, when set, are the host ids that what host root owns
	// is shown as, instead of the root of IDs: a nested view, owned by
	// a user namespace below the container's, shows the container's
	// tree as the container's own view does (its root's), and its root
	// needs no owner of its own on a cgroup it makes.
	RootShownAs *[2]uint32
	// V1 marks a cgroup v1 hierarchy: tasks files, no hidden leaves,
	// cpuset children set up so tasks can join.
	V1 bool
	// InoBase is added to every inode number, so that hierarchies
	// served side by side (whose numbers may collide) never share one.
	InoBase uint64
	// Controllers names the host hierarchy as /proc/PID/cgroup does, and
	// CgroupPath is the view root's path in it ("/a/b"). A view without
	// a CgroupPath (a tree that is not a cgroup) moves no tasks.
	Controllers proc.Controllers
	CgroupPath  string
	// Delegate names files the container may write at the view root
	// besides the core ones (the host's /sys/kernel/cgroup/delegate).
	Delegate []string
	// ReadOnly serves the hierarchy without letting anyone change it
	// (EROFS): for a hierarchy where the owner has no cgroup of its own
	// and the host asked to share it anyway.
	ReadOnly bool
	// Limits bounds what the container holds; views of one mount share
	// it. Nil gives the view limits of its own, with the defaults.
	Limits *Limits
	// V1Descendants bounds the cgroups below a v1 view root (EAGAIN
	// beyond); 0 means DefaultV1Descendants.
	V1Descendants int
	// Movers moves tasks from inside the writers' pid namespaces; the
	// views of one container share it. Nil moves them as the server
	// (right for a view of the host's own).
	Movers *pidns.Pool
	// Outer is the root of the whole hierarchy (its mount), opened only
	// to put back a task moved in by a reused id; nil leaves such a
	// task where it is (and says so).
	Outer *host.Host
}

// New returns the view of h that cfg describes.
func New(h *host.Host, cfg Config) (*View, error) {
	if h == nil || cfg.Policy == nil || cfg.Procs == nil {
		return nil, errors.New("a view needs a host, a policy and a proc filesystem")
	}
	v := &View{
		host: h, policy: cfg.Policy, procs: cfg.Procs, ids: cfg.IDs, v1: cfg.V1,
		inoBase: cfg.InoBase, controllers: cfg.Controllers, cgroupPath: cfg.CgroupPath,
		delegate: map[string]bool{}, readOnly: cfg.ReadOnly, limits: cfg.Limits,
	}
	if v.limits == nil {
		v.limits = &Limits{}
	}
	if v.limits.OpenFiles == 0 {
		v.limits.OpenFiles = DefaultOpenFiles
	}
	v.v1Limit, v.v1Count = cfg.V1Descendants, -1
	if v.v1Limit == 0 {
		v.v1Limit = DefaultV1Descendants
	}
	if err := v.indexLeavesLocked(); err != nil { // v is not shared yet
		return nil, err
	}
	v.movers, v.outer = cfg.Movers, cfg.Outer
	if v.movers == nil {
		v.movers = pidns.Inline(cfg.Procs)
	}
	v.root = v.movers.AddRoot(h)
	for _, f := range cfg.Delegate {
		v.delegate[f] = true
	}
	if cfg.IDs != nil {
		u, g := cfg.IDs.RootPair()
		v.rootUID, v.rootGID = uint32(u), uint32(g)
	}
	if r := cfg.RootShownAs; r != nil && cfg.IDs != nil {
		v.rootUID, v.rootGID = r[0], r[1]
	}
	return v, nil
}

// Dir is the host directory of the view root, for messages.
func (v *View) Dir() string { return v.host.Dir() }

// show turns host attributes into the ones the container sees: what host
// root owns appears owned by the owner namespace's root, so `ls -l`
// inside shows root, not nobody.
func (v *View) show(st unix.Stat_t) unix.Stat_t {
	st.Ino += v.inoBase
	if v.ids == nil {
		return st
	}
	if st.Uid == 0 {
		st.Uid = v.rootUID
	}
	if st.Gid == 0 {
		st.Gid = v.rootGID
	}
	return st
}

// stat returns the attributes the view shows for vpath.
func (v *View) stat(vpath string) (unix.Stat_t, error) {
	st, owner, err := v.host.StatXattr(vpath, ownerXattr)
	if err != nil {
		return st, err
	}
	parseOwner(owner).apply(&st)
	return v.show(st), nil
}

// RootAttr returns the attributes the view shows for its root.
func (v *View) RootAttr() (unix.Stat_t, error) { return v.stat("") }

// split is a virtual path's directory ("" for the root) and name.
func split(vpath string) (dir, name string) {
	dir, name = path.Split(vpath)
	return path.Clean("/" + dir)[1:], name
}

// atRoot: the view root itself or a file in it (its child cgroups are
// the container's own).
func atRoot(vpath string, st *unix.Stat_t) bool {
	dir, _ := split(vpath)
	return vpath == "" || (dir == "" && st.Mode&unix.S_IFMT != unix.S_IFDIR)
}

// Lookup returns the attributes of name in the virtual directory dir.
func (v *View) Lookup(r *access.Request, dir, name string) (unix.Stat_t, error) {
	if err := v.policy.MaySee(r); err != nil {
		return unix.Stat_t{}, err
	}
	real, through, err := v.leafPath(dir)
	if err != nil {
		return unix.Stat_t{}, err
	}
	if !through && name == LeafName && v.hasLeaf(dir) {
		return v.leafPathStat(dir, true)
	}
	if err := checkName(name, unix.ENOENT); err != nil {
		return unix.Stat_t{}, err
	}
	if through {
		return v.leafPathStat(host.Join(real, name), false)
	}
	return v.stat(host.Join(dir, name))
}

// Getattr returns the attributes of vpath, from the open file f when
// there is one (no host lookup then).
func (v *View) Getattr(r *access.Request, vpath string, f *File) (unix.Stat_t, error) {
	if err := v.policy.MaySee(r); err != nil {
		return unix.Stat_t{}, err
	}
	if f != nil {
		return f.Stat()
	}
	return v.shownStat(vpath)
}

// shownStat is what the view shows for vpath, through a leaf path too.
func (v *View) shownStat(vpath string) (unix.Stat_t, error) {
	real, through, err := v.leafPath(vpath)
	if err != nil {
		return unix.Stat_t{}, err
	}
	if through {
		return v.leafPathStat(real, isLeafDir(vpath))
	}
	return v.stat(vpath)
}

// OpenDir allows listing the virtual directory vpath.
func (v *View) OpenDir(r *access.Request, vpath string) error {
	st, err := v.shownStat(vpath)
	if err != nil {
		return err
	}
	return v.policy.MayRead(r, &st)
}

// List returns the entries of the virtual directory vpath, sorted,
// without hidden leaves. The opendir before it decided who may list.
func (v *View) List(vpath string) ([]host.Entry, error) {
	real, through, err := v.leafPath(vpath)
	if err != nil {
		return nil, err
	}
	entries, err := v.host.Names(real)
	if err != nil {
		return nil, err
	}
	out := entries[:0]
	for _, e := range entries {
		switch {
		case e.Name == LeafName:
		case !through:
			e.Ino += v.inoBase
			out = append(out, e)
		case !e.IsDir(): // a leaf path shows files only
			e.Ino += v.inoBase + LeafPathIno
			out = append(out, e)
		}
	}
	return out, nil
}

// mayChangeEntries allows mkdir, rmdir and rename in the virtual
// directory dir.
func (v *View) mayChangeEntries(r *access.Request, dir string) error {
	if _, through, err := v.leafPath(dir); err != nil {
		return err
	} else if through {
		return errLeafPath
	}
	st, err := v.stat(dir)
	if err != nil {
		return err
	}
	return v.policy.MayChangeEntries(r, &st)
}

// Mkdir creates the cgroup name in the virtual directory dir and returns
// its attributes. As the kernel does (cgroup_kn_set_ugid), the new
// cgroup and its files belong to the creator unless that is host root.
func (v *View) Mkdir(r *access.Request, dir, name string, mode uint32) (unix.Stat_t, error) {
	if v.readOnly {
		return unix.Stat_t{}, errReadOnly
	}
	if err := v.mayChangeEntries(r, dir); err != nil {
		return unix.Stat_t{}, err
	}
	if err := checkName(name, unix.EINVAL); err != nil {
		return unix.Stat_t{}, err
	}
	creator, err := r.Caller() // identified by the check above
	if err != nil {
		return unix.Stat_t{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.mkdirLocked(dir, name, mode, creator.Uid, creator.Gid)
}

func (v *View) mkdirLocked(dir, name string, mode, uid, gid uint32) (unix.Stat_t, error) {
	if err := v.checkLimitsLocked(dir); err != nil {
		return unix.Stat_t{}, err
	}
	if v.v1 {
		if err := v.checkV1LimitLocked(); err != nil {
			return unix.Stat_t{}, err
		}
	}
	if err := v.host.Mkdir(dir, name, mode); err != nil {
		return unix.Stat_t{}, err
	}
	if v.v1 {
		v.v1Count++
	}
	vpath := host.Join(dir, name)
	if v.v1 {
		if err := v.cloneCpuset(dir, vpath); err != nil {
			return unix.Stat_t{}, err
		}
	}
	// What host root owns shows as the owner namespace's root already:
	// a cgroup that root makes needs no owner of its own (and its
	// files no xattr each).
	byRoot := v.ids != nil && uid == v.rootUID && gid == v.rootGID
	if (uid != 0 || gid != 0) && !byRoot {
		if err := v.giveTree(vpath, uid, gid); err != nil {
			return unix.Stat_t{}, err
		}
	}
	return v.stat(vpath)
}

// Rmdir removes the cgroup name from the virtual directory dir, and its
// hidden leaf first when that is all it holds.
func (v *View) Rmdir(r *access.Request, dir, name string) error {
	if v.readOnly {
		return errReadOnly
	}
	if err := v.mayChangeEntries(r, dir); err != nil {
		return err
	}
	if name == LeafName && v.hasLeaf(dir) {
		return errLeafPath
	}
	if err := checkName(name, unix.ENOENT); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.rmdirLocked(dir, name)
}

func (v *View) rmdirLocked(dir, name string) error {
	vpath := host.Join(dir, name)
	if v.hasLeaf(vpath) {
		children, err := v.host.Names(vpath)
		if err != nil {
			return err
		}
		for _, e := range children {
			if e.IsDir() && e.Name != LeafName {
				return &host.Error{Op: "rmdir", Path: vpath, Data: "has children", Err: unix.EBUSY}
			}
		}
		if err := v.host.Rmdir(vpath, LeafName); err != nil && !errors.Is(err, unix.ENOENT) {
			return err // EBUSY: the leaf holds processes, so the cgroup is populated
		}
		v.leaves.set(vpath, false)
		v.leaves.folded.Add(1)
	}
	if err := v.host.Rmdir(dir, name); err != nil {
		return err
	}
	if v.v1 && v.v1Count > 0 {
		v.v1Count--
	}
	return nil
}

// Rename renames a cgroup; the host decides (cgroup v2 refuses every
// rename with EPERM, v1 allows one within a parent).
func (v *View) Rename(r *access.Request, oldDir, oldName, newDir, newName string, flags uint) error {
	if v.readOnly {
		return errReadOnly
	}
	if err := v.mayChangeEntries(r, oldDir); err != nil {
		return err
	}
	if newDir != oldDir {
		if err := v.mayChangeEntries(r, newDir); err != nil {
			return err
		}
	}
	for _, name := range []string{oldName, newName} {
		if err := checkName(name, unix.EINVAL); err != nil {
			return err
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.host.Rename(oldDir, oldName, newDir, newName, flags)
}

// MakeFile answers a request to make anything but a directory (op is
// "create", "symlink", "link", "mknod") or to unlink a file, as
// cgroupfs does: kernfs has no create op, so the VFS answers EACCES to
// open(O_CREAT); it has no symlink, link, mknod or unlink op for cgroups,
// so those are EPERM (measured on Linux 6.18).
func (v *View) MakeFile(op string) error {
	if v.readOnly {
		return errReadOnly
	}
	errno := unix.EPERM
	if op == "create" {
		errno = unix.EACCES
	}
	return refuse(RuleOnlyDirectories, errno, "cgroupfs makes only directories")
}

// Statfs returns the host filesystem's statistics.
func (v *View) Statfs() (unix.Statfs_t, error) { return v.host.Statfs() }

// Attrs is a change of attributes; nil fields are left alone. A time
// whose Nsec is UTIME_NOW means "now", as utimensat(2) takes it.
type Attrs struct {
	Mode         *uint32 // permission bits
	Uid, Gid     *uint32 // host ids, as FUSE gives them
	Atime, Mtime *unix.Timespec
	// Size is a truncation. cgroupfs ignores it; runtimes open control
	// files with O_TRUNC, which the FUSE kernel sends as a setattr of
	// the size and of mtime to now.
	Size bool
}

func isNow(t *unix.Timespec) bool { return t == nil || t.Nsec == unix.UTIME_NOW }

// Setattr changes the attributes of vpath (through the open file f, if
// any) and returns the new ones.
func (v *View) Setattr(r *access.Request, vpath string, f *File, a Attrs) (unix.Stat_t, error) {
	if v.readOnly {
		return unix.Stat_t{}, errReadOnly
	}
	if f != nil && a.Mode == nil && a.Uid == nil && a.Gid == nil && isNow(a.Atime) && isNow(a.Mtime) {
		// A truncation of a file open for writing (open(O_TRUNC),
		// ftruncate): its open was judged already, and cgroupfs ignores
		// the size and keeps no times of its own.
		return f.Stat()
	}
	if err := v.policy.MaySee(r); err != nil {
		return unix.Stat_t{}, err
	}
	if _, through, err := v.leafPath(vpath); err != nil {
		return unix.Stat_t{}, err
	} else if through {
		return unix.Stat_t{}, errLeafPath
	}
	st, err := v.stat(vpath)
	if err != nil {
		return st, err
	}
	root := atRoot(vpath, &st)
	if a.Size && f == nil {
		// truncate(2) by path needs write permission, like an open.
		if err := v.policy.MayWrite(r, v.target(vpath, &st)); err != nil {
			return st, err
		}
	}
	if a.Mode != nil || a.Atime != nil || a.Mtime != nil {
		if err := v.policy.MayChmod(r, &st, root); err != nil {
			return st, err
		}
	}
	if a.Uid != nil || a.Gid != nil {
		if err := v.policy.MayChown(r, &st, root); err != nil {
			return st, err
		}
	}
	if a.Mode != nil {
		mode := *a.Mode & 0o7777
		if err := v.setOwner(vpath, func(o *shownOwner) { o.mode, o.hasMode = mode, true }); err != nil {
			return st, err
		}
	}
	if a.Uid != nil || a.Gid != nil {
		if err := v.chown(vpath, a.Uid, a.Gid); err != nil {
			return st, err
		}
	}
	if a.Atime != nil || a.Mtime != nil {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if a.Atime != nil {
			ts[0] = *a.Atime
		}
		if a.Mtime != nil {
			ts[1] = *a.Mtime
		}
		if err := v.host.Utimes(vpath, ts); err != nil {
			return st, err
		}
	}
	if f != nil {
		return f.Stat()
	}
	return v.stat(vpath)
}

// chown sets the owner ids the view shows (host ids; nil keeps one).
// Ids the owner's user namespace does not map are EINVAL, as the kernel
// answers a chown to an unmappable id.
func (v *View) chown(vpath string, uid, gid *uint32) error {
	u, g := -1, -1
	if uid != nil {
		u = int(*uid)
	}
	if gid != nil {
		g = int(*gid)
	}
	if v.ids != nil {
		m := access.IDMapping{IdentityMapping: v.ids}
		if uid != nil && !m.UIDMapped(*uid) || gid != nil && !m.GIDMapped(*gid) {
			return refuse(RuleUnmappedID, unix.EINVAL, fmt.Sprintf("%d:%d is not mapped in the owner's user namespace", u, g))
		}
	}
	return v.setOwner(vpath, func(o *shownOwner) {
		if uid != nil {
			o.uid, o.hasUID = *uid, true
		}
		if gid != nil {
			o.gid, o.hasGID = *gid, true
		}
	})
}

// Limits bounds what one container may hold of the server. The views of
// one mount share one Limits.
type Limits struct {
	// OpenFiles is how many interface files the container may hold open
	// at once across its views (ENFILE beyond); 0 means DefaultOpenFiles.
	OpenFiles int
	open      atomic.Int64
}

// DefaultOpenFiles is the open-file limit of a container that sets none.
const DefaultOpenFiles = 4096

func (l *Limits) takeFile() bool {
	if l.open.Add(1) > int64(l.OpenFiles) {
		l.open.Add(-1)
		return false
	}
	return true
}

func (l *Limits) giveFile() { l.open.Add(-1) }

// Open is how many files the container holds open.
func (l *Limits) Open() int { return int(l.open.Load()) }
