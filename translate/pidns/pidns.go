package pidns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

// A Mover moves tasks named by their ids in one pid namespace.
type Mover interface {
	// Pin pins the task numbered n in the namespace (ESRCH if none).
	Pin(n int) (*proc.Pin, error)
	// Write writes the id n to the file rel beneath view root root, in
	// one write(2) made from inside the namespace.
	Write(root int, rel string, n int) error
	// WriteFile writes the id n to the open host file f, from inside the
	// namespace.
	WriteFile(f *os.File, n int) error
	// MoveAll moves every process of cgroup from (beneath view root
	// root) that the namespace can see into cgroup to. Processes that
	// exit meanwhile are skipped.
	MoveAll(root int, from, to string) error
	// Release ends the caller's use: a helper the pool let go of
	// meanwhile (evicted, or found dead) ends with its last user, never
	// under one (its /proc, which Pin reads through, is closed then).
	Release()
}

// MaxHelpers bounds the helpers of one pool (one per pid namespace a
// writer is in); the least recently used one that is not the owner's
// makes way. Starting one costs the server a fork and exec, so a
// container that makes pid namespaces to write from gets at most
// HelperStarts a second (after a burst of MaxHelpers) and then EAGAIN.
const (
	MaxHelpers   = 8
	HelperStarts = 2.0
)

// ErrTooManyStarts refuses a helper start over the rate.
var ErrTooManyStarts = errors.New("helpers started too fast for this container")

// ErrTooManyHelpers refuses a helper when the container's budget holds
// as many as it may, all in use by other views of it.
var ErrTooManyHelpers = errors.New("the container holds as many pid namespace helpers as it may")

// Budget bounds the helpers of every pool of one container together
// (its own views' and its nested views'), and how fast they start: a
// container that mounts cgroupfs many times over does not get a pool's
// worth of helpers for each mount. Safe for concurrent use.
type Budget struct {
	max int

	mu        sync.Mutex
	live      int
	starts    float64 // a token bucket of helper starts
	lastStart time.Time
}

// NewBudget bounds one container's helpers at max (0: MaxHelpers).
func NewBudget(max int) *Budget {
	if max <= 0 {
		max = MaxHelpers
	}
	return &Budget{max: max}
}

// Live is how many helpers the container has, and its bound.
func (b *Budget) Live() (n, max int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.live, b.max
}

// take takes a helper start from the budget: ErrTooManyStarts over
// the rate, ErrTooManyHelpers at the bound.
func (b *Budget) take() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.live >= b.max {
		return ErrTooManyHelpers
	}
	now := time.Now()
	if b.lastStart.IsZero() {
		b.starts = float64(b.max)
	} else {
		b.starts = min(float64(b.max), b.starts+now.Sub(b.lastStart).Seconds()*HelperStarts)
	}
	b.lastStart = now
	if b.starts < 1 {
		return ErrTooManyStarts
	}
	b.starts--
	b.live++
	return nil
}

// full reports whether the budget is at its bound.
func (b *Budget) full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.live >= b.max
}

// give returns a helper that ended (or never started).
func (b *Budget) give() {
	b.mu.Lock()
	b.live--
	b.mu.Unlock()
}

// Pool gives, for the views of one container, the Mover of each pid
// namespace a writer is in. It is safe for concurrent use.
type Pool struct {
	procs  *proc.Procs
	budget *Budget
	roots  []*host.Host
	// owner is the owner's pid namespace (held open) and where it is.
	owner   *os.File
	ownerNS proc.NS
	ownerAt int // its level below the server's; 0: the server's own

	mu      sync.Mutex
	helpers map[proc.NS]*helper
	clock   int
}

