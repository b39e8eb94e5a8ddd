package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/translate"
)

// Hierarchy is one cgroup hierarchy a mount serves, with the policy
// that judges its callers.
type Hierarchy struct {
	// Name is its directory below the mount root, as on the host
	// ("memory", "cpu,cpuacct", "unified"); "" serves it at the root.
	Name   string
	View   *translate.View
	Policy *access.Policy
}

// Config is what one mount serves and how it judges callers.
type Config struct {
	// Hierarchies: one named "" is the whole mount (a cgroup v2 view);
	// otherwise each is a directory of a read-only root, as the host
	// lays out /sys/fs/cgroup on a v1 or hybrid machine.
	Hierarchies []Hierarchy
	// Symlinks are the host's links between hierarchy names (cpu ->
	// cpu,cpuacct), shown in the root beside them.
	Symlinks   map[string]string
	Identifier *access.Identifier
	// Pids identifies the pid namespaces of writers of cgroup.procs.
	Pids *translate.Pids
	// Metrics counts operations and refusals; nil counts nothing.
	Metrics *metrics.View
	Log     *slog.Logger
	// Debug logs every FUSE request.
	Debug bool
}

// mount is the state of one mount, shared by its nodes. Nothing in it is
// shared with other mounts.
type mount struct {
	ident *access.Identifier
	pids  *translate.Pids
	count *metrics.View
	log   *slog.Logger
	// passthrough is set once the kernel accepted a backing file: then
	// read-only opens are served by FUSE passthrough instead of DIRECT_IO.
	passthrough atomic.Bool
}

// Kernel cache lifetimes. Attributes and names may be cached briefly;
// a missing name is never cached so a cgroup made on the host shows at
// once. Content is never cached (FOPEN_DIRECT_IO).
var (
	entryTimeout    = time.Second
	attrTimeout     = time.Second
	negativeTimeout = time.Duration(0)
)

// hierarchy is a served hierarchy and the inode of its root.
type hierarchy struct {
	view   *translate.View
	policy *access.Policy
	root   *gofs.Inode
}

// Mount serves cfg's hierarchies at dir. It returns once the mount is
// live; the caller waits on the server and unmounts it.
func Mount(dir string, cfg Config) (*fuse.Server, error) {
	if len(cfg.Hierarchies) == 0 {
		return nil, errors.New("nothing to serve")
	}
	st, err := cfg.Hierarchies[0].View.Stat("")
	if err != nil {
		return nil, err
	}
	m := &mount{ident: cfg.Identifier, pids: cfg.Pids, count: cfg.Metrics, log: cfg.Log}
	var root gofs.InodeEmbedder
	if len(cfg.Hierarchies) == 1 && cfg.Hierarchies[0].Name == "" {
		h := cfg.Hierarchies[0]
		n := &node{m: m, h: &hierarchy{view: h.View, policy: h.Policy}}
		n.h.root = &n.Inode
		root = n
	} else {
		root = &layoutRoot{m: m, hierarchies: cfg.Hierarchies, symlinks: cfg.Symlinks, attr: st}
	}
	opts := &gofs.Options{
		MountOptions: fuse.MountOptions{
			DirectMount: true,
			AllowOther:  true,
			FsName:      "cgfs",
			Name:        "cgfs",
			// cgroup xattrs (systemd's trusted.delegate, ...) are not
			// carried yet: the kernel answers EOPNOTSUPP.
			DisableXAttrs: true,
			Debug:         cfg.Debug,
		},
		EntryTimeout:    &entryTimeout,
		AttrTimeout:     &attrTimeout,
		NegativeTimeout: &negativeTimeout,
		RootStableAttr:  &gofs.StableAttr{Mode: unix.S_IFDIR, Ino: st.Ino},
	}
	if _, ok := root.(*layoutRoot); ok {
		// Hierarchy inode numbers carry a base (translate.ViewConfig)
		// and never meet 1.
		opts.RootStableAttr.Ino = 1
	}
	server, err := gofs.Mount(dir, root, opts)
	if err != nil {
		return nil, err
	}
	m.passthrough.Store(probePassthrough(server, cfg.Hierarchies[0].View))
	return server, nil
}

// probePassthrough asks the kernel for a backing file once: go-fuse
// quietly stops passthrough when that fails (not root, old kernel), and
// an open answered without FOPEN_DIRECT_IO and without passthrough would
// be served stale from the page cache.
func probePassthrough(server *fuse.Server, v *translate.View) bool {
	f, err := v.Open("cgroup.procs", unix.O_RDONLY) // every hierarchy has it
	if err != nil {
		return false
	}
	defer f.Close()
	id, errno := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	if errno != 0 {
		return false
	}
	server.UnregisterBackingFd(id)
	return true
}

// openFlags is the FUSE open reply for an open: DIRECT_IO keeps the page
// cache out (cgroup files report size 0 and change under the reader);
// a read-only open goes to passthrough when the kernel has it (the
// kernel lets DIRECT_IO override passthrough, so a writer sharing the
// inode's backing file still comes to Write). NOFLUSH: close(2) needs no
// round trip, nothing is buffered.
func (m *mount) openFlags(readOnly bool) uint32 {
	if readOnly && m.passthrough.Load() {
		return fuse.FOPEN_NOFLUSH
	}
	return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH
}

// caller identifies the thread that made the request in ctx.
func (m *mount) caller(ctx context.Context) (access.Caller, error) {
	fc, ok := fuse.FromContext(ctx)
	if !ok {
		return access.Caller{}, errors.New("request without a caller")
	}
	return m.ident.Identify(int(fc.Pid), fc.Uid, fc.Gid)
}

// errno is the one place an error becomes what the container sees. Every
// error is logged on the host: refusals with the rule that refused, host
// errors with the host operation, path and data.
func (m *mount) errno(ctx context.Context, op, vpath string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var pid uint32
	if fc, ok := fuse.FromContext(ctx); ok {
		pid = fc.Pid
	}
	var ref *access.Refusal
	if errors.As(err, &ref) {
		m.count.Refusal(string(ref.Rule), op)
		m.count.Operation(op, errName(ref.Errno))
		pid, _ := m.ident.ThreadGroup(ref.Caller.Tid)
		m.log.Warn("refused", "rule", ref.Rule, "op", op, "path", "/"+vpath,
			"errno", errName(ref.Errno), "pid", pid, "caller", ref.Caller.String())
		return ref.Errno
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		m.count.Operation(op, errName(errno))
		m.log.Info("host refused", "op", op, "path", "/"+vpath, "errno", errName(errno),
			"tid", pid, "detail", err.Error())
		return errno
	}
	if errors.Is(err, access.ErrGone) {
		// The caller is gone: nobody reads this answer.
		return syscall.ESRCH
	}
	m.count.Operation(op, "EIO")
	m.log.Error("internal error", "op", op, "path", "/"+vpath, "tid", pid, "err", err)
	return syscall.EIO
}

func errName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}
