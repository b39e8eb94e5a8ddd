//go:build linux

package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// LXC's seccomp notification proxy (lxc.seccomp.notify.proxy), as LXC 5.0
// (src/lxc/seccomp.c, seccomp_notify_handler) speaks it and LXD's seccomp
// server (lxd/seccomp/seccomp.go) answers it.
//
// The LXC monitor keeps the listener. It connects to the proxy's socket
// (SOCK_SEQPACKET, unix:PATH; 30 s SO_SNDTIMEO and SO_RCVTIMEO) when the
// container starts, and again when a send fails. For each notification
// it:
//
//  1. receives it (SECCOMP_IOCTL_NOTIF_RECV);
//  2. opens /proc/PID (O_RDONLY|O_DIRECTORY) and /proc/PID/mem (O_RDWR),
//     PID being seccomp_notif.pid in the monitor's pid namespace, then
//     checks SECCOMP_IOCTL_NOTIF_ID_VALID (if anything fails it answers
//     -ENOSYS itself);
//  3. sends one message, native endianness:
//
//	offset  size
//	0       8     __reserved, 0
//	8       4     monitor_pid (pid_t, the monitor's pid)
//	12      4     init_pid (pid_t, the container's init)
//	16      6     struct seccomp_notif_sizes {u16 notif, resp, data}
//	22      2     padding
//	24      8     cookie_len
//	32      sizes.notif       struct seccomp_notif, as received
//	...     sizes.resp        struct seccomp_notif_resp, id = notif.id
//	...     cookie_len        lxc.seccomp.notify.cookie, no NUL (absent
//	                          without a cookie)
//
//     with three descriptors in one SCM_RIGHTS message: [0] /proc/PID,
//     [1] /proc/PID/mem, [2] the seccomp listener itself;
//  4. receives the reply into the same buffers, which must be exactly
//     32 + sizes.notif + sizes.resp bytes (the cookie is not sent back;
//     any other length, an empty message included, makes LXC answer
//     -ENOSYS), sets resp.id back to notif.id if the proxy changed it,
//     and passes resp as it is, flags included, to
//     SECCOMP_IOCTL_NOTIF_SEND (libseccomp's seccomp_notify_respond), so
//     SECCOMP_USER_NOTIF_FLAG_CONTINUE works.
//
// LXC does not look at the cookie; it is for the proxy to tell containers
// apart. One monitor handles one notification at a time and waits for
// each reply, so a container's notified syscalls are answered one after
// the other. A reply later than LXC's 30 s timeout would be taken as the
// reply to the next notification: the proxy drops the connection instead
// of replying that late (lxcReplyDeadline).

// lxcProxyMsg is LXC's struct seccomp_notify_proxy_msg.
type lxcProxyMsg struct {
	Reserved   uint64
	MonitorPid int32
	InitPid    int32
	Sizes      seccompNotifSizes
	_          [2]byte
	CookieLen  uint64
}

const lxcHeaderLen = 32

var _ [lxcHeaderLen]byte = [unsafe.Sizeof(lxcProxyMsg{})]byte{}

// lxcReplyDeadline is how long after receiving a message the proxy may
// still reply: LXC gives up after 30 s.
var lxcReplyDeadline = 25 * time.Second

// lxcMsgMax bounds a message: the header, the structs and a cookie. A
// longer cookie is cut (it is only logged).
const lxcMsgMax = 8192

// LXCProxy answers the notifications LXC monitors forward to it.
type LXCProxy struct {
	a  *Agent // the handlers, the log and the counts; it has no listener
	ln *net.UnixListener

	mu     sync.Mutex
	conns  map[*net.UnixConn]struct{}
	closed bool

	done chan struct{} // closed when Accept has stopped
}