// NewPool makes the pool of a view owner that reads task ids as owner,
// in the pid namespace ns (the pool holds a copy until Close); its
// helpers are taken from the container's budget (nil: one of its own).
func NewPool(procs *proc.Procs, ns *os.File, owner proc.Thread, budget *Budget) (*Pool, error) {
	fd, err := unix.FcntlInt(ns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if budget == nil {
		budget = NewBudget(0)
	}
	return &Pool{procs: procs, budget: budget, owner: os.NewFile(uintptr(fd), "owner pidns"), ownerNS: owner.PidNS,
		ownerAt: owner.Level, helpers: map[proc.NS]*helper{}}, nil
}

// Inline is the pool of a view of the server's own: every Mover is the
// server itself.
func Inline(procs *proc.Procs) *Pool {
	return &Pool{procs: procs, helpers: map[proc.NS]*helper{}}
}

// AddRoot makes h one of the pool's view roots and returns its index.
// All roots are added before the first helper starts.
func (p *Pool) AddRoot(h *host.Host) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roots = append(p.roots, h)
	return len(p.roots) - 1
}

// Owner is the Mover of the owner's pid namespace: leaf changes move the
// container's processes with it.
func (p *Pool) Owner() (Mover, error) {
	if p.ownerAt == 0 {
		return inline{p}, nil
	}
	return p.helper(p.ownerNS, func() (*os.File, error) { return p.owner, nil })
}

// For is the Mover of the pid namespace writer w names tasks in; open
// opens that namespace if a helper must be started there.
func (p *Pool) For(w proc.Thread, open func() (*os.File, error)) (Mover, error) {
	if w.Level == 0 {
		return inline{p}, nil
	}
	return p.helper(w.PidNS, open)
}

func (p *Pool) helper(ns proc.NS, open func() (*os.File, error)) (*helper, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clock++
	if h := p.helpers[ns]; h != nil && !h.dead() {
		h.used = p.clock
		h.users++
		return h, nil
	}
	if old := p.helpers[ns]; old != nil { // dead: it makes way
		p.closeLocked(ns, old)
	}
	if len(p.helpers) >= MaxHelpers || p.budget.full() {
		p.evictLocked()
	}
	if len(p.helpers) >= MaxHelpers {
		return nil, ErrTooManyHelpers // every one in use
	}
	if err := p.budget.take(); err != nil {
		return nil, err
	}
	f, err := open()
	if err != nil {
		p.budget.give()
		return nil, err
	}
	if f != p.owner {
		defer f.Close()
	}
	h, err := startHelper(f, p.roots)
	if err != nil {
		p.budget.give()
		return nil, err
	}
	h.used, h.pool, h.users = p.clock, p, 1
	p.helpers[ns] = h
	return h, nil
}

// closeLocked lets go of the helper h of namespace ns: it ends, and is
// given back to the budget, now, or with its last user (release).
func (p *Pool) closeLocked(ns proc.NS, h *helper) {
	delete(p.helpers, ns)
	if h.users > 0 {
		h.retired = true
		return
	}
	h.close()
	p.budget.give()
}

// release ends a use of h (Mover.Release).
func (p *Pool) release(h *helper) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.users--; h.users == 0 && h.retired {
		h.retired = false
		h.close()
		p.budget.give()
	}
}

// evictLocked lets go of the least recently used helper that no request
// uses, other than the owner's.
func (p *Pool) evictLocked() {
	var oldest proc.NS
	first := true
	for ns, h := range p.helpers {
		if ns == p.ownerNS || h.users > 0 {
			continue
		}
		if first || h.used < p.helpers[oldest].used {
			oldest, first = ns, false
		}
	}
	if !first {
		p.closeLocked(oldest, p.helpers[oldest])
	}
}

// Close ends every helper and releases the owner's namespace.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ns, h := range p.helpers { // the views are closed: no request uses them
		h.close()
		delete(p.helpers, ns)
		p.budget.give()
	}
	if p.owner != nil {
		p.owner.Close()
		p.owner = nil
	}
}

// inline moves tasks as the server: ids are the server's own.
type inline struct{ p *Pool }

func (m inline) Pin(n int) (*proc.Pin, error) { return m.p.procs.Pin(n) }

func (inline) Release() {}

func (m inline) Write(root int, rel string, n int) error {
	_, err := m.p.roots[root].WriteFile(rel, []byte(strconv.Itoa(n)))
	return err
}

