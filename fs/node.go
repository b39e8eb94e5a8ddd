package fs

import (
	"context"
	"path"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
)

// tree is a served view and the inode of its root.
type tree struct {
	view  *translate.View
	index int // the view's in Config.Views (the relay's name for it)
	root  *gofs.Inode
	dir   string // the root's path in the mount ("" or a hierarchy's directory)
}

// node is one cgroup directory or interface file of a view. Its
// identity is the host inode (as the view shows it); its virtual path
// comes from its place below the view's root.
type node struct {
	gofs.Inode
	m *mount
	t *tree
}

func (n *node) vpath() string { return n.Path(n.t.root) }

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (n *node) child(ctx context.Context, name string, st *unix.Stat_t, out *fuse.EntryOut) *gofs.Inode {
	fillAttr(&out.Attr, st)
	n.m.spliceable(out, name, st)
	return n.NewInode(ctx, &node{m: n.m, t: n.t}, gofs.StableAttr{Mode: st.Mode & unix.S_IFMT, Ino: st.Ino})
}

var _ = (gofs.NodeLookuper)((*node)(nil))

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	r, c := n.m.start(ctx, "lookup")
	defer c.end()
	vp := n.vpath()
	st, err := n.t.view.Lookup(r, vp, name)
	if err != nil {
		return nil, c.fail(ctx, join(vp, name), err)
	}
	if rl := n.m.relay.Load(); rl != nil && st.Mode&unix.S_IFMT == unix.S_IFREG && translate.IsEventsFile(name) {
		// Once looked up, it may be watched.
		rl.Watch(n.t.index, join(vp, name), join(n.t.dir, join(vp, name)), st.Ino)
	}
	return n.child(ctx, name, &st, out), 0
}

var _ = (gofs.NodeOnForgetter)((*node)(nil))

// OnForget ends the relay of an events file the kernel forgot.
func (n *node) OnForget() {
	if rl := n.m.relay.Load(); rl != nil && n.StableAttr().Mode == unix.S_IFREG {
		rl.Forget(n.StableAttr().Ino)
	}
}

var _ = (gofs.NodeGetattrer)((*node)(nil))

func (n *node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r, c := n.m.start(ctx, "getattr")
	defer c.end()
	vp := n.vpath()
	st, err := n.t.view.Getattr(r, vp, fileOf(fh))
	if err != nil {
		return c.fail(ctx, vp, err)
	}
	fillAttr(&out.Attr, &st)
	if n.m.spliceSize(path.Base(vp), &st) {
		out.Attr.Size = spliceSize // never cached: uncached
	}
	return 0
}

var _ = (gofs.NodeSetattrer)((*node)(nil))

// Setattr carries chmod, chown, utimes and truncation to the view.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	r, c := n.m.start(ctx, "setattr")
	defer c.end()
	var a translate.Attrs
	if mode, ok := in.GetMode(); ok {
		a.Mode = &mode
	}
	if uid, ok := in.GetUID(); ok {
		a.Uid = &uid
	}
	if gid, ok := in.GetGID(); ok {
		a.Gid = &gid
	}
	a.Atime = setTime(in, fuse.FATTR_ATIME, fuse.FATTR_ATIME_NOW, in.Atime, in.Atimensec)
	a.Mtime = setTime(in, fuse.FATTR_MTIME, fuse.FATTR_MTIME_NOW, in.Mtime, in.Mtimensec)
	_, a.Size = in.GetSize()
	vp := n.vpath()
	st, err := n.t.view.Setattr(r, vp, fileOf(fh), a)
	if errno := c.fail(ctx, vp, err); errno != 0 {
		return errno
	}
	fillAttr(&out.Attr, &st)
	return 0
}

// setTime is the time a setattr sets (UTIME_NOW for "now"), nil if none.
func setTime(in *fuse.SetAttrIn, set, now uint32, sec uint64, nsec uint32) *unix.Timespec {
	switch {
	case in.Valid&set == 0:
		return nil
	case in.Valid&now != 0:
		return &unix.Timespec{Nsec: unix.UTIME_NOW}
	}
	return &unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
}

var _ = (gofs.NodeOpendirer)((*node)(nil))

func (n *node) Opendir(ctx context.Context) syscall.Errno {
	r, c := n.m.start(ctx, "opendir")
	defer c.end()
	vp := n.vpath()
	return c.fail(ctx, vp, n.t.view.OpenDir(r, vp))
}

var _ = (gofs.NodeReaddirer)((*node)(nil))

