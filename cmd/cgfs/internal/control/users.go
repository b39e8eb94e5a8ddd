package control

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The user socket: the same one request and one answer, JSON over a unix
// SOCK_SEQPACKET socket, that any host user the admin lets connect may
// use, for its own containers alone. The kernel says who asks
// (SO_PEERCRED; SO_PEERPIDFD where the kernel has it), never the request.

// UserSocket is where the daemon listens for users unless told
// otherwise.
const UserSocket = Dir + "/user.sock"

// UserSocketPath is $CGFS_USER_SOCKET, or UserSocket.
func UserSocketPath() string {
	if s := os.Getenv("CGFS_USER_SOCKET"); s != "" {
		return s
	}
	return UserSocket
}

// Peer is who asks on the user socket, as the kernel says.
type Peer struct {
	Uid, Gid, Pid int
}

// UserHandler answers a user's request; the descriptors it returns go
// with the answer (and are closed after).
type UserHandler func(req Request, peer Peer) (Answer, *os.File)

// UserBounds bound what one user may ask of the socket.
type UserBounds struct {
	// Conns: connections of one user at once; more are refused.
	Conns int
	// Rate and Burst: requests a second of one user, after a burst;
	// more are answered "too many requests" (EAGAIN).
	Rate, Burst float64
	// Refused, if set, is told each refusal and its rule.
	Refused func(uid int, rule string)
	// Owner, if set, says whose subordinate id (/etc/subuid) a peer's
	// uid is. Such a peer is its owner's process in a user namespace,
	// not a user of its own: it is refused, and its connections and
	// requests count against its owner's bounds, so that the 65,536
	// uids a user may run processes as hold no more of the daemon than
	// the user does. An error refuses the peer too.
	Owner func(uid int) (owner int, name string, ok bool, err error)
}

// maxUserFiles bounds the descriptors one request of a user may carry.
const maxUserFiles = 4

// userReadDeadline bounds how long a user's connection may take to say
// what it asks; refusedReadDeadline one refused for the user's
// connections.
var (
	userReadDeadline    = 10 * time.Second
	refusedReadDeadline = time.Second
)

// ServeUsers answers each connection to ln (a unixpacket listener anyone
// the admin chose may reach) with h, until ln is closed, within b.
func ServeUsers(ln *net.UnixListener, h UserHandler, b UserBounds, log *slog.Logger) {
	u := &userServer{h: h, b: b, log: log, users: map[int]*userState{}, refusedWait: refusedReadDeadline}
	go AcceptEach(ln, u.serve)
}

type userServer struct {
	h   UserHandler
	b   UserBounds
	log *slog.Logger
	// refusedWait is refusedReadDeadline as it was when the server
	// started (tests hold refused connections longer).
	refusedWait time.Duration

	mu    sync.Mutex
	users map[int]*userState
}

// userState is one user's connections and request tokens.
type userState struct {
	conns int
	// refusing: its connections past the bound being answered.
	refusing int
	tokens   float64
	last     time.Time
	logged   time.Time // its last refusal logged (a line a second at most)
}

