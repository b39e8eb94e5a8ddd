package access

import (
	"errors"
	"fmt"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
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
	UserNS []UserNSLink
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

// NS identifies a namespace by its nsfs inode.
type NS = translate.NS

// ErrGone means the calling thread exited while it was being identified;
// what was read may belong to another task reusing its id.
var ErrGone = errors.New("caller exited during the request")

// Identifier reads callers' credentials from a proc filesystem.
type Identifier struct {
	proc string
	fs   procfs.FS
}

// NewIdentifier reads from the proc filesystem mounted at proc
// ("/proc" on a real host).
func NewIdentifier(proc string) (*Identifier, error) {
	fs, err := procfs.NewFS(proc)
	if err != nil {
		return nil, err
	}
	return &Identifier{proc: proc, fs: fs}, nil
}

// Identify returns the credentials of host thread tid, whose fsuid and
// fsgid (as the FUSE request header gives them) are uid and gid. The
// thread is pinned (its /proc directory) before anything is read and
// checked to be alive after, so a reused tid can never lend its
// credentials to a request. /proc/TID/status is read only for
// ThreadGroup, off the hot path.
func (id *Identifier) Identify(tid int, uid, gid uint32) (Caller, error) {
	pin, err := translate.OpenTaskDir(id.proc, tid)
	if err != nil {
		if err == unix.ESRCH {
			return Caller{}, ErrGone
		}
		return Caller{}, fmt.Errorf("pin %d: %w", tid, err)
	}
	defer pin.Close()

	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: int32(tid)}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		if err == unix.ESRCH {
			return Caller{}, ErrGone
		}
		return Caller{}, fmt.Errorf("capget %d: %w", tid, err)
	}
	nsfd, err := pin.Namespace("user")
	if err != nil {
		return Caller{}, ErrGone
	}
	userns, err := userNSChain(nsfd)
	if err != nil {
		return Caller{}, err
	}
	if !pin.Alive() {
		return Caller{}, ErrGone
	}
	return Caller{
		Tid:    tid,
		Uid:    uid,
		Gid:    gid,
		CapEff: uint64(caps[0].Effective) | uint64(caps[1].Effective)<<32,
		UserNS: userns,
	}, nil
}

// ThreadGroup returns the host thread group id (the pid) of thread tid.
func (id *Identifier) ThreadGroup(tid int) (int, error) {
	p, err := id.fs.Proc(tid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, err
	}
	return int(st.TGID), nil
}
