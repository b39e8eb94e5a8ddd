package fuseconn

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
)

// FS is what a connection serves: go-fuse's node bridge
// (gofs.NewNodeFS), built with ExternalNodeID so that the kernel's node
// ids are inode numbers, whose root finds a node again by its id
// (gofs.NodeLookupNoder) for a server that took the connection over.
type FS interface {
	fuse.RawFileSystem
	// Revived is the node id the root's LookupNode last found again, 0
	// if none since the last call; the call clears it (see inherit).
	Revived() uint64
}

// Config is how one connection is served.
type Config struct {
	FS FS
	// Options are go-fuse's. The connection is served as a /dev/fuse
	// descriptor (go-fuse's /dev/fd/N mountpoint), so those about
	// mounting have no effect.
	Options *fuse.MountOptions
	// Resume, when set, serves a connection an earlier server made and
	// handed over (or left behind), instead of a new one.
	Resume *Resume
	// Relay, when set, relays the kernel's changes of events files to
	// their watchers through the mount (see Relay).
	Relay *RelayConfig
	// Log gets the relay's lines; nil drops them.
	Log *slog.Logger
}

// Conn is a FUSE connection being served: one whose mount is made
// detached (fsmount(2)), mounted nowhere, then moved where it belongs,
// in the server's mount namespace or a container's; or one an earlier
// server made (Resume).
type Conn struct {
	server *fuse.Server
	mount  *os.File // the detached mount, until moved or taken
	conn   uint32   // the connection's number, for aborting it
	path   string   // where MoveTo put it
	done   chan struct{}
	dev    uint64
	log    *slog.Logger
	relay  atomic.Pointer[Relay] // nil: no events relayed

	// master is the connection's first descriptor, which keeps it (and
	// the mount) alive while the server reads a clone of it (number
	// clone, go-fuse's). See handover.go.
	master *os.File
	clone  int
	// flags is a copy of go-fuse's descriptor (the same open file, so
	// its status flags are the reads'), which this Conn owns: Drain sets
	// them through it, where go-fuse's own number may be closed, and
	// taken by another file, at any moment the connection ends.
	flags *os.File
	init  []byte // the kernel's INIT, as it came
	gen   uint32 // this server's generation on the connection: 1 made it
	// served is closed when go-fuse stops serving; drained says that was
	// Drain, and the connection lives on.
	served chan struct{}
	// serving is closed when go-fuse's Serve returns (runServe).
	serving <-chan struct{}
	drained atomic.Bool
	watched []Watched // what the relay watched when it drained
	// rewatched is closed once the relay watches again what the earlier
	// server's did (Resume.Watched), which it does while serving.
	rewatched chan struct{}
}

