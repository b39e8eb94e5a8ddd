package fs

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/host"
)

// relay raises inotify events on view files when the kernel changes the
// host files they show. FUSE raises none of its own for changes the
// server sees, but a write(2) through the mount raises IN_MODIFY on the
// FUSE inode for every watcher, in every mount namespace the mount is
// in. So for each events file the kernel has looked up (only those can
// be watched), the relay watches its host files, and on a change writes
// one byte through the mount to it; the mount's Open recognises the
// writer as this process's and swallows the write (relayHandle). No
// write of the relay is served by the goroutine that makes it.
//
// The relay holds the mount open (its root, to write through) only while
// the owner lives: once the owner exits it lets go, so that the mount
// and its connection end with the container's mount namespace.
type relay struct {
	w   *host.Watcher
	dev uint64 // the FUSE filesystem's device, to check what is written
	log logger

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
	// shared counts the watches against the container's budget (each
	// is a host inotify watch, charged to host root's
	// fs.inotify.max_user_watches, which a container's looked-up files
	// must not exhaust for everyone); warnedFull: the one line said
	// when it was full.
	shared     *Shared
	warnedFull bool
}

type logger interface {
	Warn(msg string, args ...any)
	Debug(msg string, args ...any)
}

func newRelay(w *host.Watcher, mnt *os.File, dev uint64, shared *Shared, log logger) (*relay, error) {
	fd, err := unix.FcntlInt(mnt.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	r := &relay{w: w, dev: dev, log: log, shared: shared, root: os.NewFile(uintptr(fd), "cgfs mount root"),
		watches: map[uint64]watch{}, pending: map[string]uint64{}, kick: make(chan struct{}, 1), gone: make(chan struct{})}
	go r.run()
	return r, nil
}

// watch relays the changes of the events file at mount path mpath
// (inode ino, vpath in view) until forget(ino).
func (r *relay) watch(view *translate.View, vpath, mpath string, ino uint64) {
	r.mu.Lock()
	_, known := r.watches[ino]
	gone := r.root == nil
	r.mu.Unlock()
	if known || gone {
		return
	}
	if !r.shared.takeWatch() {
		r.mu.Lock()
		warn := !r.warnedFull
		r.warnedFull = true
		r.mu.Unlock()
		if warn {
			_, max := r.shared.Watches()
			r.log.Warn("relaying no more events files: the container's mounts watch as many as it may", "watches", max, "rule", "relay-watches")
		}
		return
	}
	files, err := view.EventFiles(vpath)
	if err != nil || len(files) == 0 {
		r.shared.giveWatch()
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
		r.shared.giveWatch()
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
	view         *translate.View
	vpath, mpath string
}

// watched lists the events files relayed, for the next server (views
// is the mount's, by index).
func (r *relay) watched(views []ViewAt) []Watched {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Watched, 0, len(r.watches))
	for ino, w := range r.watches {
		for i, va := range views {
			if va.View == w.view {
				out = append(out, Watched{View: i, VPath: w.vpath, MPath: w.mpath, Ino: ino})
			}
		}
	}
	return out
}

// dupRoot is a copy of the mount's root the relay holds, nil if it let
// it go.
func (r *relay) dupRoot() (*os.File, error) {
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

// forget ends the watch of inode ino: the kernel forgot it.
func (r *relay) forget(ino uint64) {
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
func (r *relay) raise(mpath string, ino uint64) {
	r.mu.Lock()
	r.pending[mpath] = ino
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run writes the queued events until the relay lets go.
func (r *relay) run() {
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
func (r *relay) write(root *os.File, mpath string, ino uint64) error {
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
func (r *relay) letGo() {
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

// isRelayWrite tells whether the open in ctx is the relay's: a write-only
// open of an events file by a thread of this process. Those are the only
// writes the relay makes; nobody else's thread is one of ours, and
// cgroupfs refuses every other write to an events file anyway.
func isRelayWrite(ctx context.Context, name string, flags uint32) bool {
	if flags&unix.O_ACCMODE != unix.O_WRONLY || !translate.IsEventsFile(name) {
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

// relayHandle takes the relay's write and changes nothing. It holds the
// file open read-only, for its backing (see translate.File.BackingFd):
// an inode a reader has open with passthrough needs every open of it to
// say passthrough too, the relay's included.
type relayHandle struct{ f *translate.File }

// relayOpen is the relay's open of vpath, by this server's own thread
// (host root): not counted as the container's.
func (n *node) relayOpen(ctx context.Context, vpath string) *relayHandle {
	h := &relayHandle{}
	if fc, ok := fuse.FromContext(ctx); ok {
		r := n.m.ident.Request(int(fc.Pid), fc.Uid, fc.Gid)
		defer r.Done()
		if f, err := n.t.view.OpenRelay(r, vpath); err == nil {
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
		h.f.Close()
	}
	return 0
}
