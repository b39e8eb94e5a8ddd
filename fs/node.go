package fs

import (
	"context"
	"errors"
	"path"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate"
)

// node is one cgroup directory or control file of a hierarchy. Its
// identity is the host inode (as the view shows it); its virtual path
// comes from its place below the hierarchy's root.
type node struct {
	gofs.Inode
	m *mount
	h *hierarchy
}

func (n *node) vpath() string { return n.Path(n.h.root) }

func (n *node) child(ctx context.Context, st *unix.Stat_t, out *fuse.EntryOut) *gofs.Inode {
	fillAttr(&out.Attr, st)
	return n.NewInode(ctx, &node{m: n.m, h: n.h}, gofs.StableAttr{Mode: st.Mode & unix.S_IFMT, Ino: st.Ino})
}

var _ = (gofs.NodeLookuper)((*node)(nil))

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if errno := n.maySee(ctx, "lookup"); errno != 0 {
		return nil, errno
	}
	st, err := n.h.view.Lookup(n.vpath(), name)
	if err != nil {
		// ENOENT is the everyday answer to a lookup; not worth a log line.
		if errors.Is(err, unix.ENOENT) {
			return nil, syscall.ENOENT
		}
		return nil, n.m.errno(ctx, "lookup", join(n.vpath(), name), err)
	}
	return n.child(ctx, &st, out), 0
}

var _ = (gofs.NodeGetattrer)((*node)(nil))

func (n *node) Getattr(ctx context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.maySee(ctx, "getattr"); errno != 0 {
		return errno
	}
	st, err := n.h.view.Stat(n.vpath())
	if err != nil {
		return n.m.errno(ctx, "getattr", n.vpath(), err)
	}
	fillAttr(&out.Attr, &st)
	return 0
}

var _ = (gofs.NodeSetattrer)((*node)(nil))

// Setattr carries chmod, chown and utimes to the host. A size change is
// accepted and ignored, as cgroupfs does: runtimes open control files
// with O_TRUNC, which the FUSE kernel sends as a setattr.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	vp := n.vpath()
	mode, setMode := in.GetMode()
	uid, setUID := in.GetUID()
	gid, setGID := in.GetGID()
	atime, setA := in.GetATime()
	mtime, setM := in.GetMTime()
	_, setSize := in.GetSize()
	errno := n.check(ctx, "setattr", func(c access.Caller, st *unix.Stat_t) error {
		if setSize && fh == nil {
			// truncate(2) by path needs write permission, like an open.
			if err := n.h.policy.MayWriteFile(c, vp, st); err != nil {
				return err
			}
		}
		if setMode || setA || setM {
			if err := n.h.policy.MayChmod(c, vp, st); err != nil {
				return err
			}
		}
		if setUID || setGID {
			return n.h.policy.MayChown(c, vp, st)
		}
		return nil
	})
	if errno != 0 {
		return errno
	}
	if setMode {
		if err := n.h.view.Chmod(vp, mode&0o7777); err != nil {
			return n.m.errno(ctx, "chmod", vp, err)
		}
	}
	if setUID || setGID {
		u, g := -1, -1
		if setUID {
			u = int(uid)
		}
		if setGID {
			g = int(gid)
		}
		if err := n.h.view.Chown(vp, u, g); err != nil {
			return n.m.errno(ctx, "chown", vp, err)
		}
	}
	if setA || setM {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if setA {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if setM {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		if err := n.h.view.Utimes(vp, ts); err != nil {
			return n.m.errno(ctx, "utimes", vp, err)
		}
	}
	n.m.count.Operation("setattr", "ok")
	return n.Getattr(ctx, fh, out)
}

var _ = (gofs.NodeReaddirer)((*node)(nil))

func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	vp := n.vpath()
	entries, err := n.h.view.List(vp)
	if err != nil {
		return nil, n.m.errno(ctx, "readdir", vp, err)
	}
	out := make([]fuse.DirEntry, 0, len(entries)+2)
	out = append(out, fuse.DirEntry{Name: ".", Mode: unix.S_IFDIR, Ino: n.StableAttr().Ino})
	parent := n.StableAttr().Ino
	if _, p := n.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	out = append(out, fuse.DirEntry{Name: "..", Mode: unix.S_IFDIR, Ino: parent})
	for _, e := range entries {
		out = append(out, fuse.DirEntry{Name: e.Name, Mode: e.Mode & unix.S_IFMT, Ino: e.Ino})
	}
	return gofs.NewListDirStream(out), 0
}

