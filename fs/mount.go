package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
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
	// their watchers through the mount (see relay), while Owner (a host
	// pid; 0 for none) lives, or until Stop without one.
	Watcher *host.Watcher
	Owner   int
	// Resume, when set, serves a connection an earlier server made and
	// handed over (or left behind), instead of a new one.
	Resume *Resume
	// Shared is the budget of the container the mount is for, shared
	// with its other mounts; nil gives the mount one of its own, with
	// the defaults.
	Shared *Shared
}

// mount is the state of one mount, shared by its nodes. Nothing in it is
// shared with other mounts.
type mount struct {
	views []ViewAt
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
	logs    logBudget
	relay   atomic.Pointer[relay] // nil: no events relayed
	revived revivedID             // see inherit.know
	panics  atomic.Int64          // requests that panicked (panicked)
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
var (
	entryTimeout    = time.Second
	attrTimeout     = time.Second
	negativeTimeout = time.Duration(0)
)

// Mounted is a cgfs filesystem being served: a FUSE connection whose
// mount is made detached (fsmount(2)), mounted nowhere, then moved where
// it belongs, in the server's mount namespace or a container's.
type Mounted struct {
	server *fuse.Server
	mount  *os.File // the detached mount, until moved or taken
	conn   uint32   // the connection's number, for aborting it
	path   string   // where MoveTo put it
	done   chan struct{}
	fsys   *mount
	dev    uint64

	// master is the connection's first descriptor, which keeps it (and
	// the mount) alive while the server reads a clone of it (number
	// clone, go-fuse's). See takeover.go.
	master *os.File
	clone  int
	init   []byte // the kernel's INIT, as it came
	gen    uint32 // this server's generation on the connection: 1 made it
	// served is closed when go-fuse stops serving; drained says that was
	// Drain, and the connection lives on.
	served  chan struct{}
	drained atomic.Bool
	watched []Watched // what the relay watched when it drained
	// rewatched is closed once the relay watches again what the earlier
	// server's did (Resume.Watched), which it does while serving.
	rewatched chan struct{}
}

// Serve serves cfg's views on a new FUSE filesystem whose mount is not
// attached anywhere yet: no host path ever shows it until MoveTo.
func Serve(cfg Config) (*Mounted, error) {
	if len(cfg.Views) == 0 {
		return nil, errors.New("nothing to serve")
	}
	st, err := cfg.Views[0].View.RootAttr()
	if err != nil {
		return nil, err
	}
	shared := cfg.Shared
	if shared == nil {
		shared = NewShared(0, 0)
	}
	m := &mount{views: cfg.Views, ident: cfg.Identifier, count: cfg.Metrics, log: cfg.Log, shared: shared}
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
		EntryTimeout:    &entryTimeout,
		AttrTimeout:     &attrTimeout,
		NegativeTimeout: &negativeTimeout,
		RootStableAttr:  &gofs.StableAttr{Mode: unix.S_IFDIR, Ino: rootIno},
		// The kernel's node ids are the inode numbers, so that a server
		// taking the connection over knows what they name (see inherit).
		ExternalNodeID: true,
	}
	served := &Mounted{done: make(chan struct{}), served: make(chan struct{}), fsys: m, gen: 1, rewatched: make(chan struct{})}
	var mnt *os.File // the detached mount, when this server made it
	if r := cfg.Resume; r == nil {
		dev, f, err := newFUSE()
		if err != nil {
			return nil, err
		}
		mnt, served.master, served.mount = f, os.NewFile(uintptr(dev), "fuse connection"), f
	} else {
		fd, err := unix.FcntlInt(r.Master.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		served.master = os.NewFile(uintptr(fd), "fuse connection")
		served.conn, served.dev, served.gen, served.init = r.Conn, r.Dev, r.Gen+1, r.Init
	}
	raw := &inherit{RawFileSystem: gofs.NewNodeFS(root, opts), gen: uint64(served.gen), resumed: cfg.Resume != nil, m: m, files: map[uint64]uint64{}, checked: map[uint64]uint64{}}
	if cfg.Resume == nil {
		served.server, served.clone, err = newServer(raw, &opts.MountOptions, served.master)
	} else {
		served.server, served.clone, err = newResumedServer(raw, &opts.MountOptions, served.master, cfg.Resume.Init)
	}
	if err != nil {
		served.master.Close()
		if mnt != nil {
			mnt.Close()
		}
		return nil, err
	}
	server := served.server
	if mnt != nil { // a stat waits for INIT: now it is answered
		var mst unix.Stat_t
		if err := unix.Fstat(int(mnt.Fd()), &mst); err != nil {
			// go-fuse serves already: closing the connection's only
			// mount ends the connection (the kernel aborts it when the
			// superblock goes), and with it go-fuse's serving, which
			// is over when Serve returns.
			mnt.Close()
			server.Wait()
			served.master.Close()
			return nil, err
		}
		served.conn, served.dev = unix.Minor(mst.Dev), mst.Dev
		served.init = initBytes(server.KernelSettings())
	}
	for _, va := range cfg.Views {
		va.View.SetMountDev(served.dev)
	}
	go func() {
		server.Wait()
		close(served.served)
		if served.drained.Load() {
			return // the connection lives on in the next server
		}
		if r := m.relay.Load(); r != nil {
			r.letGo()
		}
		served.master.Close()
		close(served.done)
	}()
	relayRoot := mnt
	if cfg.Resume != nil {
		relayRoot = cfg.Resume.Root
	}
	if cfg.Watcher != nil && relayRoot != nil {
		if err := served.startRelay(cfg.Watcher, relayRoot, served.dev, cfg.Owner); err != nil {
			served.Stop()
			return nil, fmt.Errorf("relaying events: %w", err)
		}
		if rl := m.relay.Load(); rl != nil && cfg.Resume != nil {
			// Watching each file again opens its host files: hundreds of
			// them take milliseconds, which requests need not wait for.
			go func() {
				defer close(served.rewatched)
				for _, w := range cfg.Resume.Watched {
					if w.View >= 0 && w.View < len(cfg.Views) {
						rl.watch(cfg.Views[w.View].View, w.VPath, w.MPath, w.Ino)
					}
				}
			}()
		} else {
			close(served.rewatched)
		}
	} else {
		close(served.rewatched)
	}
	m.passthrough.Store(probePassthrough(server, cfg.Views[0].View))
	return served, nil
}

// startRelay starts relaying events through the mount mnt (device dev),
// until owner exits (a pidfd says so) or the mount stops.
func (m *Mounted) startRelay(w *host.Watcher, mnt *os.File, dev uint64, owner int) error {
	var pidfd *os.File
	if owner != 0 {
		fd, err := unix.PidfdOpen(owner, unix.PIDFD_NONBLOCK)
		if err != nil {
			return fmt.Errorf("pidfd_open %d: %w", owner, err)
		}
		pidfd = os.NewFile(uintptr(fd), "owner")
	}
	r, err := newRelay(w, mnt, dev, m.fsys.shared, m.fsys.log)
	if err != nil {
		if pidfd != nil {
			pidfd.Close()
		}
		return err
	}
	m.fsys.relay.Store(r)
	if pidfd != nil {
		go func() {
			// Until the owner ends, or the relay lets go first (the
			// view dropped while its owner lives), which closes it.
			proc.WaitExit(pidfd)
			r.letGo()
		}()
		go func() {
			<-r.gone
			pidfd.Close()
		}()
	}
	return nil
}

// Relayed is how many events files the mount relays changes of, and how
// many events it raised.
func (m *Mounted) Relayed() (watched int, raised uint64) {
	r := m.fsys.relay.Load()
	if r == nil {
		return 0, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.watches), r.raised
}

// logHandler is log's handler, or one that drops everything.
func logHandler(log *slog.Logger) slog.Handler {
	if log == nil {
		return slog.DiscardHandler
	}
	return log.Handler()
}

// newServer serves raw with go-fuse on a clone of the new connection
// master: it takes the kernel's INIT from there.
func newServer(raw fuse.RawFileSystem, opts *fuse.MountOptions, master *os.File) (*fuse.Server, int, error) {
	clone, err := cloneFUSE(int(master.Fd()))
	if err != nil {
		return nil, -1, err
	}
	// go-fuse serves a /dev/fuse descriptor that is mounted already,
	// and owns it from here on: it closes it when serving ends or fails.
	server, err := fuse.NewServer(raw, fmt.Sprintf("/dev/fd/%d", clone), opts)
	if err != nil {
		return nil, -1, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, -1, err
	}
	return server, clone, nil
}

// newFUSE opens /dev/fuse and makes a FUSE filesystem on it with the new
// mount API: its mount is detached (fsmount(2)). The /dev/fuse
// descriptor is a bare number: go-fuse wraps and closes it.
func newFUSE() (dev int, mnt *os.File, err error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("/dev/fuse: %w", err)
	}
	fsfd, err := unix.Fsopen("fuse", unix.FSOPEN_CLOEXEC)
	if err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("fsopen fuse: %w", err)
	}
	defer unix.Close(fsfd)
	for _, kv := range [][2]string{{"fd", fmt.Sprint(fd)}, {"rootmode", "40000"}, {"user_id", "0"},
		{"group_id", "0"}, {"source", "cgfs"}, {"subtype", "cgfs"}} {
		if err := unix.FsconfigSetString(fsfd, kv[0], kv[1]); err != nil {
			unix.Close(fd)
			return -1, nil, fmt.Errorf("fsconfig %s: %w", kv[0], err)
		}
	}
	// Callers whose uid is not the server's (a container's root mapped
	// to 100000) must reach it.
	if err := unix.FsconfigSetFlag(fsfd, "allow_other"); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("fsconfig allow_other: %w", err)
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("fsconfig create: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("fsmount: %w", err)
	}
	return fd, os.NewFile(uintptr(mfd), "cgfs mount"), nil
}

