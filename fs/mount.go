package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/fuseconn"
	"github.com/cgfs/cgfs/loglimit"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/host"
)

// ViewAt is a view a mount serves, in the directory Dir below the mount
// root ("memory", "cpu,cpuacct", "unified"), or at the root itself when
// Dir is "".
type ViewAt struct {
	Dir  string
	View *translate.View
}

// Config is what one mount serves.
type Config struct {
	// Views: one at Dir "" is the whole mount (a cgroup v2 view);
	// otherwise each is a directory of a fixed root, as the host lays
	// out /sys/fs/cgroup on a v1 or hybrid machine.
	Views []ViewAt
	// Symlinks are the host's links between hierarchy names (cpu ->
	// cpu,cpuacct), shown in the root beside them.
	Symlinks   map[string]string
	Identifier *access.Identifier
	// Metrics counts operations and refusals; nil counts nothing.
	Metrics *metrics.Counts
	Log     *slog.Logger
	// Debug logs every FUSE request.
	Debug bool
	// Watcher, when set, relays the kernel's changes of events files to
	// their watchers through the mount (fuseconn.Relay), while Owner (a
	// host pid; 0 for none) lives, or until Stop without one.
	Watcher *host.Watcher
	Owner   int
	// Resume, when set, serves a connection an earlier server made and
	// handed over (or left behind), instead of a new one.
	Resume *fuseconn.Resume
	// Shared is the budget of the container the mount is for, shared
	// with its other mounts; nil gives the mount one of its own, with
	// the defaults.
	Shared *Shared
}

// mount is the state of one mount, shared by its nodes. Nothing in it is
// shared with other mounts.
type mount struct {
	ident *access.Identifier
	count *metrics.Counts
	log   *slog.Logger
	// passthrough is set once the kernel accepted a backing file: then
	// read-only opens are served by FUSE passthrough instead of DIRECT_IO.
	passthrough atomic.Bool
	// shared is the container's budget, which its other mounts (nested
	// views) draw on too: the server's work for one container is
	// bounded, whatever it sends and however many mounts it makes.
	shared  *Shared
	logs    *loglimit.Limiter              // of log lines the container causes
	relay   atomic.Pointer[fuseconn.Relay] // nil: no events relayed
	revived revivedID                      // see revive
	panics  atomic.Int64                   // requests that panicked (panicked)

	// files are the opens the kernel has not released yet. When the
	// server stops serving (OnUnmount) those left are closed: a
	// connection ended with files open (its container gone, its view
	// stopped, aborted) sends no RELEASE, and each would hold one of the
	// container's budget of open files, which may outlive the
	// connection (a user's, across its containers), and a host
	// descriptor.
	filesMu sync.Mutex
	files   map[*translate.File]struct{}
	ended   bool // OnUnmount closed them: no more are kept
}

// opened keeps f among the mount's open files; false (f closed) when the
// server has stopped serving.
func (m *mount) opened(f *translate.File) bool {
	m.filesMu.Lock()
	defer m.filesMu.Unlock()
	if m.ended {
		f.Close()
		return false
	}
	if m.files == nil {
		m.files = map[*translate.File]struct{}{}
	}
	m.files[f] = struct{}{}
	return true
}

// released closes f, an open the kernel released, unless the server's
// end closed it already.
func (m *mount) released(f *translate.File) {
	m.filesMu.Lock()
	_, ok := m.files[f]
	delete(m.files, f)
	m.filesMu.Unlock()
	if ok {
		f.Close()
	}
}

// closeFiles closes every open the kernel did not release, once the
// server serves no more.
func (m *mount) closeFiles() {
	m.filesMu.Lock()
	left := m.files
	m.files, m.ended = nil, true
	m.filesMu.Unlock()
	for f := range left {
		f.Close()
	}
}

