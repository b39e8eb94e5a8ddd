// Package control is how cgfs commands talk to a cgfs that serves views
// (the daemon, or cgfs run for its one container): one request and one
// answer, JSON, over a unix SOCK_SEQPACKET socket, with descriptors
// passed alongside where they are handed over. On root's sockets only
// host root may ask: the peer's credentials (SO_PEERCRED) are checked on
// every connection. On the daemon's user socket (users.go) any user the
// admin lets in may, for its own containers, within bounds per user.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Dir holds the sockets cgfs listens on.
const Dir = "/run/cgfs"

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = Dir + "/daemon.sock"

// DaemonSocket is where the daemon listens: $CGFS_SOCKET, or
// DefaultSocket.
func DaemonSocket() string {
	if s := os.Getenv("CGFS_SOCKET"); s != "" {
		return s
	}
	return DefaultSocket
}

// RunSocket is where cgfs run listens for its container called name.
func RunSocket(name string) string { return filepath.Join(Dir, "run", name+".sock") }

// Request is one thing asked of a server.
type Request struct {
	// Op is attach (serve a new view; its mount comes back as a
	// descriptor), detach (stop serving one), list, lookup (the answer
	// names the container's init), or enter (put host process Pid into
	// the container's cgroups, as one of its own), or agent (answer the
	// seccomp listener File of a process that joined container Name).
	Op   string `json:"op"`
	Name string `json:"name,omitempty"`
	// Owner is a process of the container to serve (attach), as the
	// host's pid namespace names it.
	Owner int `json:"owner,omitempty"`
	// Cgroup serves one cgroup v2 directory instead of the owner's
	// layout (attach).
	Cgroup string `json:"cgroup,omitempty"`
	// Shared names hierarchies to serve read-only (attach).
	Shared []string `json:"shared,omitempty"`
	// Pid is the host process to enter.
	Pid int `json:"pid,omitempty"`
	// Confirm (attach): the asker will say whether it put the view in
	// place, on the same connection (AskConfirm); a view it does not
	// put in place, or whose asker ends without a word, is dropped.
	Confirm bool `json:"confirm,omitempty"`
	// Limits (create, update of a user's container): what the
	// container may use, clamped to the admin's policy.
	Limits *Limits `json:"limits,omitempty"`
	// Label is the container's name in metrics, when it is not Name
	// (a user's: USER/NAME), and Uid the user whose container it is
	// (a view the daemon serves a user).
	Label string `json:"label,omitempty"`
	Uid   int    `json:"uid,omitempty"`
	// NSPid (enter, from a user): the process to put into the
	// container's cgroups, by its id in the container's pid namespace.
	NSPid int `json:"nspid,omitempty"`
	// File is the descriptor sent with the request (agent's listener);
	// the handler owns it.
	File *os.File `json:"-"`
	// Files are the descriptors a user's request came with (adopt: a
	// pidfd of the container's init, then its user and pid namespaces);
	// the handler owns them.
	Files []*os.File `json:"-"`
}

// Limits are what a container may use: 0 is none.
type Limits struct {
	Memory int64   `json:"memory,omitempty"` // bytes
	Pids   int64   `json:"pids,omitempty"`
	CPUs   float64 `json:"cpus,omitempty"`
}

// Answer is a server's reply.
type Answer struct {
	Error string `json:"error,omitempty"`
	// Usage marks an Error that is the asker's mistake (exit status 2).
	Usage bool       `json:"usage,omitempty"`
	Views []ViewInfo `json:"views,omitempty"`
	Init  int        `json:"init,omitempty"`
	// Stats is what a user's containers use (the user socket's stats).
	Stats []Stats `json:"stats,omitempty"`
	// PauseMicros is how long an upgrade left the connections unserved.
	PauseMicros int64 `json:"pause_us,omitempty"`
	// Retry says the server is handing over to the next one: the same
	// request, asked again, reaches that one (Ask does it).
	Retry bool `json:"retry,omitempty"`
	// Then runs once the answer is sent.
	Then func() `json:"-"`
	// Placed, when set, waits for the asker's word once the answer is
	// sent (Request.Confirm): it is told whether the asker put what it
	// was given in place; no word within ConfirmWait, or the
	// connection's end, is a no.
	Placed func(ok bool) `json:"-"`
}