func (m inline) WriteFile(f *os.File, n int) error {
	if _, err := f.WriteAt([]byte(strconv.Itoa(n)), 0); err != nil {
		return &host.Error{Op: "write", Path: f.Name(), Data: strconv.Itoa(n), Err: errnoOf(err)}
	}
	return nil
}

func (m inline) MoveAll(root int, from, to string) error {
	h := m.p.roots[root]
	return moveAll(func(rel string) ([]byte, error) { return h.ReadFile(rel) },
		func(rel string, n int) error { _, err := h.WriteFile(rel, []byte(strconv.Itoa(n))); return err }, from, to)
}

// moveAll moves every id in from/cgroup.procs into to/cgroup.procs.
func moveAll(read func(rel string) ([]byte, error), write func(rel string, n int) error, from, to string) error {
	b, err := read(host.Join(from, "cgroup.procs"))
	if err != nil {
		return err
	}
	for _, field := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(field)
		if err != nil {
			continue
		}
		if err := write(host.Join(to, "cgroup.procs"), n); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	return nil
}

func errnoOf(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// helperEnv makes the cgfs binary a helper (see IsHelper).
const helperEnv = "CGFS_PIDNS_HELPER"

// HelperName is what a helper is called where the container sees it
// (ps): its argv[0], and its comm as the kernel keeps it (15 bytes,
// "cgfs-pidns-help").
const HelperName = "cgfs-pidns-helper"

// helperEnviron is a helper's environment: helperEnv, and glibc's malloc
// kept to its main arena. The cgfs binary uses cgo, and glibc gives each
// thread that allocates an arena of its own, 64 MiB of address space
// apiece: most of a helper's size in the container's ps beside the Go
// runtime's own reservations (its heap's page summaries, ~1 GiB of
// PROT_NONE space no setting shrinks). The helper allocates next to
// nothing through malloc. A server built with the race detector passes
// its GORACE on (CI's race tier sets it, production never does): the
// helper is the same binary, whose race reports must go where the
// server's do, and whose exit must not take the race detector's second
// (atexit_sleep_ms) where the server's does not.
func helperEnviron(roots int) []string {
	env := []string{helperEnv + "=" + strconv.Itoa(roots), "MALLOC_ARENA_MAX=1"}
	if g, ok := os.LookupEnv("GORACE"); ok {
		env = append(env, "GORACE="+g)
	}
	return env
}

// helperTimeout bounds the wait for a helper's start and for each
// call's answer: a helper that hangs is broken and replaced, and the
// request waiting for it fails, instead of holding that FUSE request
// forever. Generous: the VM lane runs tens of times slower than a host.
const helperTimeout = 30 * time.Second

// helperConn makes the connection to a helper: the server's end,
// non-blocking (its reads wait in the netpoller, and a Close wakes
// them), and the helper's, blocking.
func helperConn() (conn, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("helper connection: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "helper"), os.NewFile(uintptr(fds[1]), "helper"), nil
}

// startHelper starts a helper in the pid namespace ns, holding roots.
func startHelper(ns *os.File, roots []*host.Host) (*helper, error) {
	conn, child, err := helperConn()
	if err != nil {
		return nil, err
	}
	defer child.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args[0] = HelperName
	cmd.Env = helperEnviron(len(roots))
	cmd.ExtraFiles = []*os.File{child}
	for _, r := range roots {
		cmd.ExtraFiles = append(cmd.ExtraFiles, r.Root())
	}
	cmd.Stderr = os.Stderr
	// A private mount namespace (Go makes / rprivate in it) for the
	// namespace's own proc filesystem.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	// The thread that enters the namespace has its children made there.
	err = proc.InNamespace(int(ns.Fd()), unix.CLONE_NEWPID, cmd.Start)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("starting a helper in the pid namespace: %w", err)
	}
	h := newHelper(conn, cmd)
	go func() {
		_ = cmd.Wait() // reaped here, not by whoever inherits it
		close(h.exited)
	}()
	if err := h.ready(); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}