// panicked answers a request whose handling panicked (in cgfs or in
// go-fuse, which recovers it): EIO, and an error on the host with the
// stack, for a bug the container must not be able to turn into more.
func (m *mount) panicked(r any) fuse.Status {
	m.panics.Add(1)
	m.log.Error("a request panicked: answered EIO", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return fuse.EIO
}

// start begins serving the request in ctx, a FUSE operation op: it
// waits for one of the mount's in-flight slots and starts the
// identification of the caller. The call's end releases both and counts
// the request with its result and the time it took.
func (m *mount) start(ctx context.Context, op string) (*access.Request, *call) {
	m.shared.inflight <- struct{}{}
	c := &call{m: m, op: op, t0: time.Now(), result: "ok"}
	if fc, ok := fuse.FromContext(ctx); ok {
		c.r = m.ident.Request(int(fc.Pid), fc.Uid, fc.Gid)
	} else {
		c.r = m.ident.Request(0, 0, 0) // identifies as nobody: a pin of tid 0 fails
	}
	return c.r, c
}

// call is one request being served.
type call struct {
	m      *mount
	op     string
	r      *access.Request
	t0     time.Time
	result string
}

// fail turns the call's result into the errno the container gets (see
// errno), and remembers it for the count.
func (c *call) fail(ctx context.Context, vpath string, err error) syscall.Errno {
	errno := c.m.errno(ctx, c.r, c.op, vpath, err)
	if errno != 0 {
		c.result = errName(errno)
	}
	return errno
}

func (c *call) end() {
	c.r.Done()
	<-c.m.shared.inflight
	c.m.count.Request(c.op, c.result, time.Since(c.t0))
}

// Kernel cache lifetimes. Attributes and names may be cached briefly;
// a missing name is never cached so a cgroup made on the host shows at
// once. Content is never cached (FOPEN_DIRECT_IO or passthrough).
const (
	entryTimeout    = time.Second
	attrTimeout     = time.Second
	negativeTimeout = time.Duration(0)
)

// Serve serves cfg's views on a new FUSE connection whose mount is not
// attached anywhere yet (no host path ever shows it until MoveTo), or on
// the connection cfg.Resume names.
func Serve(cfg Config) (*fuseconn.Conn, error) {
	c, _, err := serve(cfg)
	return c, err
}

// serve is Serve, with the mount's state.
func serve(cfg Config) (*fuseconn.Conn, *mount, error) {
	if len(cfg.Views) == 0 {
		return nil, nil, errors.New("nothing to serve")
	}
	st, err := cfg.Views[0].View.RootAttr()
	if err != nil {
		return nil, nil, err
	}
	shared := cfg.Shared
	if shared == nil {
		shared = NewShared(0, 0)
	}
	m := &mount{ident: cfg.Identifier, count: cfg.Metrics, log: cfg.Log, shared: shared, logs: newLogBudget()}
	var root gofs.InodeEmbedder
	rootIno := st.Ino
	if len(cfg.Views) == 1 && cfg.Views[0].Dir == "" {
		n := &node{m: m, t: &tree{view: cfg.Views[0].View, dir: cfg.Views[0].Dir}}
		n.t.root = &n.Inode
		root = n
	} else {
		root = &layoutRoot{m: m, views: cfg.Views, symlinks: cfg.Symlinks, attr: st}
		// Each view's inode numbers carry a base (translate.Config) and
		// never meet 1.
		rootIno = 1
	}
	// go-fuse takes the lifetimes by pointer: each mount its own.
	entry, attr, negative := entryTimeout, attrTimeout, negativeTimeout
	opts := &gofs.Options{
		MountOptions: fuse.MountOptions{
			// cgroup xattrs (systemd's trusted.delegate, ...) are not
			// carried yet: the kernel answers EOPNOTSUPP.
			DisableXAttrs: true,
			// READDIR, not READDIRPLUS: a listing would otherwise make
			// the kernel an inode of every entry (some 40 files a
			// cgroup), at every listing, where walkers (find, systemd,
			// lscgroup) look up the directories alone; what is looked
			// up stays cached for the entry timeout.
			DisableReadDirPlus: true,
			// O_TRUNC comes inside OPEN (which judges writes anyway)
			// instead of as a separate SETATTR of the size: runtimes
			// open every control file with it.
			ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
			Debug:             cfg.Debug,
			// go-fuse's own lines (a drained reader's EAGAIN) are debug.
			Logger: slog.NewLogLogger(logHandler(cfg.Log), slog.LevelDebug),
			// A request that panics is answered EIO (go-fuse recovers
			// it) and said on the host, with where.
			PanicHandler: m.panicked,
		},
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
		RootStableAttr:  &gofs.StableAttr{Mode: unix.S_IFDIR, Ino: rootIno},
		// The kernel's node ids are the inode numbers, so that a server
		// taking the connection over knows what they name (see revive).
		ExternalNodeID: true,
	}
	ccfg := fuseconn.Config{
		FS:      &bridge{RawFileSystem: gofs.NewNodeFS(root, opts), m: m},
		Options: &opts.MountOptions,
		Resume:  cfg.Resume,
		Log:     cfg.Log,
	}
	if cfg.Watcher != nil {
		events := make([]fuseconn.Events, len(cfg.Views))
		for i, va := range cfg.Views {
			events[i] = va.View
		}
		ccfg.Relay = &fuseconn.RelayConfig{Watcher: cfg.Watcher, Events: events, Owner: cfg.Owner, Watches: shared.watches}
	}
	c, err := fuseconn.Serve(ccfg)
	if err != nil {
		return nil, nil, err
	}
	m.relay.Store(c.Relay())
	for _, va := range cfg.Views {
		va.View.SetMountDev(c.Dev())
	}
	m.passthrough.Store(probePassthrough(c.Server(), cfg.Views[0].View))
	return c, m, nil
}

// bridge is go-fuse's node bridge as the connection serves it
// (fuseconn.FS).
type bridge struct {
	fuse.RawFileSystem
	m *mount
}

// Revived is the node the root's LookupNode found again (see revive).
func (b *bridge) Revived() uint64 { return b.m.revived.Swap(0) }

// OnUnmount is go-fuse's word that serving has ended (its readers done,
// its descriptor closed): a stop, an abort, or a drain for the next
// server, which opens its own files. What the kernel did not release is
// closed here.
func (b *bridge) OnUnmount() {
	b.RawFileSystem.OnUnmount()
	b.m.closeFiles()
}

func (b *bridge) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := b.RawFileSystem.Lookup(cancel, h, name, out)
	if uncached(&out.Attr) {
		// go-fuse gives a zero timeout its default: zero it here.
		out.EntryValid, out.EntryValidNsec, out.AttrValid, out.AttrValidNsec = 0, 0, 0, 0
	}
	return st
}

