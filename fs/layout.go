package fs

import (
	"context"
	"maps"
	"slices"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
)

// layoutRoot is the root of a mount on a v1 or hybrid host: one
// directory per hierarchy, named as on the host, and the host's
// symlinks between them. Like the tmpfs a host mounts at
// /sys/fs/cgroup, the container cannot change it.
type layoutRoot struct {
	gofs.Inode
	m        *mount
	views    []ViewAt
	symlinks map[string]string
	attr     unix.Stat_t // shown attributes: the first view root's owner
}

var _ = (gofs.NodeOnAdder)((*layoutRoot)(nil))

// OnAdd makes the views' roots and the symlinks. Inode numbers of
// different views never collide: each view adds its own base.
func (r *layoutRoot) OnAdd(ctx context.Context) {
	for i, va := range r.views {
		st, err := va.View.RootAttr()
		if err != nil {
			r.m.log.Error("hierarchy root", "name", va.Dir, "err", err)
			continue
		}
		n := &node{m: r.m, t: &tree{view: va.View, index: i, dir: va.Dir}}
		child := r.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: unix.S_IFDIR, Ino: st.Ino})
		n.t.root = child
		r.AddChild(va.Dir, child, false)
	}
	// Symlinks get inode numbers above every view's, the same in every
	// server of the connection (see revive).
	names := slices.Sorted(maps.Keys(r.symlinks))
	for i, name := range names {
		ino := uint64(len(r.views)+1)<<48 + uint64(i+1)
		link := r.NewPersistentInode(ctx, &gofs.MemSymlink{Data: []byte(r.symlinks[name])}, gofs.StableAttr{Mode: unix.S_IFLNK, Ino: ino})
		r.AddChild(name, link, false)
	}
}

var _ = (gofs.NodeGetattrer)((*layoutRoot)(nil))

func (r *layoutRoot) Getattr(ctx context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillAttr(&out.Attr, &r.attr)
	out.Mode = unix.S_IFDIR | 0o755
	out.Ino = r.StableAttr().Ino
	return 0
}

// fixed refuses a change to the layout and logs it.
func (r *layoutRoot) fixed(ctx context.Context, op, name string) syscall.Errno {
	return r.m.errno(ctx, nil, op, name, translate.ErrLayoutRoot)
}

var _ = (gofs.NodeMkdirer)((*layoutRoot)(nil))

func (r *layoutRoot) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, r.fixed(ctx, "mkdir", name)
}

var _ = (gofs.NodeCreater)((*layoutRoot)(nil))

func (r *layoutRoot) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, r.fixed(ctx, "create", name)
}

var _ = (gofs.NodeRmdirer)((*layoutRoot)(nil))

func (r *layoutRoot) Rmdir(ctx context.Context, name string) syscall.Errno {
	return r.fixed(ctx, "rmdir", name)
}

var _ = (gofs.NodeUnlinker)((*layoutRoot)(nil))

func (r *layoutRoot) Unlink(ctx context.Context, name string) syscall.Errno {
	return r.fixed(ctx, "unlink", name)
}

var _ = (gofs.NodeSymlinker)((*layoutRoot)(nil))

func (r *layoutRoot) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, r.fixed(ctx, "symlink", name)
}

var _ = (gofs.NodeRenamer)((*layoutRoot)(nil))

func (r *layoutRoot) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return r.fixed(ctx, "rename", name)
}
