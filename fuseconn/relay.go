package fuseconn

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Relay raises inotify events on a mount's events files when the kernel
// changes the host files they show. FUSE raises none of its own for
// changes the server sees, but a write(2) through the mount raises
// IN_MODIFY on the FUSE inode for every watcher, in every mount
// namespace the mount is in. So for each events file the kernel has
// looked up (only those can be watched; the nodes say which, Watch), the
// relay watches its host files, and on a change writes one byte through
// the mount to it; the nodes recognise the writer as this process's and
// swallow the write (IsRelayWrite). No write of the relay is served by
// the goroutine that makes it.
//
// The relay holds the mount open (its root, to write through) only while
// the owner lives: once the owner exits it lets go, so that the mount
// and its connection end with the container's mount namespace.
type Relay struct {
	w      Watcher
	events []Events // by view index (Watched.View)
	dev    uint64   // the FUSE filesystem's device, to check what is written
	log    *slog.Logger

	// rootMu is held (read) while a write uses root, and (write) to let
	// it go. Taken before mu.
	rootMu  sync.RWMutex
	mu      sync.Mutex // a leaf in the lock order
	root    *os.File   // the mount's root; nil once let go
	watches map[uint64]watch
	pending map[string]uint64 // mount paths to raise an event on, and their inodes
	kick    chan struct{}
	gone    chan struct{} // closed once the root is let go
	raised  uint64
	// budget counts the watches against the container's (each is a host
	// inotify watch, charged to host root's fs.inotify.max_user_watches,
	// which a container's looked-up files must not exhaust for
	// everyone); warnedFull: the one line said when it was full.
	budget     *Watches
	warnedFull bool
}

// Watcher watches host files: fn runs (on the watcher's goroutine, which
// it must not block) whenever the kernel changes f, until cancel.
type Watcher interface {
	Watch(f *os.File, fn func()) (cancel func(), err error)
}

// Events names the host files behind an events file of a view (by its
// path in the view), which the caller closes.
type Events interface {
	EventFiles(vpath string) ([]*os.File, error)
}

// RelayConfig is what a connection relays events with.
type RelayConfig struct {
	Watcher Watcher
	// Events are the mount's views, by index (Watched.View).
	Events []Events
	// Owner is a host pid: the relay lets the mount go when it exits (0:
	// only when the connection stops).
	Owner int
	// Watches is the container's budget of relayed events files.
	Watches *Watches
}

// Watches bounds the events files relayed for one container, over all
// its connections.
type Watches struct {
	n   atomic.Int64
	max int64
}

// NewWatches is a budget of max relayed events files.
func NewWatches(max int) *Watches { return &Watches{max: int64(max)} }

// take takes one relayed events file from the budget; false at the
// bound.
func (b *Watches) take() bool {
	if b.n.Add(1) > b.max {
		b.n.Add(-1)
		return false
	}
	return true
}

func (b *Watches) give() { b.n.Add(-1) }

// Held is how many events files are relayed, and the bound.
func (b *Watches) Held() (n, max int64) { return b.n.Load(), b.max }

