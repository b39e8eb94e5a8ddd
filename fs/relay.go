package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cgfs/cgfs/fuseconn"
	"github.com/cgfs/cgfs/translate"
)

// The relay (fuseconn.Relay) raises inotify events on a view's events
// files by writing one byte through the mount; the nodes tell it which
// files the kernel looked up (Lookup, revive) and forgot (OnForget), and
// swallow its writes.

// isRelayWrite tells whether the open in ctx of the file at vpath is the
// relay's: a write-only open of an events file by a thread of this
// process (fuseconn.IsRelayWrite). cgroupfs refuses every other write to
// an events file anyway.
func isRelayWrite(ctx context.Context, vpath string, flags uint32) bool {
	return translate.IsEventsFile(vpath) && fuseconn.IsRelayWrite(ctx, flags)
}

// relayHandle takes the relay's write and changes nothing. It holds the
// file open read-only, for its backing (see translate.File.BackingFd):
// an inode a reader has open with passthrough needs every open of it to
// say passthrough too, the relay's included.
type relayHandle struct {
	f *translate.File
	m *mount
}

// relayOpen is the relay's open of vpath, by this server's own thread
// (host root): not counted as the container's.
func (n *node) relayOpen(ctx context.Context, vpath string) *relayHandle {
	h := &relayHandle{m: n.m}
	if fc, ok := fuse.FromContext(ctx); ok {
		r := n.m.ident.Request(int(fc.Pid), fc.Uid, fc.Gid)
		defer r.Done()
		if f, err := n.t.view.OpenRelay(r, vpath); err == nil && n.m.opened(f) {
			h.f = f
		}
	}
	return h
}

var _ = (gofs.FileWriter)((*relayHandle)(nil))

func (*relayHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return uint32(len(data)), 0
}

var _ = (gofs.FilePassthroughFder)((*relayHandle)(nil))

func (h *relayHandle) PassthroughFd() (int, bool) {
	if h.f == nil {
		return -1, false
	}
	return h.f.BackingFd()
}

var _ = (gofs.FileReleaser)((*relayHandle)(nil))

func (h *relayHandle) Release(ctx context.Context) syscall.Errno {
	if h.f != nil {
		h.m.released(h.f)
	}
	return 0
}
