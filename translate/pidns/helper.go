package pidns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

// helper is the server's side of a helper process in a pid namespace.
// Calls to it may be in flight together (up to helperInflight): each
// request carries an id its answer names, so the kernel's moves, which
// it serialises itself, are all that waits in line, not the round trips
// (the kernel selftests' 100 children moving themselves at once).
type helper struct {
	// conn is a SOCK_SEQPACKET socket, one message per request and per
	// answer, in the netpoller: a Close wakes its reader.
	conn *os.File
	cmd  *exec.Cmd
	// procfs is the namespace's own proc filesystem, reached through the
	// helper's root; procs reads tasks there, by their ids there.
	procfs *os.File
	procs  *proc.Procs
	used   int // for eviction, under Pool.mu
	// users are the requests using it, retired says the pool let go of
	// it while some did (it ends with the last), pool is whose it is:
	// under Pool.mu.
	users   int
	retired bool
	pool    *Pool
	// timeout bounds each call's wait for its answer (helperTimeout).
	timeout time.Duration

	slots   chan struct{} // one per call in flight
	mu      sync.Mutex    // guards next and pending
	next    uint64
	pending map[uint64]chan syscall.Errno // closed: the helper is gone
	broken  atomic.Bool
	exited  chan struct{} // closed once the helper is reaped
}

// ErrHelperGone fails a call whose helper ended before answering: its
// pid namespace ended (its init died, taking every task of it along, the
// writer too) or it was killed.
var ErrHelperGone = errors.New("helper gone")

// helperInflight bounds the calls in flight to one helper: as many
// moves as a container's processes make at once wait for a slot here,
// not in the helper.
const helperInflight = 16

func newHelper(conn *os.File, cmd *exec.Cmd) *helper {
	return &helper{conn: conn, cmd: cmd, timeout: helperTimeout, slots: make(chan struct{}, helperInflight),
		pending: map[uint64]chan syscall.Errno{}, exited: make(chan struct{})}
}

// ready waits for the helper to mount the namespace's proc filesystem,
// opens it, and starts reading the helper's answers.
func (h *helper) ready() error {
	buf := make([]byte, 256)
	_ = h.conn.SetReadDeadline(time.Now().Add(h.timeout))
	n, err := h.conn.Read(buf)
	_ = h.conn.SetReadDeadline(time.Time{})
	if err != nil || string(buf[:n]) != "ready" {
		return fmt.Errorf("helper did not start: %q %v", buf[:n], err)
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/root/proc", h.cmd.Process.Pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("the helper's proc filesystem: %w", err)
	}
	h.procfs = os.NewFile(uintptr(fd), "helper proc")
	h.procs, err = proc.Open(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err == nil {
		go h.answers()
	}
	return err
}

// answers hands each answer of the helper to the call waiting for it,
// until the connection ends; then every call still waiting fails.
func (h *helper) answers() {
	buf := make([]byte, 64)
	for {
		n, err := h.conn.Read(buf)
		if err != nil || n == 0 {
			break
		}
		idText, errnoText, _ := strings.Cut(string(buf[:n]), "\x00")
		id, ierr := strconv.ParseUint(idText, 10, 64)
		e, eerr := strconv.Atoi(errnoText)
		if ierr != nil || eerr != nil {
			break // not the helper speaking
		}
		h.mu.Lock()
		ch := h.pending[id]
		delete(h.pending, id)
		h.mu.Unlock()
		if ch != nil {
			ch <- syscall.Errno(e)
		}
	}
	h.broken.Store(true)
	h.mu.Lock()
	for id, ch := range h.pending {
		close(ch)
		delete(h.pending, id)
	}
	h.mu.Unlock()
}

func (h *helper) dead() bool { return h.broken.Load() }

// Release ends a request's use of the helper (Mover.Release).
func (h *helper) Release() { h.pool.release(h) }

// close ends the helper and reaps it: a helper left to be reaped by
// whoever inherits it would hold up the end of the container's pid
// namespace (the kernel waits for every task of it to be reaped).
func (h *helper) close() {
	h.broken.Store(true)
	h.conn.Close() // the helper exits at end of file
	if h.procfs != nil {
		h.procfs.Close()
	}
	if h.procs != nil {
		h.procs.Close() // its task cache's epoll set
	}
	select {
	case <-h.exited:
	case <-time.After(time.Second):
		_ = h.cmd.Process.Kill()
		<-h.exited
	}
}

func (h *helper) Pin(n int) (*proc.Pin, error) { return h.procs.Pin(n) }

func (h *helper) Write(root int, rel string, n int) error {
	return h.call(rel, n, nil, "W", strconv.Itoa(root), rel, strconv.Itoa(n))
}

func (h *helper) WriteFile(f *os.File, n int) error {
	return h.call(f.Name(), n, f, "F", strconv.Itoa(n))
}

func (h *helper) MoveAll(root int, from, to string) error {
	return h.call(from, -1, nil, "M", strconv.Itoa(root), from, to)
}

// call sends one request (and fd, if any) and waits for its errno.
func (h *helper) call(what string, n int, fd *os.File, fields ...string) error {
	select {
	case h.slots <- struct{}{}:
	case <-h.exited:
		return ErrHelperGone
	}
	defer func() { <-h.slots }()
	ch := make(chan syscall.Errno, 1)
	h.mu.Lock()
	if h.broken.Load() {
		h.mu.Unlock()
		return ErrHelperGone
	}
	h.next++
	id := h.next
	h.pending[id] = ch
	h.mu.Unlock()
	forget := func() {
		h.mu.Lock()
		delete(h.pending, id)
		h.mu.Unlock()
	}
	var oob []byte
	if fd != nil {
		oob = unix.UnixRights(int(fd.Fd()))
	}
	msg := []byte(strconv.FormatUint(id, 10) + "\x00" + strings.Join(fields, "\x00"))
	if err := h.send(msg, oob); err != nil {
		forget()
		h.broken.Store(true)
		return fmt.Errorf("helper: %w", err)
	}
	timer := time.NewTimer(h.timeout)
	defer timer.Stop()
	var e syscall.Errno
	select {
	case got, ok := <-ch:
		if !ok {
			return ErrHelperGone
		}
		e = got
	case <-timer.C:
		forget()
		h.broken.Store(true) // replaced at its next use
		return fmt.Errorf("helper did not answer in time")
	}
	if e != 0 {
		data := ""
		if n >= 0 {
			data = strconv.Itoa(n)
		}
		return &host.Error{Op: "write", Path: what, Data: data, Err: e}
	}
	return nil
}

// send writes one request, with its descriptors, through the netpoller.
func (h *helper) send(msg, oob []byte) error {
	rc, err := h.conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), msg, oob, nil, 0)
		return serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	return serr
}