// ConfirmWait bounds how long a server waits for an asker's word after
// an answer that asks for one.
var ConfirmWait = time.Minute

// placedWord is an asker's word that it put the view in place.
const placedWord = "placed"

// ViewInfo is one served view in a list.
type ViewInfo struct {
	Name  string `json:"name"`
	Owner int    `json:"owner"`
}

// Stats is what one container uses, as its host cgroups say; a value
// the host does not keep (no such controller, no limit) is absent.
type Stats struct {
	Name       string   `json:"name"`
	CPUSeconds *float64 `json:"cpu_seconds,omitempty"`
	Memory     *float64 `json:"memory,omitempty"`
	MemoryMax  *float64 `json:"memory_max,omitempty"`
	Pids       *float64 `json:"pids,omitempty"`
	PidsMax    *float64 `json:"pids_max,omitempty"`
	Frozen     *float64 `json:"frozen,omitempty"`
	OOMKills   *float64 `json:"oom_kills,omitempty"`
}

// Handler answers a request from the host process peer; a descriptor it
// returns goes with the answer (and is closed after).
type Handler func(req Request, peer int) (Answer, *os.File)

// Serve listens on path (made 0600, in a 0700 directory) and answers
// each connection with h until the listener is closed.
func Serve(path string, h Handler, log *slog.Logger) (net.Listener, error) {
	ln, err := Listen("unixpacket", path)
	if err != nil {
		return nil, err
	}
	ServeOn(ln, h, log)
	return ln, nil
}

// ServeOn answers each connection to ln (a unixpacket listener) with h
// until ln is closed.
func ServeOn(ln *net.UnixListener, h Handler, log *slog.Logger) {
	go AcceptEach(ln, func(c *net.UnixConn) { answer(c, h, log) })
}

func answer(c *net.UnixConn, h Handler, log *slog.Logger) {
	defer c.Close()
	// The request is read before anything is judged, so that a refused
	// asker is not left writing into a closed socket.
	buf, oob := make([]byte, 64<<10), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	in := received(oob[:oobn])
	cred, err := peerCred(c)
	if err != nil || cred.Uid != 0 {
		// The sockets are root's alone anyway; the kernel tells who asks.
		if err == nil {
			log.Warn("refused a control request: only host root may ask", "uid", cred.Uid, "pid", cred.Pid)
		}
		writeAnswer(c, Answer{Error: "only root may ask cgfs", Usage: true}, nil, log)
		if in != nil {
			in.Close()
		}
		return
	}
	var req Request
	if err := json.Unmarshal(buf[:n], &req); err != nil {
		writeAnswer(c, Answer{Error: "a request cgfs does not understand: " + err.Error(), Usage: true}, nil, log)
		if in != nil {
			in.Close()
		}
		return
	}
	req.File = in
	if in != nil && req.Op != "agent" {
		in.Close() // only agent takes one
		req.File = nil
	}
	a, fd := h(req, int(cred.Pid))
	writeAnswer(c, a, fd, log)
	if a.Then != nil {
		a.Then()
	}
	if a.Placed != nil {
		_ = c.SetReadDeadline(time.Now().Add(ConfirmWait))
		n, err := c.Read(buf)
		a.Placed(err == nil && string(buf[:n]) == placedWord)
	}
}

// received is the one descriptor a message carried, if it did.
func received(oob []byte) *os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		return nil
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil
	}
	unix.CloseOnExec(fds[0])
	return os.NewFile(uintptr(fds[0]), "from the asker")
}

// ErrNotRunning means nothing listens on the socket.
var ErrNotRunning = errors.New("not running")

// Ask sends req to the server at path and returns its answer and the
// descriptor that came with it, if any.
func Ask(path string, req Request) (Answer, *os.File, error) { return AskWith(path, req, nil) }

// retryFor bounds how long Ask asks again a server that says it is
// handing over (Answer.Retry): a hand-over takes milliseconds.
const retryFor = 10 * time.Second