var _ = (gofs.NodeOpendirer)((*node)(nil))

func (n *node) Opendir(ctx context.Context) syscall.Errno {
	return n.mayRead(ctx, "opendir")
}

func (n *node) mayRead(ctx context.Context, op string) syscall.Errno {
	vp := n.vpath()
	st, err := n.h.view.Stat(vp)
	if err == nil {
		err = n.h.policy.MayRead(&st, func() (access.Caller, error) { return n.m.caller(ctx) })
	}
	if err != nil {
		return n.m.errno(ctx, op, vp, err)
	}
	return 0
}

// maySee refuses callers outside the owner's user namespace; with no
// possible outsiders it identifies nobody.
func (n *node) maySee(ctx context.Context, op string) syscall.Errno {
	if n.h.policy.NoOutsiders() {
		return 0
	}
	c, err := n.m.caller(ctx)
	if err == nil {
		err = n.h.policy.MaySee(c)
	}
	if err != nil {
		return n.m.errno(ctx, op, n.vpath(), err)
	}
	return 0
}

// check identifies the caller and runs a policy decision on this node's
// shown attributes.
func (n *node) check(ctx context.Context, op string, decide func(access.Caller, *unix.Stat_t) error) syscall.Errno {
	vp := n.vpath()
	c, err := n.m.caller(ctx)
	if err != nil {
		return n.m.errno(ctx, op, vp, err)
	}
	st, err := n.h.view.Stat(vp)
	if err == nil {
		err = decide(c, &st)
	}
	if err != nil {
		return n.m.errno(ctx, op, vp, err)
	}
	return 0
}

// mayChangeEntries allows mkdir, rmdir and rename in this directory.
func (n *node) mayChangeEntries(ctx context.Context, op string) syscall.Errno {
	return n.check(ctx, op, func(c access.Caller, st *unix.Stat_t) error {
		return n.h.policy.MayChangeEntries(c, st)
	})
}

var _ = (gofs.NodeMkdirer)((*node)(nil))

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	vp := n.vpath()
	var creator access.Caller
	errno := n.check(ctx, "mkdir", func(c access.Caller, st *unix.Stat_t) error {
		creator = c
		return n.h.policy.MayChangeEntries(c, st)
	})
	if errno != 0 {
		return nil, errno
	}
	st, err := n.h.view.Mkdir(vp, name, mode, creator.Uid, creator.Gid)
	if err != nil {
		return nil, n.m.errno(ctx, "mkdir", join(vp, name), err)
	}
	n.m.count.Operation("mkdir", "ok")
	return n.child(ctx, &st, out), 0
}

var _ = (gofs.NodeRmdirer)((*node)(nil))

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	vp := n.vpath()
	if errno := n.mayChangeEntries(ctx, "rmdir"); errno != 0 {
		return errno
	}
	if err := n.h.view.Rmdir(vp, name); err != nil {
		return n.m.errno(ctx, "rmdir", join(vp, name), err)
	}
	n.m.count.Operation("rmdir", "ok")
	return 0
}

var _ = (gofs.NodeRenamer)((*node)(nil))

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	vp := n.vpath()
	if errno := n.mayChangeEntries(ctx, "rename"); errno != 0 {
		return errno
	}
	other, ok := newParent.(*node)
	if !ok || other.h != n.h {
		return syscall.EXDEV // another hierarchy
	}
	if other != n {
		if errno := other.mayChangeEntries(ctx, "rename"); errno != 0 {
			return errno
		}
	}
	if err := n.h.view.Rename(vp, name, other.vpath(), newName, uint(flags)); err != nil {
		return n.m.errno(ctx, "rename", join(vp, name), err)
	}
	return 0
}

// cgroupfs creates nothing but directories. The errnos are what the host
// kernel answers on a cgroup2 directory (measured on Linux 6.18): kernfs
// has no create op, so the VFS answers EACCES to open(O_CREAT); it has no
// symlink, link, mknod or unlink op for cgroups, so those are EPERM.

var _ = (gofs.NodeCreater)((*node)(nil))

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, n.createsNothing(ctx, "create", name, syscall.EACCES)
}

// createsNothing answers what cgroupfs answers to anything but mkdir, and
// logs it like every other refusal.
func (n *node) createsNothing(ctx context.Context, op, name string, errno syscall.Errno) syscall.Errno {
	p := join(n.vpath(), name)
	return n.m.errno(ctx, op, p, &translate.Error{Op: op, Path: p, Data: "cgroupfs makes only directories", Err: errno})
}

