package fs

import (
	"context"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
)

// handle is one open of a control file: a host fd opened for this open
// alone, so the host sees one open file per container open, as natively.
type handle struct {
	f     *os.File
	m     *mount
	vpath string
	// readOnly opens are handed to the kernel (FUSE passthrough): reads
	// then go straight to the host file at native speed. Writes always
	// come through Write, so every host refusal is logged here.
	readOnly bool
}

var _ = (gofs.FilePassthroughFder)((*handle)(nil))

func (h *handle) PassthroughFd() (int, bool) {
	return int(h.f.Fd()), h.readOnly
}

var _ = (gofs.FileReader)((*handle)(nil))

// Read is one pread(2) of the host file. At offset 0 cgroupfs produces
// the content afresh, so every read from the start is a fresh read.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := unix.Pread(int(h.f.Fd()), dest, off)
	if err != nil {
		return nil, h.m.errno(ctx, "read", h.vpath, &translate.Error{Op: "read", Path: h.vpath, Err: err})
	}
	return fuse.ReadResultData(dest[:n]), 0
}

var _ = (gofs.FileWriter)((*handle)(nil))

// Write is one write(2) of the host file: the kernel parses each write
// on its own and answers with its errno, which the caller gets unchanged.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := unix.Pwrite(int(h.f.Fd()), data, off)
	if err != nil {
		return 0, h.m.errno(ctx, "write", h.vpath, &translate.Error{Op: "write", Path: h.vpath, Data: shorten(data), Err: err})
	}
	return uint32(n), 0
}

var _ = (gofs.FileReleaser)((*handle)(nil))

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.f.Close()
	return 0
}

// shorten keeps log lines short when a container writes a lot.
func shorten(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
