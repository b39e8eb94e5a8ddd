package access

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
)

// capSysAdmin is CAP_SYS_ADMIN's bit in the capability sets.
const capSysAdmin = 21

// Caller is the thread that made a request, as the host sees it.
type Caller struct {
	Tid    int    // host thread id (what FUSE reports)
	Uid    uint32 // host fsuid: what permission checks use
	Gid    uint32 // host fsgid
	CapEff uint64 // effective capabilities, in its own user namespace
	// UserNS is the thread's user namespace first, then its ancestors
	// up to the server's own.
	UserNS []proc.Ancestor
}

// HasCapSysAdmin reports whether CAP_SYS_ADMIN is effective for the
// caller in its own user namespace.
func (c Caller) HasCapSysAdmin() bool { return c.CapEff&(1<<capSysAdmin) != 0 }

func (c Caller) String() string {
	var ns uint64
	if len(c.UserNS) > 0 {
		ns = c.UserNS[0].NS.Ino
	}
	return fmt.Sprintf("tid=%d uid=%d gid=%d userns=%d", c.Tid, c.Uid, c.Gid, ns)
}

// ErrGone means the calling thread exited while it was being identified;
// what was read may belong to another task reusing its id.
var ErrGone = errors.New("caller exited during the request")

// Identifier identifies the callers of FUSE requests.
type Identifier struct {
	procs *proc.Procs
	// identified counts credential identifications, the costly part of
	// a request (a pin, capget and a user namespace walk).
	identified atomic.Int64
	known      memory
}

// NewIdentifier identifies callers from the tasks procs reads.
func NewIdentifier(procs *proc.Procs) *Identifier {
	return &Identifier{procs: procs}
}

// Identifications is how many callers were identified so far.
func (id *Identifier) Identifications() int64 { return id.identified.Load() }

// ThreadGroup returns the host thread group id (the pid) of thread tid,
// for log lines.
func (id *Identifier) ThreadGroup(tid int) (int, error) { return id.procs.ThreadGroup(tid) }

// Identify returns the credentials of host thread tid, whose fsuid and
// fsgid (as the FUSE request header gives them) are uid and gid.
func (id *Identifier) Identify(tid int, uid, gid uint32) (Caller, error) {
	r := id.Request(tid, uid, gid)
	defer r.Done()
	return r.Caller()
}

// Request is the caller of one FUSE request. It pins the calling thread
// at most once, when a decision first needs to know who it is, and reads
// each fact about it at most once; Done releases the pin. A Request
// belongs to the goroutine serving its request.
type Request struct {
	id       *Identifier
	tid      int
	uid, gid uint32

	pin    *proc.Pin
	pinErr error
	// known is the identifier's memory of the task, whose pin this is;
	// knownThread its thread facts, remembered. gone: the pin was found
	// dead, so the memory forgets it.
	known       *knownTask
	knownThread *proc.Thread
	gone        bool

	caller    *Caller
	callerErr error
	asked     bool // Caller was called: a decision needed the caller
	thread    *proc.Thread
	threadErr error
}

// Request starts the identification of host thread tid with fsuid uid
// and fsgid gid, as a FUSE request header gives them. Nothing is read
// yet.
func (id *Identifier) Request(tid int, uid, gid uint32) *Request {
	return &Request{id: id, tid: tid, uid: uid, gid: gid}
}

// Known is a request whose caller (and, for task files, thread) is
// already known: for tests and for decisions about a caller identified
// earlier.
func Known(c Caller, th proc.Thread) *Request {
	return &Request{tid: c.Tid, uid: c.Uid, gid: c.Gid, caller: &c, thread: &th}
}

// Tid is the calling thread's host id, known without identification.
func (r *Request) Tid() int { return r.tid }

// Done releases what the request holds.
func (r *Request) Done() {
	switch {
	case r.known != nil:
		r.id.release(r.known, r.gone)
		r.known = nil
	case r.pin != nil:
		r.pin.Close()
	}
	r.pin = nil
}

// alive reports whether the pinned task still lives; a dead one is
// forgotten when the request ends.
func (r *Request) alive() bool {
	if r.pin.Alive() {
		return true
	}
	r.gone = true
	return false
}

// Gone reports whether the calling thread has exited since the request
// came (it was never found, or its pin is dead).
func (r *Request) Gone() bool {
	if _, err := r.pinned(); err != nil {
		return errors.Is(err, ErrGone)
	}
	return !r.alive()
}

func (r *Request) pinned() (*proc.Pin, error) {
	if r.pin == nil && r.pinErr == nil {
		if r.id == nil {
			r.pinErr = errors.New("request without an identifier")
		} else if r.known, r.knownThread, r.pinErr = r.id.pin(r.tid); r.pinErr == unix.ESRCH {
			r.pinErr = ErrGone
		} else if r.pinErr == nil {
			r.pin = r.known.pin
		}
	}
	return r.pin, r.pinErr
}

// Identified returns the caller if it has been identified already.
func (r *Request) Identified() (Caller, bool) {
	if r.caller != nil {
		return *r.caller, true
	}
	return Caller{}, false
}

// Caller identifies the calling thread's credentials: the thread is
// pinned (its /proc directory) before anything is read and checked to
// be alive after, so a reused tid can never lend its credentials to a
// request.
func (r *Request) Caller() (Caller, error) {
	r.asked = true
	if r.caller != nil || r.callerErr != nil {
		if r.callerErr != nil {
			return Caller{}, r.callerErr
		}
		return *r.caller, nil
	}
	c, err := r.identify()
	if err != nil {
		r.callerErr = err
		return Caller{}, err
	}
	r.caller = &c
	return c, nil
}