// Serve serves cfg.FS on a new FUSE connection whose mount is not
// attached anywhere yet (no host path ever shows it until MoveTo), or on
// the connection cfg.Resume names.
func Serve(cfg Config) (*Conn, error) {
	c := &Conn{done: make(chan struct{}), served: make(chan struct{}), gen: 1, rewatched: make(chan struct{}), log: cfg.Log}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	var mnt *os.File // the detached mount, when this server made it
	if r := cfg.Resume; r == nil {
		dev, f, err := newFUSE()
		if err != nil {
			return nil, err
		}
		mnt, c.master, c.mount = f, os.NewFile(uintptr(dev), "fuse connection"), f
	} else {
		fd, err := unix.FcntlInt(r.Master.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		c.master = os.NewFile(uintptr(fd), "fuse connection")
		c.conn, c.dev, c.gen, c.init = r.Conn, r.Dev, r.Gen+1, r.Init
	}
	raw := &inherit{next: cfg.FS, gen: uint64(c.gen), resumed: cfg.Resume != nil, files: map[uint64]uint64{}, checked: map[uint64]uint64{}}
	var err error
	if cfg.Resume == nil {
		c.server, c.serving, c.clone, c.flags, err = newServer(raw, cfg.Options, c.master)
	} else {
		c.server, c.serving, c.clone, c.flags, err = newResumedServer(raw, cfg.Options, c.master, cfg.Resume.Init)
	}
	if err != nil {
		c.master.Close()
		if mnt != nil {
			mnt.Close()
		}
		return nil, err
	}
	server, serving := c.server, c.serving
	if mnt != nil { // a stat waits for INIT: now it is answered
		var mst unix.Stat_t
		if err := unix.Fstat(int(mnt.Fd()), &mst); err != nil {
			// go-fuse serves already: closing the connection's only
			// mount ends the connection (the kernel aborts it when the
			// superblock goes), and with it go-fuse's serving, which
			// is over when Serve returns.
			mnt.Close()
			<-serving
			c.flags.Close()
			c.master.Close()
			return nil, err
		}
		c.conn, c.dev = unix.Minor(mst.Dev), mst.Dev
		c.init = initBytes(server.KernelSettings())
	}
	go func() {
		<-serving
		close(c.served)
		if c.drained.Load() {
			return // the connection lives on in the next server (Drain closes what is left)
		}
		c.flags.Close()
		if r := c.relay.Load(); r != nil {
			r.letGo()
		}
		c.master.Close()
		close(c.done)
	}()
	relayRoot := mnt
	if cfg.Resume != nil {
		relayRoot = cfg.Resume.Root
	}
	if cfg.Relay != nil && relayRoot != nil {
		if err := c.startRelay(cfg.Relay, relayRoot); err != nil {
			c.Stop()
			return nil, fmt.Errorf("relaying events: %w", err)
		}
		if rl := c.relay.Load(); rl != nil && cfg.Resume != nil {
			// Watching each file again opens its host files: hundreds of
			// them take milliseconds, which requests need not wait for.
			go func() {
				defer close(c.rewatched)
				for _, w := range cfg.Resume.Watched {
					rl.Watch(w.View, w.VPath, w.MPath, w.Ino)
				}
			}()
		} else {
			close(c.rewatched)
		}
	} else {
		close(c.rewatched)
	}
	return c, nil
}

// startRelay starts relaying events through the mount mnt, until the
// owner exits (a pidfd says so) or the connection stops.
func (c *Conn) startRelay(cfg *RelayConfig, mnt *os.File) error {
	var pidfd *os.File
	if cfg.Owner != 0 {
		fd, err := unix.PidfdOpen(cfg.Owner, unix.PIDFD_NONBLOCK)
		if err != nil {
			return fmt.Errorf("pidfd_open %d: %w", cfg.Owner, err)
		}
		pidfd = os.NewFile(uintptr(fd), "owner")
	}
	r, err := newRelay(cfg, mnt, c.dev, c.log)
	if err != nil {
		if pidfd != nil {
			pidfd.Close()
		}
		return err
	}
	c.relay.Store(r)
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

// Relay is the connection's relay of events, nil if it has none.
func (c *Conn) Relay() *Relay { return c.relay.Load() }

// Server is the go-fuse server of the connection.
func (c *Conn) Server() *fuse.Server { return c.server }

// Relayed is how many events files the connection relays changes of,
// and how many events it raised.
func (c *Conn) Relayed() (watched int, raised uint64) {
	r := c.relay.Load()
	if r == nil {
		return 0, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.watches), r.raised
}

// newServer serves raw with go-fuse on a clone of the new connection
// master: it takes the kernel's INIT from there.
func newServer(raw fuse.RawFileSystem, opts *fuse.MountOptions, master *os.File) (*fuse.Server, <-chan struct{}, int, *os.File, error) {
	clone, err := cloneFUSE(int(master.Fd()))
	if err != nil {
		return nil, nil, -1, nil, err
	}
	flags, err := dupFile(clone, "fuse connection (its reads' flags)")
	if err != nil {
		unix.Close(clone)
		return nil, nil, -1, nil, err
	}
	// go-fuse serves a /dev/fuse descriptor that is mounted already,
	// and owns it from here on: it closes it when serving ends or fails.
	server, err := fuse.NewServer(raw, fmt.Sprintf("/dev/fd/%d", clone), opts)
	if err != nil {
		flags.Close()
		return nil, nil, -1, nil, err
	}
	serving := runServe(server)
	if err := server.WaitMount(); err != nil {
		flags.Close()
		return nil, nil, -1, nil, err
	}
	return server, serving, clone, flags, nil
}

// dupFile is a copy of descriptor fd (the same open file), as a file.
func dupFile(fd int, name string) (*os.File, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(d), name), nil
}

// runServe runs go-fuse's Serve; the channel it returns is closed when Serve
// has returned, which is after go-fuse closed its descriptor of the
// connection. Server.Wait is not that: it returns when the readers end,
// before Serve closes the descriptor, so a connection waited for that
// way still had it for a moment, and a request the kernel queued then
// was aborted (ECONNABORTED) when it went, instead of refused (ENOTCONN):
// TestDrainOfAnIdleServer, one run in twelve.
func runServe(server *fuse.Server) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		server.Serve()
	}()
	return done
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
func (c *Conn) MoveTo(path string) error {
	if c.mount == nil {
		return errors.New("the mount was moved or taken already")
	}
	if err := unix.MoveMount(int(c.mount.Fd()), "", unix.AT_FDCWD, path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", path, err)
	}
	c.mount.Close()
	c.mount, c.path = nil, path
	return nil
}

// Take hands the detached mount over, to be moved into another mount
// namespace (move_mount(2) there); the caller closes it. Once every
// mount of it is gone the connection ends.
func (c *Conn) Take() *os.File {
	f := c.mount
	c.mount = nil
	return f
}

// Dev is the FUSE file system's device number, as stat(2) shows it for
// its files.
func (c *Conn) Dev() uint64 { return c.dev }

// Done is closed when the connection ends: its last mount is gone, or it
// was stopped.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Stop ends serving: the mount MoveTo made is taken away (lazily, if
// busy), and the connection is aborted, so copies of it that live on in
// other mount namespaces see ENOTCONN at once. It waits for the server.
func (c *Conn) Stop() {
	if c.drained.Load() {
		return // the next server serves it
	}
	if r := c.relay.Load(); r != nil {
		r.letGo()
	}
	if c.mount != nil {
		c.mount.Close()
		c.mount = nil
	}
	if c.path != "" {
		if err := unix.Unmount(c.path, 0); err != nil {
			_ = unix.Unmount(c.path, unix.MNT_DETACH)
		}
		c.path = ""
	}
	select {
	case <-c.done:
		return
	case <-time.After(100 * time.Millisecond):
	}
	_ = abort(c.conn)
	<-c.done
}

// abort aborts FUSE connection conn, as writing its abort file in the
// FUSE control filesystem does, through a private mount of it
// (fsmount(2), mounted nowhere) made for the purpose: a connection is
// aborted only when its server stopped and it outlived its mounts, which
// is rare, and the process keeps nothing open for it meanwhile.
func abort(conn uint32) error {
	fsfd, err := unix.Fsopen("fusectl", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fusectl: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("fusectl: %w", err)
	}
	ctl, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fusectl: %w", err)
	}
	defer unix.Close(ctl)
	fd, err := unix.Openat(ctl, fmt.Sprintf("%d/abort", conn), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte("1"))
	return err
}
