package fs

import (
	"context"
	"fmt"
	"path"
	"strings"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
)

// Reviving nodes. A server that took a connection over (package
// fuseconn) is asked for node ids the kernel holds from an earlier
// server: go-fuse's bridge asks the root's LookupNode for each id it
// does not know (node ids are inode numbers), which finds the node again
// from the host's file handle of that inode, and says it did (revived),
// so that the connection can tell a node revived from one the bridge
// knew.

// revivedID is set by LookupNode to the node it found (see bridge.Revived).
type revivedID = atomic.Uint64

// revive finds node id of tree t again, for a server that took the
// connection over (see fuseconn): the view names its path from the host's
// file handle, and each component is looked up as the kernel would have,
// by the caller of the request that named it.
func (m *mount) revive(ctx context.Context, t *tree, id uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	r, c := m.start(ctx, "revive")
	defer c.end()
	vp, err := t.view.Resolve(id)
	if err != nil {
		return nil, c.fail(ctx, fmt.Sprintf("inode %d", id), err)
	}
	cur, dir := t.root, ""
	st, err := t.view.RootAttr()
	for _, name := range strings.Split(vp, "/") {
		if vp == "" || err != nil {
			break
		}
		if st, err = t.view.Lookup(r, dir, name); err != nil {
			break
		}
		child := cur.GetChild(name)
		if child == nil {
			child = cur.NewInode(ctx, &node{m: m, t: t}, gofs.StableAttr{Mode: st.Mode & unix.S_IFMT, Ino: st.Ino})
			if !cur.AddChild(name, child, false) {
				child = cur.GetChild(name)
			}
		}
		if child == nil {
			err = translate.ErrStale
			break
		}
		cur, dir = child, join(dir, name)
	}
	if err == nil && (cur.StableAttr().Ino != id || st.Ino != id) {
		err = translate.ErrStale
	}
	if err != nil {
		return nil, c.fail(ctx, vp, err)
	}
	if rl := m.relay.Load(); rl != nil && st.Mode&unix.S_IFMT == unix.S_IFREG && translate.IsEventsFile(path.Base(vp)) {
		rl.Watch(t.index, vp, join(t.dir, vp), id)
	}
	fillAttr(&out.Attr, &st)
	m.spliceable(out, path.Base(vp), &st)
	m.revived.Store(id)
	return cur, 0
}

var _ = (gofs.NodeLookupNoder)((*node)(nil))

// LookupNode finds a node the kernel holds from an earlier server (it is
// only asked of the root).
func (n *node) LookupNode(ctx context.Context, id uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return n.m.revive(ctx, n.t, id, out)
}

var _ = (gofs.NodeLookupNoder)((*layoutRoot)(nil))

// LookupNode finds a node the kernel holds from an earlier server: a
// hierarchy's directory, a symlink, or a node of one of the views.
func (r *layoutRoot) LookupNode(ctx context.Context, id uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	for name, ch := range r.Children() {
		if ch.StableAttr().Ino != id {
			continue
		}
		if n, ok := ch.Operations().(*node); ok {
			st, err := n.t.view.RootAttr()
			if err != nil {
				return nil, r.m.errno(ctx, nil, "revive", name, err)
			}
			fillAttr(&out.Attr, &st)
		} else {
			out.Attr.Mode = unix.S_IFLNK | 0o777
			out.Attr.Ino = id
		}
		r.m.revived.Store(id)
		return ch, 0
	}
	for _, ch := range r.Children() {
		if n, ok := ch.Operations().(*node); ok {
			if _, err := n.t.view.Resolve(id); err == nil {
				return r.m.revive(ctx, n.t, id, out)
			}
		}
	}
	return nil, r.m.errno(ctx, nil, "revive", fmt.Sprintf("inode %d", id), translate.ErrStale)
}
