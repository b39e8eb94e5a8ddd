package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cgfs/cgfs/translate"
)

// handle is one open of an interface file: the view's open file.
type handle struct {
	f     *translate.File
	m     *mount
	vpath string
}

// fileOf is the view's open file behind a FUSE file handle, if any.
func fileOf(fh gofs.FileHandle) *translate.File {
	if h, ok := fh.(*handle); ok {
		return h.f
	}
	return nil
}

var _ = (gofs.FilePassthroughFder)((*handle)(nil))

// PassthroughFd is what go-fuse registers as the inode's backing file
// when it has none (see translate.File.BackingFd); whether this open
// reads through it is openFlags'.
func (h *handle) PassthroughFd() (int, bool) { return h.f.BackingFd() }

var _ = (gofs.FileReader)((*handle)(nil))

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	_, c := h.m.start(ctx, "read")
	defer c.end()
	b, err := h.f.Read(dest, off)
	if err != nil {
		return nil, c.fail(ctx, h.vpath, err)
	}
	return fuse.ReadResultData(b), 0
}

var _ = (gofs.FileWriter)((*handle)(nil))

// Write is one write(2): the view parses each write on its own, as the
// kernel does, and answers with the kernel's errno.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	r, c := h.m.start(ctx, "write")
	defer c.end()
	n, err := h.f.Write(r, data)
	if errno := c.fail(ctx, h.vpath, err); errno != 0 {
		return 0, errno
	}
	return uint32(n), 0
}

var _ = (gofs.FileReleaser)((*handle)(nil))

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.m.released(h.f)
	return 0
}
