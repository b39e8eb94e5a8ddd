package fs

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/translate"
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
	// inflight bounds the requests of this mount served at once: the
	// server's work for one container is bounded, whatever it sends.
	inflight chan struct{}
	logs     logBudget
}

// MaxInFlight is how many requests of one mount are served at once; more
// wait for a slot (the kernel keeps them queued).
const MaxInFlight = 64

// start begins serving the request in ctx: it waits for one of the
// mount's in-flight slots and starts the identification of the caller.
// end releases both.
func (m *mount) start(ctx context.Context) (r *access.Request, end func()) {
	m.inflight <- struct{}{}
	if fc, ok := fuse.FromContext(ctx); ok {
		r = m.ident.Request(int(fc.Pid), fc.Uid, fc.Gid)
	} else {
		r = m.ident.Request(0, 0, 0) // identifies as nobody: a pin of tid 0 fails
	}
	return r, func() {
		r.Done()
		<-m.inflight
	}
}

// Kernel cache lifetimes. Attributes and names may be cached briefly;
// a missing name is never cached so a cgroup made on the host shows at
// once. Content is never cached (FOPEN_DIRECT_IO or passthrough).
var (
	entryTimeout    = time.Second
	attrTimeout     = time.Second
	negativeTimeout = time.Duration(0)
)

// Mount serves cfg's views at dir. It returns once the mount is live;
// the caller waits on the server and unmounts it.
func Mount(dir string, cfg Config) (*fuse.Server, error) {
	if len(cfg.Views) == 0 {
		return nil, errors.New("nothing to serve")
	}
	st, err := cfg.Views[0].View.RootAttr()
	if err != nil {
		return nil, err
	}
	m := &mount{ident: cfg.Identifier, count: cfg.Metrics, log: cfg.Log, inflight: make(chan struct{}, MaxInFlight)}
	var root gofs.InodeEmbedder
	rootIno := st.Ino
	if len(cfg.Views) == 1 && cfg.Views[0].Dir == "" {
		n := &node{m: m, t: &tree{view: cfg.Views[0].View}}
		n.t.root = &n.Inode
		root = n
	} else {
		root = &layoutRoot{m: m, views: cfg.Views, symlinks: cfg.Symlinks, attr: st}
		// Each view's inode numbers carry a base (translate.Config) and
		// never meet 1.
		rootIno = 1
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
			// O_TRUNC comes inside OPEN (which judges writes anyway)
			// instead of as a separate SETATTR of the size: runtimes
			// open every control file with it.
			ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
			Debug:             cfg.Debug,
		},
		EntryTimeout:    &entryTimeout,
		AttrTimeout:     &attrTimeout,
		NegativeTimeout: &negativeTimeout,
		RootStableAttr:  &gofs.StableAttr{Mode: unix.S_IFDIR, Ino: rootIno},
	}
	server, err := gofs.Mount(dir, root, opts)
	if err != nil {
		return nil, err
	}
	m.passthrough.Store(probePassthrough(server, cfg.Views[0].View))
	return server, nil
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
