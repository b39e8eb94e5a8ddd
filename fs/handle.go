package fs

import (
	"context"
	"errors"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate"
)

// handle is one open of a control file: a host fd opened for this open
// alone, so the host sees one open file per container open, as natively.
type handle struct {
	f      *os.File
	m      *mount
	view   *translate.View
	policy *access.Policy
	vpath  string
	// readOnly opens are handed to the kernel (FUSE passthrough): reads
	// then go straight to the host file at native speed. Writes always
	// come through Write, so every host refusal is logged here.
	readOnly bool
	// opener is who opened the file for writing; the kernel judges
	// migrations with the opener's credentials.
	opener access.Caller
	// migrate is set for cgroup.procs and cgroup.threads: writes are
	// pids in the writer's pid namespace.
	migrate migration
	// render is set when cgfs computes the content: it is rendered at
	// each read from offset 0 (for reader, the opener, whose pid
	// namespace pids are shown in) and served from rendered for later
	// offsets.
	render   bool
	reader   translate.Reader
	rendered []byte
}

type migration int

const (
	noMigration migration = iota
	migrateProcs
	migrateThreads
)

var _ = (gofs.FilePassthroughFder)((*handle)(nil))

func (h *handle) PassthroughFd() (int, bool) {
	return int(h.f.Fd()), h.readOnly
}

var _ = (gofs.FileReader)((*handle)(nil))

// Read is one pread(2) of the host file. At offset 0 cgroupfs produces
// the content afresh, so every read from the start is a fresh read.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.render {
		if off == 0 || h.rendered == nil {
			b, err := h.view.Render(h.vpath, h.f, h.reader)
			if err != nil {
				return nil, h.m.errno(ctx, "read", h.vpath, err)
			}
			h.rendered = b
		}
		if off >= int64(len(h.rendered)) {
			return fuse.ReadResultData(nil), 0
		}
		return fuse.ReadResultData(h.rendered[off:min(off+int64(len(dest)), int64(len(h.rendered)))]), 0
	}
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
	if h.migrate != noMigration {
		if err := h.writePid(ctx, data); err != nil {
			return 0, h.m.errno(ctx, "write", h.vpath, err)
		}
		h.m.count.Operation("write", "ok")
		return uint32(len(data)), 0
	}
	n, err := h.view.Write(h.vpath, h.f, data)
	if err != nil {
		return 0, h.m.errno(ctx, "write", h.vpath, err)
	}
	h.m.count.Operation("write", "ok")
	return uint32(n), 0
}

// writePid moves a task: the number is read in the writer's pid
// namespace, must name a task inside the view (ENOENT otherwise, as
// nsdelegate answers), and the opener must be allowed the move.
func (h *handle) writePid(ctx context.Context, data []byte) error {
	n, err := translate.ParsePid(data)
	if err != nil {
		return &translate.Error{Op: "write", Path: h.vpath, Data: shorten(data), Err: err}
	}
	fc, ok := fuse.FromContext(ctx)
	if !ok {
		return errors.New("request without a caller")
	}
	writer, err := h.m.pids.ReaderOf(int(fc.Pid))
	if err != nil {
		return access.ErrGone
	}
	return h.view.Migrate(h.vpath, writer, n, h.migrate == migrateThreads, func(from, to string) error {
		return h.policy.MayMigrate(h.opener, from, to, func(cgroup string) (unix.Stat_t, error) {
			return h.view.Stat(translate.Join(cgroup, "cgroup.procs"))
		})
	})
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