// Readdir lists the directory from one getdents of the host's: names,
// types and inode numbers, no stat of each entry. The mount answers
// READDIR, not READDIRPLUS (see Serve), so a listing looks up nothing;
// what a caller then stats or opens is looked up and cached by the
// kernel like any other name.
func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	_, c := n.m.start(ctx, "readdir")
	defer c.end()
	vp := n.vpath()
	entries, err := n.t.view.List(vp)
	if err != nil {
		return nil, c.fail(ctx, vp, err)
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

var _ = (gofs.NodeMkdirer)((*node)(nil))

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	r, c := n.m.start(ctx, "mkdir")
	defer c.end()
	vp := n.vpath()
	st, err := n.t.view.Mkdir(r, vp, name, mode)
	if errno := c.fail(ctx, join(vp, name), err); errno != 0 {
		return nil, errno
	}
	return n.child(ctx, name, &st, out), 0
}

var _ = (gofs.NodeRmdirer)((*node)(nil))

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	r, c := n.m.start(ctx, "rmdir")
	defer c.end()
	vp := n.vpath()
	return c.fail(ctx, join(vp, name), n.t.view.Rmdir(r, vp, name))
}

var _ = (gofs.NodeRenamer)((*node)(nil))

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	other, ok := newParent.(*node)
	if !ok || other.t != n.t {
		return syscall.EXDEV // another view: another hierarchy
	}
	r, c := n.m.start(ctx, "rename")
	defer c.end()
	vp := n.vpath()
	err := n.t.view.Rename(r, vp, name, other.vpath(), newName, uint(flags))
	return c.fail(ctx, join(vp, name), err)
}

// cgroupfs creates nothing but directories: the view answers as it does.

func (n *node) makeFile(ctx context.Context, op, name string) syscall.Errno {
	_, c := n.m.start(ctx, op)
	defer c.end()
	return c.fail(ctx, join(n.vpath(), name), n.t.view.MakeFile(op))
}

var _ = (gofs.NodeCreater)((*node)(nil))

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, n.makeFile(ctx, "create", name)
}

var _ = (gofs.NodeSymlinker)((*node)(nil))

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.makeFile(ctx, "symlink", name)
}

var _ = (gofs.NodeLinker)((*node)(nil))

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.makeFile(ctx, "link", name)
}

var _ = (gofs.NodeMknoder)((*node)(nil))

func (n *node) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, n.makeFile(ctx, "mknod", name)
}

var _ = (gofs.NodeUnlinker)((*node)(nil))

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.makeFile(ctx, "unlink", name)
}

var _ = (gofs.NodeStatfser)((*node)(nil))

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	_, c := n.m.start(ctx, "statfs")
	defer c.end()
	st, err := n.t.view.Statfs()
	if err != nil {
		return c.fail(ctx, n.vpath(), err)
	}
	out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
	out.Files, out.Ffree = st.Files, st.Ffree
	out.Bsize, out.Frsize = uint32(st.Bsize), uint32(st.Frsize)
	out.NameLen = uint32(st.Namelen)
	return 0
}

var _ = (gofs.NodeOpener)((*node)(nil))

// Open opens the host file for this open alone; the kernel page cache
// never answers a read (see openFlags).
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	vp := n.vpath()
	if n.m.relay.Load() != nil && isRelayWrite(ctx, vp, flags) {
		return n.relayOpen(ctx, vp), fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
	}
	r, c := n.m.start(ctx, "open")
	defer c.end()
	f, err := n.t.view.Open(r, vp, int(flags))
	if err != nil {
		return nil, 0, c.fail(ctx, vp, err)
	}
	if !n.m.opened(f) {
		return nil, 0, syscall.ENOTCONN // the server has stopped serving
	}
	return &handle{f: f, m: n.m, vpath: vp}, n.m.openFlags(f), 0
}

// spliceSize is the size a file read with FOPEN_DIRECT_IO shows: since
// Linux 6.5 (2cb1e08985e3) FUSE splices such a file from the page
// cache, up to the inode's size, so sendfile(2) and splice(2) of a
// size-0 file read nothing (busybox cat printed empty task lists); the
// kernel's fix (copy_splice_read for FOPEN_DIRECT_IO) is not in every
// kernel. With a size the page cache is filled by READs, the short
// reply trims the size to what the file holds, and the entry and
// attributes are never cached, so each open's lookup restores it and
// each open drops the cached pages (no FOPEN_KEEP_CACHE). read(2) is
// untouched: direct I/O ignores the size. A splice reads at most
// spliceSize of a file.
const spliceSize = 64 << 10

// spliceSize tells whether the file of attributes st shows spliceSize:
// a regular file the host shows empty whose opens this mount serves
// with FOPEN_DIRECT_IO (computed content, or no passthrough).
func (m *mount) spliceSize(name string, st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 && (translate.Computed(name) || !m.passthrough.Load())
}

// spliceable shows spliceSize in a lookup's entry (see spliceSize);
// uncached keeps the kernel from caching it.
func (m *mount) spliceable(out *fuse.EntryOut, name string, st *unix.Stat_t) {
	if m.spliceSize(name, st) {
		out.Attr.Size = spliceSize
	}
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
