//go:build linux

package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/loglimit"
)

// Magic tells the agent which files are views: for a file with device dev
// and inode ino (as stat(2) reports them on the host), the statfs f_type
// to report, and whether it is a view file at all.
type Magic func(dev, ino uint64) (fsType int64, ok bool)

// Config is what an Agent answers with.
type Config struct {
	Magic   Magic   // nil: no file is a view
	Mounter Mounter // nil: every mount(2) continues to the kernel
	Log     *slog.Logger
}

// Stats counts notifications by outcome.
type Stats struct {
	Answered  uint64 // answered by the agent: a result, or an errno of its own
	Continued uint64 // continued: the kernel ran the syscall
	Failed    uint64 // not answered: the caller was gone, or the response could not be sent
}

// Handled is how many notifications were handled, whatever the outcome.
func (s Stats) Handled() uint64 { return s.Answered + s.Continued + s.Failed }

// Agent serves one listener.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	l    *listener
	wake int // eventfd that Close writes to stop the receiver

	closing    atomic.Bool // Close was called: errors of a closed listener are expected
	draining   atomic.Bool // Drain was called: the listener stays open until every answer is sent
	mu         sync.Mutex
	wakeClosed bool

	closeOnce sync.Once
	closeErr  error // of the listener

	done chan struct{} // closed when the receiver has stopped
	// inflight counts the notifications answered on goroutines of their
	// own (mounts): the listener stays open until they are answered.
	inflight sync.WaitGroup

	nAnswered, nContinued, nFailed atomic.Uint64

	// callerLines are the lines callers can cause: at most one a second
	// (callerWarn).
	callerLines *loglimit.Limiter
}

// callerWarn logs a warning a caller can cause as often as it likes: at
// most one line a second, with how many were left out.
func (a *Agent) callerWarn(msg string, args ...any) {
	a.callerLines.Log(a.log, slog.LevelWarn, msg, args...)
}

// Serve answers the notifications of listener until Close (or until the
// listener has no filter left, which it then closes). It takes ownership
// of listener. Several listeners (several containers) may be served by one
// process: call Serve once per listener.
//
// One goroutine receives and answers a listener's statfs and fstatfs
// notifications, one after the other: handing each to a goroutine of its
// own costs more than the answer (tens of µs of wake-ups). A mount is
// answered on a goroutine of its own, as a Mounter may take its time.
//
// If the agent cannot start, it logs why, closes listener (notified
// syscalls then fail with ENOSYS) and returns a stopped Agent whose Close
// returns the error.
func Serve(listener *os.File, cfg Config) *Agent {
	a := newAgent(cfg)
	l, err := newListener(listener)
	if err == nil {
		a.l = l
		a.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	}
	if err != nil {
		a.log.Warn("seccomp agent: cannot serve listener", "err", err)
		a.closeOnce.Do(func() { listener.Close(); a.closeErr = err })
		a.wakeClosed = true
		close(a.done)
		return a
	}
	// Linux 6.6: wake the caller and the agent on the CPU that wakes them,
	// as a synchronous call would (a third faster here). Older kernels
	// refuse it (EINVAL).
	if err := a.l.setFlags(unix.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP); err != nil {
		a.log.Debug("seccomp agent: no synchronous wake-ups", "err", err)
	}
	go a.receive()
	return a
}

func newAgent(cfg Config) *Agent {
	a := &Agent{cfg: cfg, log: cfg.Log, wake: -1, done: make(chan struct{}), callerLines: loglimit.New(1, time.Second)}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a
}

// Close stops serving and closes the listener: notified syscalls then fail
// with ENOSYS, as the kernel does. It does not wait for an answer in
// progress (one may wait on a FUSE server that is stopping too); such an
// answer is dropped.
func (a *Agent) Close() error {
	a.closing.Store(true)
	a.wakeReceiver()
	return a.closeListener()
}

// Drain stops receiving notifications, answers those received, and then
// closes this agent's listener, for another holder of it (the next
// server, after a hand-over) to answer what comes next: a notification
// received is never received again, so one left unanswered would leave
// its caller waiting for ever. An answer may need the views (a statfs
// of a file on one): they must still be served while Drain waits.
//
// It waits at most within: a caller can make its own answer wait as
// long as it likes (a path on a FUSE file system of its own that never
// answers), and must not hold up every other container's hand-over. The
// notifications still unanswered then are given up (logged), as Close
// does.
func (a *Agent) Drain(within time.Duration) error {
	a.draining.Store(true)
	a.wakeReceiver()
	answered := make(chan struct{})
	go func() {
		<-a.done // the receiver left the listener open
		a.inflight.Wait()
		close(answered)
	}()
	select {
	case <-answered:
		return a.closeListener()
	case <-time.After(within):
		a.closing.Store(true)
		a.log.Warn("seccomp agent: an answer under way outlived the drain (a caller's path that does not answer): it is given up", "within", within)
		a.closeListener()
		return fmt.Errorf("an answer under way outlived %s", within)
	}
}