var _ = (gofs.NodeSymlinker)((*node)(nil))

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.createsNothing(ctx, "symlink", name, syscall.EPERM)
}

var _ = (gofs.NodeLinker)((*node)(nil))

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.createsNothing(ctx, "link", name, syscall.EPERM)
}

var _ = (gofs.NodeMknoder)((*node)(nil))

func (n *node) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.createsNothing(ctx, "mknod", name, syscall.EPERM)
}

var _ = (gofs.NodeUnlinker)((*node)(nil))

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.createsNothing(ctx, "unlink", name, syscall.EPERM)
}

var _ = (gofs.NodeStatfser)((*node)(nil))

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	st, err := n.h.view.Host().Statfs()
	if err != nil {
		return n.m.errno(ctx, "statfs", n.vpath(), err)
	}
	out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
	out.Files, out.Ffree = st.Files, st.Ffree
	out.Bsize, out.Frsize = uint32(st.Bsize), uint32(st.Frsize)
	out.NameLen = uint32(st.Namelen)
	return 0
}

var _ = (gofs.NodeOpener)((*node)(nil))

// Open opens the host file for this request alone. The kernel page
// cache never answers a read (see openFlags).
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	vp := n.vpath()
	acc := flags & syscall.O_ACCMODE
	var opener access.Caller
	if acc == syscall.O_WRONLY || acc == syscall.O_RDWR || flags&syscall.O_TRUNC != 0 {
		// The kernel judges writes with the opener's credentials
		// (cgroup-v2.rst, "Delegation Containment"), so the check is here,
		// not in Write.
		errno := n.check(ctx, "open", func(c access.Caller, st *unix.Stat_t) error {
			opener = c
			return n.h.policy.MayWriteFile(c, vp, st)
		})
		if errno != 0 {
			return nil, 0, errno
		}
	}
	f, err := n.h.view.Open(vp, int(flags))
	if err != nil {
		return nil, 0, n.m.errno(ctx, "open", vp, err)
	}
	if acc == syscall.O_RDONLY || acc == syscall.O_RDWR {
		// Opening a control file has no effect on the host; the mode of
		// the file just opened decides whether the caller may read it.
		st, err := n.h.view.Fstat(f)
		if err == nil {
			err = n.h.policy.MayRead(&st, func() (access.Caller, error) { return n.m.caller(ctx) })
		}
		if err != nil {
			f.Close()
			return nil, 0, n.m.errno(ctx, "open", vp, err)
		}
	}
	ro := acc == syscall.O_RDONLY
	h := &handle{f: f, m: n.m, view: n.h.view, policy: n.h.policy, vpath: vp, readOnly: ro, opener: opener}
	switch path.Base(vp) {
	case "cgroup.procs":
		h.migrate = migrateProcs
	case "cgroup.threads", "tasks": // v1's tasks moves one thread
		h.migrate = migrateThreads
	}
	if acc != syscall.O_WRONLY && n.h.view.Rendered(vp) {
		// cgfs computes this file's content (pids in the reader's
		// namespace, hidden leaves merged or left out): never
		// passthrough.
		h.render = true
		h.readOnly = false
		if h.migrate != noMigration && n.m.pids != nil {
			fc, _ := fuse.FromContext(ctx)
			r, err := n.m.pids.ReaderOf(int(fc.Pid))
			if err != nil {
				h.f.Close()
				return nil, 0, n.m.errno(ctx, "open", vp, access.ErrGone)
			}
			h.reader = r
		}
	}
	return h, n.m.openFlags(h.readOnly), 0
}

// fillAttr copies host attributes into a FUSE attribute.
func fillAttr(a *fuse.Attr, st *unix.Stat_t) {
	a.Ino = st.Ino
	a.Size = uint64(st.Size)
	a.Blocks = uint64(st.Blocks)
	a.Atime, a.Atimensec = uint64(st.Atim.Sec), uint32(st.Atim.Nsec)
	a.Mtime, a.Mtimensec = uint64(st.Mtim.Sec), uint32(st.Mtim.Nsec)
	a.Ctime, a.Ctimensec = uint64(st.Ctim.Sec), uint32(st.Ctim.Nsec)
	a.Mode = st.Mode
	a.Nlink = uint32(st.Nlink)
	a.Owner = fuse.Owner{Uid: st.Uid, Gid: st.Gid}
	a.Blksize = uint32(st.Blksize)
}

func join(dir, name string) string { return translate.Join(dir, name) }