// ServeLXCProxy answers, with cfg, the notifications LXC monitors send to
// ln: a listener on a SOCK_SEQPACKET ("unixpacket") socket, the one the
// containers' lxc.seccomp.notify.proxy names:
//
//	lxc.seccomp.profile = FILE           # with "statfs notify" etc.
//	lxc.seccomp.notify.proxy = unix:PATH # PATH: ln's address
//	lxc.seccomp.notify.cookie = NAME     # optional, logged
//
// Answers are those of Serve: statfs and fstatfs of views, mounts of
// cgroupfs by Config.Mounter, every other notification continued. The
// caller's memory is the /proc/PID/mem LXC sends; its other /proc files
// are opened from the /proc/PID directory LXC sends (so the agent may run
// in another pid namespace than the monitor, and Caller.Tid is the
// monitor's PID), and the liveness checks after opening them use the
// listener LXC sends with them. A message without those three descriptors
// is continued unanswered by the agent.
//
// Anyone who can connect hands the agent /proc directories to act in:
// ln's socket file must be reachable only by the monitors (mode 0700 in
// a root-only directory). Connections from a peer whose uid is neither 0
// nor the agent's are refused.
//
// ServeLXCProxy takes ownership of ln. It fails only if ln is not a
// SOCK_SEQPACKET socket.
func ServeLXCProxy(ln *net.UnixListener, cfg Config) (*LXCProxy, error) {
	if typ, err := sockType(ln); err != nil || typ != unix.SOCK_SEQPACKET {
		if err == nil {
			err = fmt.Errorf("socket type %d, want SOCK_SEQPACKET (unixpacket)", typ)
		}
		ln.Close()
		return nil, fmt.Errorf("seccomp agent: LXC proxy: %w", err)
	}
	s := &LXCProxy{a: newAgent(cfg), ln: ln, conns: map[*net.UnixConn]struct{}{}, done: make(chan struct{})}
	go s.accept()
	return s, nil
}

func sockType(ln *net.UnixListener) (int, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return 0, err
	}
	var typ int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	}); err != nil {
		return 0, err
	}
	return typ, serr
}

// Close stops accepting and closes every connection: LXC then answers its
// containers' notifications with ENOSYS (and reconnects on the next one).
// Like Agent.Close, it does not wait for an answer in progress.
func (s *LXCProxy) Close() error {
	s.a.closing.Store(true)
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	<-s.done
	return err
}

// Stats returns the counts so far. A response is counted once the reply is
// written to LXC; whether LXC's SECCOMP_IOCTL_NOTIF_SEND then succeeds
// the proxy cannot know.
func (s *LXCProxy) Stats() Stats { return s.a.Stats() }