// MoveTo attaches the mount at path in the caller's mount namespace.
func (m *Mounted) MoveTo(path string) error {
	if m.mount == nil {
		return errors.New("the mount was moved or taken already")
	}
	if err := unix.MoveMount(int(m.mount.Fd()), "", unix.AT_FDCWD, path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", path, err)
	}
	m.mount.Close()
	m.mount, m.path = nil, path
	return nil
}

// Take hands the detached mount over, to be moved into another mount
// namespace (move_mount(2) there); the caller closes it. Once every
// mount of it is gone the connection ends.
func (m *Mounted) Take() *os.File {
	f := m.mount
	m.mount = nil
	return f
}

// Dev is the FUSE file system's device number, as stat(2) shows it for
// its files.
func (m *Mounted) Dev() uint64 { return m.dev }

// Done is closed when the connection ends: its last mount is gone, or it
// was stopped.
func (m *Mounted) Done() <-chan struct{} { return m.done }

// Stop ends serving: the mount MoveTo made is taken away (lazily, if
// busy), and the connection is aborted, so copies of it that live on in
// other mount namespaces see ENOTCONN at once. It waits for the server.
func (m *Mounted) Stop() {
	if m.drained.Load() {
		return // the next server serves it
	}
	if r := m.fsys.relay.Load(); r != nil {
		r.letGo()
	}
	if m.mount != nil {
		m.mount.Close()
		m.mount = nil
	}
	if m.path != "" {
		if err := unix.Unmount(m.path, 0); err != nil {
			_ = unix.Unmount(m.path, unix.MNT_DETACH)
		}
		m.path = ""
	}
	select {
	case <-m.done:
		return
	case <-time.After(100 * time.Millisecond):
	}
	_ = abort(m.conn)
	<-m.done
}

// fusectl is a private mount of the FUSE control filesystem, made once
// (fsmount(2), mounted nowhere), through which connections are aborted.
var fusectl struct {
	once sync.Once
	fd   int
	err  error
}

// abort aborts FUSE connection conn, as writing its fusectl abort file
// does.
func abort(conn uint32) error {
	fusectl.once.Do(func() {
		fsfd, err := unix.Fsopen("fusectl", unix.FSOPEN_CLOEXEC)
		if err != nil {
			fusectl.err = err
			return
		}
		defer unix.Close(fsfd)
		if fusectl.err = unix.FsconfigCreate(fsfd); fusectl.err != nil {
			return
		}
		fusectl.fd, fusectl.err = unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	})
	if fusectl.err != nil {
		return fmt.Errorf("fusectl: %w", fusectl.err)
	}
	fd, err := unix.Openat(fusectl.fd, fmt.Sprintf("%d/abort", conn), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte("1"))
	return err
}

// Mount serves cfg's views at dir, in the caller's mount namespace.
func Mount(dir string, cfg Config) (*Mounted, error) {
	m, err := Serve(cfg)
	if err != nil {
		return nil, err
	}
	if err := m.MoveTo(dir); err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
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
