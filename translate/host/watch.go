package host

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Watcher tells of changes the kernel makes to host files (IN_MODIFY:
// kernfs raises it on cgroup.events, memory.events, pids.events and the
// like when their content changes). One Watcher serves a whole process:
// an inotify instance per view would soon meet
// fs.inotify.max_user_instances (128 by default). Watching one host file
// twice shares its kernel watch. A Watcher is safe for concurrent use.
type Watcher struct {
	f   *os.File
	max int // watches at most; the rest of root's budget is the host's

	mu   sync.Mutex // a leaf in the lock order
	subs map[int32]map[uint64]func()
	next uint64
}

// NewWatcher starts a watcher.
func NewWatcher() (*Watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	// Half of host root's inotify watch budget at most: containers'
	// files must not leave the host's own watchers none.
	max := 8192
	if b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_watches"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 1 {
			max = n / 2
		}
	}
	w := &Watcher{f: os.NewFile(uintptr(fd), "inotify"), max: max, subs: map[int32]map[uint64]func(){}}
	go w.read()
	return w, nil
}

// Close stops the watcher; its watches end.
func (w *Watcher) Close() error { return w.f.Close() }

// Watches is how many host files are watched.
func (w *Watcher) Watches() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.subs)
}

// Watch calls fn each time the kernel modifies the host file f (opened
// by this package, O_PATH will do), until cancel is called or the file
// goes (its cgroup is removed). fn runs on the watcher's goroutine and
// must not block.
func (w *Watcher) Watch(f *os.File, fn func()) (cancel func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.subs) >= w.max {
		return nil, &Error{Op: "inotify_add_watch", Path: f.Name(), Data: "the process watches half of root's budget", Err: unix.ENOSPC}
	}
	// The magic link names the open file itself, wherever it is.
	wd, err := unix.InotifyAddWatch(int(w.f.Fd()), fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.IN_MODIFY)
	if err != nil {
		return nil, &Error{Op: "inotify_add_watch", Path: f.Name(), Err: err}
	}
	id := w.next
	w.next++
	wdk := int32(wd)
	if w.subs[wdk] == nil {
		w.subs[wdk] = map[uint64]func(){}
	}
	w.subs[wdk][id] = fn
	return func() { w.cancel(wdk, id) }, nil
}

func (w *Watcher) cancel(wd int32, id uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.subs[wd]
	if _, ok := s[id]; !ok {
		return
	}
	delete(s, id)
	if len(s) == 0 {
		delete(w.subs, wd)
		_, _ = unix.InotifyRmWatch(int(w.f.Fd()), uint32(wd))
	}
}

// read dispatches events until the watcher is closed.
func (w *Watcher) read() {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			continue // EINTR and the like; the netpoller waits again
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			w.mu.Lock()
			var fns []func()
			for _, fn := range w.subs[ev.Wd] {
				fns = append(fns, fn)
			}
			if ev.Mask&unix.IN_IGNORED != 0 {
				delete(w.subs, ev.Wd) // the file is gone, and the kernel's watch with it
			}
			w.mu.Unlock()
			if ev.Mask&unix.IN_MODIFY != 0 {
				for _, fn := range fns {
					fn()
				}
			}
		}
	}
}