// IsHelper reports whether this process was started as a helper; the
// cgfs command then runs HelperMain and nothing else.
func IsHelper() bool { return os.Getenv(helperEnv) != "" }

// HelperMain is a helper process: descriptor 3 is its connection to the
// server, 4 and on the view roots. It mounts its pid namespace's proc
// filesystem over /proc (its mount namespace is private) and then writes
// ids as asked until the server goes.
func HelperMain() int {
	// Named for what it is where the container sees it (the exec of
	// /proc/self/exe named it "exe"): the process's comm, which is its
	// leader thread's, whatever thread this is.
	_ = os.WriteFile("/proc/self/comm", []byte(HelperName), 0)
	nroots, _ := strconv.Atoi(os.Getenv(helperEnv))
	conn := 3
	roots := make([]*host.Host, nroots)
	for i := range roots {
		roots[i] = host.FromFile(os.NewFile(uintptr(4+i), "root"+strconv.Itoa(i)))
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		_, _ = unix.Write(conn, []byte("mount proc: "+err.Error()))
		return 1
	}
	if _, err := unix.Write(conn, []byte("ready")); err != nil {
		return 1
	}
	// Each request is carried out on a goroutine of its own and
	// answered with its id: the server bounds how many are in flight.
	var answer sync.Mutex
	for {
		buf := make([]byte, 3*4096)
		oob := make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := unix.Recvmsg(conn, buf, oob, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return 0 // the server is gone
		}
		id, req, _ := strings.Cut(string(buf[:n]), "\x00")
		go func() {
			errno := serve(roots, strings.Split(req, "\x00"), oob[:oobn])
			answer.Lock()
			defer answer.Unlock()
			_, _ = unix.Write(conn, []byte(id+"\x00"+strconv.Itoa(int(errno))))
		}()
	}
}

// serve carries one request out in the helper and returns its errno.
func serve(roots []*host.Host, f []string, oob []byte) syscall.Errno {
	arg := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	root := func() *host.Host {
		i, err := strconv.Atoi(arg(1))
		if err != nil || i < 0 || i >= len(roots) {
			return nil
		}
		return roots[i]
	}
	switch arg(0) {
	case "W": // W root rel id
		r := root()
		if r == nil {
			return unix.EINVAL
		}
		_, err := r.WriteFile(arg(2), []byte(arg(3)))
		return errnoIn(err)
	case "F": // F id, with a descriptor
		msgs, err := unix.ParseSocketControlMessage(oob)
		if err != nil || len(msgs) != 1 {
			return unix.EINVAL
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			return unix.EINVAL
		}
		defer unix.Close(fds[0])
		_, err = unix.Pwrite(fds[0], []byte(arg(1)), 0)
		return errnoIn(err)
	case "M": // M root from to
		r := root()
		if r == nil {
			return unix.EINVAL
		}
		err := moveAll(r.ReadFile, func(rel string, n int) error {
			_, err := r.WriteFile(rel, []byte(strconv.Itoa(n)))
			return err
		}, arg(2), arg(3))
		return errnoIn(err)
	}
	return unix.EINVAL
}

func errnoIn(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return unix.EIO
}