func (u *userServer) serve(c *net.UnixConn) {
	defer c.Close()
	cred, err := peerCred(c)
	if err != nil {
		return
	}
	uid := int(cred.Uid)
	// key is whose bounds the connection counts against; refusal, when
	// set, is why it is refused whatever it asks.
	key, refusal := uid, ""
	if u.b.Owner != nil {
		owner, name, ok, err := u.b.Owner(uid)
		switch {
		case err != nil: // all such peers count as one: they are all refused
			key = -1
			refusal = "cgfs cannot tell whose subordinate id uid " + strconv.Itoa(uid) + " is: " + err.Error()
		case ok:
			key = owner
			refusal = fmt.Sprintf("uid %d is a subordinate id of user %s (/etc/subuid), not a user of its own: ask as %s", uid, name, name)
		}
	}
	u.mu.Lock()
	st := u.users[key]
	if st == nil {
		st = &userState{tokens: u.b.Burst, last: time.Now()}
		u.users[key] = st
	}
	if st.conns >= u.b.Conns {
		// Its request is read before the answer (unread, the close
		// would reset the connection before the answer is read), within
		// a moment, for as many refused connections at once as it may
		// hold; beyond those, it is closed at once: the bound is on what
		// the user holds.
		answer := st.refusing < u.b.Conns
		if answer {
			st.refusing++
		}
		u.mu.Unlock()
		u.refuse(key, uid, "user-connections", "a user holds as many connections as it may")
		if !answer {
			return
		}
		defer func() {
			u.mu.Lock()
			st.refusing--
			u.mu.Unlock()
		}()
		_ = c.SetReadDeadline(time.Now().Add(u.refusedWait))
		buf, oob := make([]byte, 16<<10), make([]byte, unix.CmsgSpace(4*maxUserFiles))
		if _, oobn, _, _, err := c.ReadMsgUnix(buf, oob); err == nil {
			for _, f := range receivedAll(oob[:oobn]) {
				f.Close()
			}
		}
		writeAnswer(c, Answer{Error: "too many connections of this user to the cgfs daemon", Usage: true}, nil, u.log)
		return
	}
	st.conns++
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		st.conns--
		if st.conns == 0 && st.refusing == 0 && st.tokens >= u.b.Burst {
			delete(u.users, key) // nothing to remember: its state is bounded by users connected
		}
		u.mu.Unlock()
	}()
	_ = c.SetReadDeadline(time.Now().Add(userReadDeadline))
	buf, oob := make([]byte, 16<<10), make([]byte, unix.CmsgSpace(4*maxUserFiles))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	files := receivedAll(oob[:oobn])
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	if err != nil {
		closeFiles()
		return
	}
	if flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 || len(files) > maxUserFiles {
		closeFiles()
		u.refuse(key, uid, "user-request", "a request too long or with too many descriptors")
		writeAnswer(c, Answer{Error: "a request cgfs does not take: too long or too many descriptors", Usage: true}, nil, u.log)
		return
	}
	if !u.take(st) {
		closeFiles()
		u.refuse(key, uid, "user-rate", "a user asks faster than it may")
		writeAnswer(c, Answer{Error: "too many requests of this user: ask again later", Usage: true}, nil, u.log)
		return
	}
	if refusal != "" {
		closeFiles()
		u.refuse(key, uid, "subordinate-id", refusal)
		writeAnswer(c, Answer{Error: refusal, Usage: true}, nil, u.log)
		return
	}
	var req Request
	if err := json.Unmarshal(buf[:n], &req); err != nil {
		closeFiles()
		u.refuse(key, uid, "user-request", "a request cgfs does not understand")
		writeAnswer(c, Answer{Error: "a request cgfs does not understand: " + err.Error(), Usage: true}, nil, u.log)
		return
	}
	req.Files = files
	a, fd := u.h(req, Peer{Uid: uid, Gid: int(cred.Gid), Pid: int(cred.Pid)})
	writeAnswer(c, a, fd, u.log)
	if a.Placed != nil {
		_ = c.SetReadDeadline(time.Now().Add(ConfirmWait))
		n, err := c.Read(buf)
		a.Placed(err == nil && string(buf[:n]) == placedWord)
	}
}

// take takes a request token of a user's.
func (u *userServer) take(st *userState) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	st.tokens = min(u.b.Burst, st.tokens+now.Sub(st.last).Seconds()*u.b.Rate)
	st.last = now
	if st.tokens < 1 {
		return false
	}
	st.tokens--
	return true
}

// refuse counts a refusal of peer uid and logs it, at most a line a
// second for each user whose bounds it counts against (key).
func (u *userServer) refuse(key, uid int, rule, msg string) {
	if u.b.Refused != nil {
		u.b.Refused(uid, rule)
	}
	u.mu.Lock()
	st := u.users[key]
	quiet := st != nil && time.Since(st.logged) < time.Second
	if st != nil && !quiet {
		st.logged = time.Now()
	}
	u.mu.Unlock()
	if quiet {
		return
	}
	if key != uid {
		u.log.Warn("refused a user's request", "uid", uid, "charged-to", key, "rule", rule, "why", msg)
	} else {
		u.log.Warn("refused a user's request", "uid", uid, "rule", rule, "why", msg)
	}
}

func writeAnswer(c *net.UnixConn, a Answer, fd *os.File, log *slog.Logger) {
	b, _ := json.Marshal(a)
	var oob []byte
	if fd != nil {
		oob = unix.UnixRights(int(fd.Fd()))
		defer fd.Close()
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		log.Debug("answering", "err", err)
	}
}

// receivedAll is every descriptor the control messages oob carried.
func receivedAll(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var out []*os.File
	for i := range msgs {
		if len(msgs[i].Data)%4 != 0 {
			continue
		}
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			out = append(out, os.NewFile(uintptr(fd), "from a user"))
		}
	}
	return out
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// AskUser sends req with files to the user socket at path and returns
// the answer and the descriptor that came with it.
func AskUser(path string, req Request, files ...*os.File) (Answer, *os.File, error) {
	c, a, fd, err := askFiles(path, req, files)
	if c != nil {
		c.Close()
	}
	return a, fd, err
}

// AskUserConfirm is AskUser for a request that waits for the asker's
// word (attach): see AskConfirm.
func AskUserConfirm(path string, req Request) (Answer, *os.File, func(ok bool), error) {
	req.Confirm = true
	c, a, fd, err := askFiles(path, req, nil)
	if err != nil {
		if c != nil {
			c.Close()
		}
		return a, fd, nil, err
	}
	return a, fd, confirmer(c), nil
}