func newRelay(cfg *RelayConfig, mnt *os.File, dev uint64, log *slog.Logger) (*Relay, error) {
	fd, err := unix.FcntlInt(mnt.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	r := &Relay{w: cfg.Watcher, events: cfg.Events, dev: dev, log: log, budget: cfg.Watches,
		root:    os.NewFile(uintptr(fd), "cgfs mount root"),
		watches: map[uint64]watch{}, pending: map[string]uint64{}, kick: make(chan struct{}, 1), gone: make(chan struct{})}
	go r.run()
	return r, nil
}

// Watch relays the changes of the events file at mount path mpath
// (inode ino, vpath in the view of index view) until Forget(ino).
func (r *Relay) Watch(view int, vpath, mpath string, ino uint64) {
	if view < 0 || view >= len(r.events) {
		return
	}
	r.mu.Lock()
	_, known := r.watches[ino]
	gone := r.root == nil
	r.mu.Unlock()
	if known || gone {
		return
	}
	if !r.budget.take() {
		r.mu.Lock()
		warn := !r.warnedFull
		r.warnedFull = true
		r.mu.Unlock()
		if warn {
			_, max := r.budget.Held()
			r.log.Warn("relaying no more events files: the container's mounts watch as many as it may", "watches", max, "rule", "relay-watches")
		}
		return
	}
	files, err := r.events[view].EventFiles(vpath)
	if err != nil || len(files) == 0 {
		r.budget.give()
		r.log.Debug("no host files to relay", "path", "/"+mpath, "err", err)
		return
	}
	var cancels []func()
	for _, f := range files {
		if cancel, err := r.w.Watch(f, func() { r.raise(mpath, ino) }); err == nil {
			cancels = append(cancels, cancel)
		} else {
			r.log.Debug("cannot relay changes of an events file", "path", "/"+mpath, "err", err)
		}
		f.Close()
	}
	stop := func() {
		for _, c := range cancels {
			c()
		}
		r.budget.give()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, known := r.watches[ino]; known || r.root == nil {
		stop()
		return
	}
	r.watches[ino] = watch{stop: stop, view: view, vpath: vpath, mpath: mpath}
}

// watch is one events file relayed: how to stop, and what it is.
type watch struct {
	stop         func()
	view         int
	vpath, mpath string
}

// watched lists the events files relayed, for the next server.
func (r *Relay) watched() []Watched {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Watched, 0, len(r.watches))
	for ino, w := range r.watches {
		out = append(out, Watched{View: w.view, VPath: w.vpath, MPath: w.mpath, Ino: ino})
	}
	return out
}

// dupRoot is a copy of the mount's root the relay holds, nil if it let
// it go.
func (r *Relay) dupRoot() (*os.File, error) {
	r.rootMu.RLock()
	defer r.rootMu.RUnlock()
	if r.root == nil {
		return nil, nil
	}
	fd, err := unix.FcntlInt(r.root.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "cgfs mount root"), nil
}

// Forget ends the watch of inode ino: the kernel forgot it.
func (r *Relay) Forget(ino uint64) {
	r.mu.Lock()
	w, ok := r.watches[ino]
	delete(r.watches, ino)
	r.mu.Unlock()
	if ok {
		w.stop()
	}
}

// raise queues an event on mpath (from the watcher's goroutine: no
// blocking). Changes that come faster than they are relayed merge.
func (r *Relay) raise(mpath string, ino uint64) {
	r.mu.Lock()
	r.pending[mpath] = ino
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run writes the queued events until the relay lets go.
func (r *Relay) run() {
	for range r.kick {
		r.rootMu.RLock()
		r.mu.Lock()
		root, batch := r.root, r.pending
		r.pending = map[string]uint64{}
		r.mu.Unlock()
		if root == nil {
			r.rootMu.RUnlock()
			return
		}
		for mpath, ino := range batch {
			if err := r.write(root, mpath, ino); err != nil {
				r.log.Debug("relaying an event", "path", "/"+mpath, "err", err)
			}
		}
		r.rootMu.RUnlock()
	}
}

// write writes one byte through the mount to mpath, if it is still the
// view file of inode ino: the container may have mounted something else
// over a part of the tree, and nothing but the view is ever written.
func (r *Relay) write(root *os.File, mpath string, ino uint64) error {
	fd, err := unix.Openat2(int(root.Fd()), mpath, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Dev != r.dev || st.Ino != ino {
		return fmt.Errorf("not the view's file (dev %d ino %d)", st.Dev, st.Ino)
	}
	wfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(wfd)
	_, err = unix.Write(wfd, []byte{'\n'})
	if err == nil {
		r.mu.Lock()
		r.raised++
		r.mu.Unlock()
	}
	return err
}

// letGo drops the relay's hold on the mount and its watches.
func (r *Relay) letGo() {
	r.rootMu.Lock()
	defer r.rootMu.Unlock()
	r.mu.Lock()
	root := r.root
	r.root = nil
	watches := r.watches
	r.watches = map[uint64]watch{}
	r.mu.Unlock()
	if root == nil {
		return
	}
	close(r.gone)
	for _, w := range watches {
		w.stop()
	}
	root.Close()
	select {
	case r.kick <- struct{}{}: // run sees root nil and ends
	default:
	}
}

// IsRelayWrite tells whether the open in ctx (with open flags flags) may
// be the relay's: a write-only open by a thread of this process. Those
// are the only writes the relay makes, and only to events files; nobody
// else's thread is one of ours.
func IsRelayWrite(ctx context.Context, flags uint32) bool {
	if flags&unix.O_ACCMODE != unix.O_WRONLY {
		return false
	}
	fc, ok := fuse.FromContext(ctx)
	if !ok {
		return false
	}
	// tgkill with signal 0 checks that the thread belongs to this
	// process, in one system call.
	return unix.Tgkill(os.Getpid(), int(fc.Pid), 0) == nil
}