func (b *bridge) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := b.RawFileSystem.GetAttr(cancel, in, out)
	if uncached(&out.Attr) {
		out.AttrValid, out.AttrValidNsec = 0, 0
	}
	return st
}

// uncached tells whether the kernel must not keep attributes a: those of
// a file that shows spliceSize, which a splice read trims to what it
// read; the next open's lookup must show spliceSize again.
func uncached(a *fuse.Attr) bool {
	return a.Mode&unix.S_IFMT == unix.S_IFREG && a.Size == spliceSize
}

// logHandler is log's handler, or one that drops everything.
func logHandler(log *slog.Logger) slog.Handler {
	if log == nil {
		return slog.DiscardHandler
	}
	return log.Handler()
}

// Mount serves cfg's views at dir, in the caller's mount namespace.
func Mount(dir string, cfg Config) (*fuseconn.Conn, error) {
	c, err := Serve(cfg)
	if err != nil {
		return nil, err
	}
	if err := c.MoveTo(dir); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// probePassthrough asks the kernel for a backing file once: go-fuse
// quietly stops passthrough when that fails (not root, old kernel), and
// an open answered without FOPEN_DIRECT_IO and without passthrough would
// be served stale from the page cache.
func probePassthrough(server *fuse.Server, v *translate.View) bool {
	f, err := v.PassthroughProbe()
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
// an open the view lets the kernel read goes to passthrough when the
// kernel has it (the kernel lets DIRECT_IO override passthrough, so a
// writer sharing the inode's backing file still comes to Write).
// NOFLUSH: close(2) needs no round trip, nothing is buffered.
func (m *mount) openFlags(f *translate.File) uint32 {
	if _, ok := f.PassthroughFd(); ok && m.passthrough.Load() {
		return fuse.FOPEN_NOFLUSH
	}
	return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH
}