// AskWith is Ask with the descriptor f sent along (for agent). A server
// handing over to the next one is asked again until the next answers.
func AskWith(path string, req Request, f *os.File) (Answer, *os.File, error) {
	deadline := time.Now().Add(retryFor)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		a, fd, err := askOnce(path, req, f)
		if err != nil || !a.Retry || time.Now().After(deadline) {
			return a, fd, err
		}
		if fd != nil {
			fd.Close()
		}
		time.Sleep(wait)
	}
}

// AskConfirm is Ask for a request with Confirm set: placed must be
// called once with whether the asker put what came in place (the server
// drops it otherwise); it ends the connection.
func AskConfirm(path string, req Request) (a Answer, f *os.File, placed func(ok bool), err error) {
	req.Confirm = true
	deadline := time.Now().Add(retryFor)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		c, a, fd, err := ask(path, req, nil)
		if err != nil {
			return a, fd, nil, err
		}
		if !a.Retry || time.Now().After(deadline) {
			return a, fd, confirmer(c), nil
		}
		c.Close()
		if fd != nil {
			fd.Close()
		}
		time.Sleep(wait)
	}
}

// confirmer says on c whether the asker put the view in place. A "no"
// waits (within ConfirmWait) for the server to end the connection, which
// it does once it dropped what it gave: the asker that goes on sees
// nothing of it served.
func confirmer(c *net.UnixConn) func(ok bool) {
	var once sync.Once
	return func(ok bool) {
		once.Do(func() {
			defer c.Close()
			if ok {
				_, _ = c.Write([]byte(placedWord))
				return
			}
			if c.CloseWrite() != nil {
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(ConfirmWait))
			_, _ = io.Copy(io.Discard, c)
		})
	}
}

func askOnce(path string, req Request, f *os.File) (Answer, *os.File, error) {
	c, a, fd, err := ask(path, req, f)
	if c != nil {
		c.Close()
	}
	return a, fd, err
}

// ask sends req and reads the answer, leaving the connection open (nil
// if it failed).
func ask(path string, req Request, f *os.File) (*net.UnixConn, Answer, *os.File, error) {
	c, a, fd, err := askOn(path, req, f)
	if err != nil && c != nil {
		c.Close()
		c = nil
	}
	return c, a, fd, err
}

func askOn(path string, req Request, f *os.File) (*net.UnixConn, Answer, *os.File, error) {
	var files []*os.File
	if f != nil {
		files = []*os.File{f}
	}
	return askFiles(path, req, files)
}

// askFiles sends req with files and reads the answer, leaving the
// connection open.
func askFiles(path string, req Request, files []*os.File) (*net.UnixConn, Answer, *os.File, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) {
			return nil, Answer{}, nil, fmt.Errorf("%s: %w", path, ErrNotRunning)
		}
		return nil, Answer{}, nil, err
	}
	b, _ := json.Marshal(req)
	var rights []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		rights = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, rights, nil); err != nil {
		return c, Answer{}, nil, err
	}
	buf := make([]byte, 1<<20)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return c, Answer{}, nil, err
	}
	fd := received(oob[:oobn])
	var a Answer
	if err := json.Unmarshal(buf[:n], &a); err != nil {
		if fd != nil {
			fd.Close()
		}
		return c, Answer{}, nil, fmt.Errorf("the answer: %w", err)
	}
	return c, a, fd, nil
}

// Err is the answer's error, if it carries one.
func (a Answer) Err() error {
	if a.Error == "" {
		return nil
	}
	if a.Usage {
		return UsageError(a.Error)
	}
	return errors.New(a.Error)
}

// UsageError is an error that is the asker's mistake.
type UsageError string

func (e UsageError) Error() string { return string(e) }

// Listen listens on a unix socket at path (network unix or unixpacket)
// that only root may use, in a directory only root may enter; a stale
// socket left there is replaced, a live one is an error.
func Listen(network, path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if c, err := net.Dial(network, path); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: something listens there already", path)
	}
	_ = os.Remove(path)
	ln, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	// A daemon handing over to the next closes its listeners while the
	// next binds the same paths: the owner removes the file itself.
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// AcceptEach serves each connection to ln on a goroutine of its own,
// until ln is closed.
func AcceptEach(ln *net.UnixListener, serve func(*net.UnixConn)) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return // closed
		}
		go serve(c)
	}
}