// identify reads the caller; a remembered pin found dead (its task
// exited and the id now names another) is forgotten and the caller
// pinned afresh, once.
func (r *Request) identify() (Caller, error) {
	c, err := r.identifyOnce()
	if err == ErrGone && r.refresh() {
		return r.identifyOnce()
	}
	return c, err
}

// refresh forgets a remembered pin that was found dead and pins the
// caller afresh; false when the pin was fresh already.
func (r *Request) refresh() bool {
	if r.known == nil || !r.gone {
		return false
	}
	r.id.release(r.known, true)
	r.known, r.knownThread, r.pin, r.gone = nil, nil, nil, false
	r.thread, r.threadErr = nil, nil
	if r.known, r.knownThread, r.pinErr = r.id.pin(r.tid); r.pinErr == nil {
		r.pin = r.known.pin
	} else if r.pinErr == unix.ESRCH {
		r.pinErr = ErrGone
	}
	return true
}

func (r *Request) identifyOnce() (Caller, error) {
	pin, err := r.pinned()
	if err != nil {
		return Caller{}, err
	}
	r.id.identified.Add(1)
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: int32(r.tid)}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		if err == unix.ESRCH {
			r.gone = true
			return Caller{}, ErrGone
		}
		return Caller{}, fmt.Errorf("capget %d: %w", r.tid, err)
	}
	ns, err := pin.UserNS()
	if err != nil {
		r.gone = true
		return Caller{}, ErrGone
	}
	userns, err := r.id.chain(pin, ns)
	if err != nil {
		return Caller{}, err
	}
	if len(userns) == 0 || userns[0].NS != ns || !r.alive() {
		// Gone, or it changed user namespaces while being read: what
		// was read is not one state of it.
		return Caller{}, ErrGone
	}
	return Caller{
		Tid:    r.tid,
		Uid:    r.uid,
		Gid:    r.gid,
		CapEff: uint64(caps[0].Effective) | uint64(caps[1].Effective)<<32,
		UserNS: userns,
	}, nil
}

// PidNamespace opens the calling thread's pid namespace, through the
// same pin.
func (r *Request) PidNamespace() (*os.File, error) {
	pin, err := r.pinned()
	if err != nil {
		return nil, err
	}
	f, err := pin.NamespaceFile("pid")
	if err != nil || !r.alive() {
		if f != nil {
			f.Close()
		}
		return nil, ErrGone
	}
	return f, nil
}

// pidfdThread is PIDFD_THREAD (Linux 6.9): a pidfd of one thread, not
// of a thread group's leader.
const pidfdThread = unix.O_EXCL

// Pidfd opens a pidfd of the calling thread, through the same pin: the
// pin lives after the open, so the pidfd names the caller and no task
// that took its id since.
func (r *Request) Pidfd() (*os.File, error) {
	if _, err := r.pinned(); err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(r.tid, pidfdThread)
	if err == unix.EINVAL {
		// A kernel before 6.9 opens pidfds of thread group leaders
		// alone: the leader's, when the thread shares its descriptor
		// table (kcmp KCMP_FILES), which is all a pidfd here is for.
		fd, err = r.leaderPidfd()
	}
	if err == unix.ESRCH {
		r.gone = true
		return nil, ErrGone
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", r.tid, err)
	}
	if !r.alive() {
		unix.Close(fd)
		return nil, ErrGone
	}
	return os.NewFile(uintptr(fd), "pidfd"), nil
}

// kcmpFiles is KCMP_FILES: whether two tasks share one descriptor
// table.
const kcmpFiles = 2

// leaderPidfd opens a pidfd of the calling thread's group leader, if the
// thread shares its descriptor table.
func (r *Request) leaderPidfd() (int, error) {
	tgid, err := r.id.ThreadGroup(r.tid)
	if err != nil {
		return -1, unix.ESRCH
	}
	if tgid != r.tid {
		same, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(r.tid), uintptr(tgid), kcmpFiles, 0, 0, 0)
		if errno != 0 {
			return -1, errno
		}
		if same != 0 {
			return -1, fmt.Errorf("thread %d has a descriptor table of its own, and this kernel opens no pidfd of a thread", r.tid)
		}
	}
	return unix.PidfdOpen(tgid, 0)
}

// Thread identifies the calling thread as a reader or writer of task
// ids: its thread group and pid namespace, read through the same pin.
func (r *Request) Thread() (proc.Thread, error) {
	if r.thread != nil || r.threadErr != nil {
		if r.threadErr != nil {
			return proc.Thread{}, r.threadErr
		}
		return *r.thread, nil
	}
	th, err := r.threadOnce()
	if err == ErrGone && r.refresh() {
		th, err = r.threadOnce()
	}
	if err != nil {
		r.threadErr = err
		return proc.Thread{}, err
	}
	r.thread = &th
	return th, nil
}

func (r *Request) threadOnce() (proc.Thread, error) {
	pin, err := r.pinned()
	if err != nil {
		return proc.Thread{}, err
	}
	if k := r.knownThread; k != nil && k.Tid == r.tid {
		if r.alive() {
			return *k, nil // the pinned task's own, and it lives
		}
		return proc.Thread{}, ErrGone
	}
	th, err := pin.Thread()
	if err != nil {
		r.gone = true
		return proc.Thread{}, ErrGone
	}
	if r.known != nil {
		r.id.rememberThread(pin, th)
	}
	return th, nil
}