func (s *LXCProxy) accept() {
	defer close(s.done)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if !s.a.closing.Load() {
				s.a.log.Warn("seccomp agent: LXC proxy: accept failed", "err", err)
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(100 * time.Millisecond) // EMFILE and the like
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn answers one monitor's messages, one after the other, as the
// monitor sends them.
func (s *LXCProxy) serveConn(c *net.UnixConn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	cred, err := peerCred(c)
	if err != nil || (cred.Uid != 0 && int(cred.Uid) != os.Geteuid()) {
		s.a.log.Warn("seccomp agent: LXC proxy: refused a connection", "peer", cred, "err", err)
		return
	}
	s.a.log.Debug("seccomp agent: LXC monitor connected", "pid", cred.Pid)
	buf := make([]byte, lxcMsgMax)
	oob := make([]byte, unix.CmsgSpace(8*4)) // LXC sends 3; room for a few more
	for {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		received := time.Now()
		fds := parseRights(oob[:oobn])
		if err != nil || (n == 0 && oobn == 0) {
			closeAll(fds)
			if err != nil && !s.a.closing.Load() && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				s.a.log.Debug("seccomp agent: LXC proxy: receive failed", "pid", cred.Pid, "err", err)
			}
			return
		}
		reply := s.handleMsg(buf[:n], flags, fds)
		if time.Since(received) > lxcReplyDeadline {
			// LXC has answered ENOSYS and may be waiting for the reply
			// to its next notification: this one must not be taken
			// for it.
			s.a.log.Warn("seccomp agent: LXC proxy: answer later than LXC waits, dropping the connection", "pid", cred.Pid)
			return
		}
		if _, _, err := c.WriteMsgUnix(reply, nil, nil); err != nil {
			if !s.a.closing.Load() {
				s.a.log.Warn("seccomp agent: LXC proxy: reply failed", "pid", cred.Pid, "err", err)
			}
			return
		}
	}
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// parseRights returns the descriptors of every SCM_RIGHTS message in oob.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		// x/sys's ParseUnixRights reads past a payload that holds part
		// of a descriptor (the kernel never writes one).
		if len(msgs[i].Data)%4 != 0 {
			continue
		}
		if f, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// notifyFd is a seccomp listener LXC sent, to check liveness with.
type notifyFd int

func (fd notifyFd) valid(id uint64) bool {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SECCOMP_IOCTL_NOTIF_ID_VALID, uintptr(unsafe.Pointer(&id)))
	return e == 0
}

// handleMsg answers one message of LXC's and returns the reply: msg's
// header and notification followed by the response. It closes fds. A
// message it cannot parse gets an empty reply, which LXC takes as a
// failure (it answers ENOSYS) without waiting 30 s.
func (s *LXCProxy) handleMsg(msg []byte, flags int, fds []int) []byte {
	defer func() { closeAll(fds) }() // those p has not taken
	if len(msg) < lxcHeaderLen {
		s.a.log.Warn("seccomp agent: LXC proxy: short message", "len", len(msg))
		return nil
	}
	var h lxcProxyMsg
	h.Reserved = binary.NativeEndian.Uint64(msg[0:])
	h.MonitorPid = int32(binary.NativeEndian.Uint32(msg[8:]))
	h.InitPid = int32(binary.NativeEndian.Uint32(msg[12:]))
	h.Sizes.Notif = binary.NativeEndian.Uint16(msg[16:])
	h.Sizes.Resp = binary.NativeEndian.Uint16(msg[18:])
	h.Sizes.Data = binary.NativeEndian.Uint16(msg[20:])
	h.CookieLen = binary.NativeEndian.Uint64(msg[24:])
	notifLen, respLen := int(h.Sizes.Notif), int(h.Sizes.Resp)
	if h.Reserved != 0 || notifLen < int(unsafe.Sizeof(seccompNotif{})) ||
		respLen < int(unsafe.Sizeof(seccompNotifResp{})) || int(h.Sizes.Data) < int(unsafe.Sizeof(seccompData{})) ||
		len(msg) < lxcHeaderLen+notifLen+respLen {
		s.a.log.Warn("seccomp agent: LXC proxy: bad message", "len", len(msg), "header", h)
		return nil
	}
	var n seccompNotif
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&n)), unsafe.Sizeof(n)), msg[lxcHeaderLen:])
	cookie := msg[lxcHeaderLen+notifLen+respLen:]
	cookie = cookie[:min(uint64(len(cookie)), h.CookieLen)]

	var v verdict
	if len(fds) < 3 {
		// Without the listener nothing read from /proc could be
		// checked to be the caller's.
		s.a.log.Warn("seccomp agent: LXC proxy: message without /proc/PID, mem and listener descriptors", "fds", len(fds))
		v = cont("no descriptors")
	} else {
		p := newProc(notifyFd(fds[2]), &n)
		p.dir, p.mem = fds[0], fds[1] // closed by p.close
		p.init = int(h.InitPid)
		fds = fds[2:]
		v = s.a.decide(p, &n)
		p.close()
	}
	s.a.log.Debug("seccomp agent: LXC notification", "cookie", string(cookie), "init", h.InitPid,
		"monitor", h.MonitorPid, "truncated", flags&unix.MSG_TRUNC != 0)

	reply := make([]byte, lxcHeaderLen+notifLen+respLen)
	copy(reply, msg[:lxcHeaderLen+notifLen])
	r := (*seccompNotifResp)(unsafe.Pointer(&make([]uint64, (respLen+7)/8)[0]))
	r.ID = n.ID
	if v.answered {
		r.Error = -int32(v.errno)
	} else {
		// Continued, and also when the caller is gone (LXC's SEND then
		// fails with ENOENT, harmlessly): LXC waits for a reply.
		r.Flags = unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE
	}
	copy(reply[lxcHeaderLen+notifLen:], unsafe.Slice((*byte)(unsafe.Pointer(r)), respLen))
	s.a.record(&n, v, nil)
	return reply
}