// wakeReceiver tells the receiver to stop, if it has not.
func (a *Agent) wakeReceiver() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.wakeClosed {
		unix.Write(a.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

// closeListener closes the listener once. An ioctl running then keeps the
// descriptor open until it returns.
func (a *Agent) closeListener() error {
	a.closeOnce.Do(func() { a.closeErr = a.l.f.Close() })
	return a.closeErr
}

// Done is closed when the agent has stopped: Close, or no task uses the
// listener's filter any more.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Stats returns the counts so far.
func (a *Agent) Stats() Stats {
	return Stats{Answered: a.nAnswered.Load(), Continued: a.nContinued.Load(), Failed: a.nFailed.Load()}
}

// receive is the listener's one receiver: it waits for a notification or
// for Close, receives the notification and answers it.
func (a *Agent) receive() {
	defer a.stop()
	for {
		ready, hup, woken, err := a.l.wait(a.wake)
		switch {
		case err != nil:
			if !a.closing.Load() {
				a.log.Warn("seccomp agent: poll of listener failed", "err", err)
			}
			return
		case woken:
			return
		case !ready && hup:
			a.log.Debug("seccomp agent: no task uses the filter any more")
			return
		case !ready:
			continue
		}
		n, err := a.l.recv()
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINTR):
			continue // the caller was interrupted before we received it
		case err != nil:
			if !a.closing.Load() {
				a.log.Warn("seccomp agent: receiving a notification failed", "err", err)
			}
			return
		case n.Data.Nr == x86_64Mount:
			a.inflight.Add(1)
			go func() {
				defer a.inflight.Done()
				a.handle(n)
			}()
		default:
			a.handle(n)
		}
	}
}

// stop releases the listener and the eventfd once the receiver has ended.
func (a *Agent) stop() {
	a.mu.Lock()
	a.wakeClosed = true
	unix.Close(a.wake)
	a.mu.Unlock()
	if !a.draining.Load() {
		a.closeListener()
	}
	close(a.done)
}

// syscallName names the notified syscalls in logs.
var syscallName = map[int32]string{x86_64Statfs: "statfs", x86_64Fstatfs: "fstatfs", x86_64Mount: "mount"}

// handle answers one notification.
func (a *Agent) handle(n seccompNotif) {
	p := newProc(a.l, &n)
	defer p.close()
	a.respond(&n, a.decide(p, &n))
}

// decide is what to do with notification n, whose caller's files p has.
func (a *Agent) decide(p *proc, n *seccompNotif) verdict {
	var v verdict
	switch {
	case n.Data.Arch != unix.AUDIT_ARCH_X86_64:
		v = cont("arch")
	case n.Data.Nr == x86_64Statfs:
		v = a.statfs(p, n)
	case n.Data.Nr == x86_64Fstatfs:
		v = a.fstatfs(p, n)
	case n.Data.Nr == x86_64Mount:
		v = a.mount(p, n)
	default:
		v = cont("not handled")
	}
	return v
}

// verdict is what the agent does with a notification.
type verdict struct {
	answered bool       // respond with errno (0: success, return value 0)
	gone     bool       // do not respond: the notification is no longer alive
	errno    unix.Errno // if answered
	why      string     // for the log
}

func answer(errno unix.Errno) verdict { return verdict{answered: true, errno: errno} }
func cont(why string) verdict         { return verdict{why: why} }

var gone = verdict{gone: true, why: errGone.Error()}

// respond sends v's response, counts and logs it.
func (a *Agent) respond(n *seccompNotif, v verdict) {
	var err error
	if !v.gone {
		err = a.l.send(n.ID, 0, v.errno, !v.answered)
	}
	a.record(n, v, err)
}

// record counts and logs the response v to n, whose sending failed with
// err (ENOENT: the caller was gone).
func (a *Agent) record(n *seccompNotif, v verdict, err error) {
	name := syscallName[n.Data.Nr]
	if v.gone {
		a.nFailed.Add(1)
		a.log.Debug("seccomp agent: caller gone", "syscall", name, "tid", n.Pid)
		return
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		a.nFailed.Add(1)
		a.log.Debug("seccomp agent: caller gone before the response", "syscall", name, "tid", n.Pid)
		return
	case err != nil:
		a.nFailed.Add(1)
		if !a.closing.Load() {
			a.log.Warn("seccomp agent: response failed", "syscall", name, "tid", n.Pid, "err", err)
		}
		return
	case v.answered:
		a.nAnswered.Add(1)
	default:
		a.nContinued.Add(1)
	}
	a.log.Debug("seccomp agent: notification", "syscall", name, "tid", n.Pid,
		"answered", v.answered, "errno", int(v.errno), "why", v.why)
}

// magic is cfg.Magic, nil meaning no view.
func (a *Agent) magic(dev, ino uint64) (int64, bool) {
	if a.cfg.Magic == nil {
		return 0, false
	}
	return a.cfg.Magic(dev, ino)
}

// failed turns an error of a handler into a verdict: a notification no
// longer alive is dropped; a /proc file the agent could not open is
// logged as a warning; anything else is the caller's (a bad pointer, a
// path that does not resolve) and the kernel gives the errno. All but the
// first continue.
func (a *Agent) failed(p *proc, sys string, err error) verdict {
	if errors.Is(err, errGone) {
		return gone
	}
	var pe *procError
	if errors.As(err, &pe) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
		a.callerWarn("seccomp agent: cannot inspect caller", "syscall", sys, "tid", p.tid, "err", err)
	}
	return cont(err.Error())
}

// errnoOf is err's errno, EIO if it has none.
func errnoOf(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return unix.EIO
}
