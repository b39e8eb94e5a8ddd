package pidns

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

func TestMain(m *testing.M) {
	if IsHelper() { // the test binary is the helper, as cgfs is
		os.Exit(HelperMain())
	}
	// A race-built helper (this binary under -race) sleeps a second at
	// its exit unless GORACE says not to, which it takes from the server.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	os.Exit(m.Run())
}

// TestHelperTakesTheServersGORACE: a helper's environment is its own
// (nothing of the server's leaks into a container's pid namespace) but
// for the race detector's options, where the server has them.
func TestHelperTakesTheServersGORACE(t *testing.T) {
	t.Setenv("GORACE", "log_path=/tmp/x halt_on_error=1")
	t.Setenv("SECRET", "server's")
	env := helperEnviron(2)
	if !slices.Contains(env, "GORACE=log_path=/tmp/x halt_on_error=1") || !slices.Contains(env, helperEnv+"=2") {
		t.Errorf("helperEnviron = %q, want the roots and the server's GORACE", env)
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "SECRET=") {
			t.Errorf("helperEnviron = %q carries the server's other variables", env)
		}
	}
	os.Unsetenv("GORACE")
	for _, kv := range helperEnviron(1) {
		if strings.HasPrefix(kv, "GORACE=") {
			t.Errorf("a server without GORACE gave its helper %s", kv)
		}
	}
}

// TestHelperResolvesIDsInItsNamespace: in a new pid namespace whose
// init is a sleep, id 1 is that sleep, not the host's init, for both the
// pin and the write.
// poolInNewPidNS is a Pool for a sleep in a pid namespace of its own
// (ended with the test).
func poolInNewPidNS(t *testing.T) *Pool {
	t.Helper()
	return poolInNewPidNSWith(t, nil)
}

// poolInNewPidNSWith is poolInNewPidNS drawing on budget (nil: its own).
func poolInNewPidNSWith(t *testing.T, budget *Budget) *Pool {
	t.Helper()
	th, open := sleeperInNewPidNS(t)
	procs, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	pool, err := NewPool(procs, ns, th, budget)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return pool
}

// sleeperInNewPidNS starts a sleep as the init of a pid namespace of its
// own, ended with the test, and returns it and how to open its pid
// namespace (as a writer's is opened).
func sleeperInNewPidNS(t *testing.T) (proc.Thread, func() (*os.File, error)) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: a pid namespace needs root")
		}
		t.Skip("a pid namespace needs root")
	}
	sleep := exec.Command("sleep", "1000")
	sleep.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })
	procs, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	defer procs.Close()
	th, err := procs.Thread(sleep.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return th, func() (*os.File, error) { return os.Open("/proc/" + strconv.Itoa(sleep.Process.Pid) + "/ns/pid") }
}

// TestEvictionSparesHelpersInUse: at its bound, a container's pool makes
// no room for a new pid namespace's helper by ending one a request still
// uses (whose /proc that request pins tasks through): the new one waits
// (EAGAIN, ErrTooManyHelpers) until that request is done, then takes
// its place.
func TestEvictionSparesHelpersInUse(t *testing.T) {
	budget := NewBudget(1)
	pool := poolInNewPidNSWith(t, budget)
	x, openX := sleeperInNewPidNS(t)
	y, openY := sleeperInNewPidNS(t)
	mx, err := pool.For(x, openX)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.For(y, openY); !errors.Is(err, ErrTooManyHelpers) {
		t.Fatalf("a second namespace's helper while the only one is in use: %v, want ErrTooManyHelpers", err)
	}
	pin, err := mx.Pin(1)
	if err != nil {
		t.Fatalf("the helper in use, after another namespace asked: %v", err)
	}
	if ppid, err := pin.Parent(); err != nil || ppid != 0 {
		t.Errorf("id 1 through the helper in use has parent %d, %v; want its namespace's init (0)", ppid, err)
	}
	pin.Close()
	mx.Release()
	// (Starts are rate-limited too: a second one within half a second of
	// the first waits for its token.)
	my, err := pool.For(y, openY)
	for deadline := time.Now().Add(5 * time.Second); errors.Is(err, ErrTooManyStarts) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		my, err = pool.For(y, openY)
	}
	if err != nil {
		t.Fatalf("the second namespace's helper once the first is done: %v", err)
	}
	my.Release()
	if live, _ := budget.Live(); live != 1 {
		t.Errorf("the budget counts %d helpers, want 1 (the first ended)", live)
	}
}

func TestHelperResolvesIDsInItsNamespace(t *testing.T) {
	pool := poolInNewPidNS(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := host.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	i := pool.AddRoot(root)
	m, err := pool.Owner()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*helper); !ok {
		t.Fatalf("the owner's Mover in a pid namespace below the server's is %T, want a helper", m)
	}
	pin, err := m.Pin(1)
	if err != nil {
		t.Fatal(err)
	}
	defer pin.Close()
	if ppid, err := pin.Parent(); err != nil || ppid != 0 {
		t.Errorf("id 1 there has parent %d, %v; want 0 (an init whose parent is outside)", ppid, err)
	}
	if _, err := m.Pin(4242); err == nil {
		t.Error("Pin of an id the namespace does not have succeeded")
	}
	if err := m.Write(i, "cgroup.procs", 1); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")); string(b) != "1" {
		t.Errorf("the helper wrote %q, want 1", b)
	}
	// The server's own namespace needs no helper.
	if m, _ := pool.For(proc.Thread{Level: 0}, nil); m == nil {
		t.Error("no Mover for the server's namespace")
	} else if _, ok := m.(inline); !ok {
		t.Errorf("the Mover of the server's namespace is %T, want the server itself", m)
	}
}

// TestHelperStartsAreRateLimited: a burst of MaxHelpers starts, then
// HelperStarts a second, however many helpers ended meanwhile.
func TestHelperStartsAreRateLimited(t *testing.T) {
	b := NewBudget(0)
	for i := range MaxHelpers {
		if err := b.take(); err != nil {
			t.Fatalf("start %d of the burst: %v", i+1, err)
		}
		b.give()
	}
	if err := b.take(); err != ErrTooManyStarts {
		t.Errorf("a start past the burst: %v, want ErrTooManyStarts", err)
	}
	b.lastStart = b.lastStart.Add(-time.Second) // a second passes
	for i := range int(HelperStarts) {
		if err := b.take(); err != nil {
			t.Errorf("start %d of the next second: %v", i+1, err)
		}
		b.give()
	}
	if err := b.take(); err != ErrTooManyStarts {
		t.Errorf("more starts in a second than HelperStarts: %v, want ErrTooManyStarts", err)
	}
}

// TestBudgetBoundsLiveHelpers: a container's pools together hold at
// most its bound of helpers; one that ends makes room.
func TestBudgetBoundsLiveHelpers(t *testing.T) {
	b := NewBudget(3)
	for i := range 3 {
		if err := b.take(); err != nil {
			t.Fatalf("helper %d of 3: %v", i+1, err)
		}
	}
	if err := b.take(); err != ErrTooManyHelpers {
		t.Errorf("a 4th helper with a bound of 3: %v, want ErrTooManyHelpers", err)
	}
	if n, max := b.Live(); n != 3 || max != 3 {
		t.Errorf("Live() = %d, %d, want 3, 3", n, max)
	}
	b.give()
	b.lastStart = b.lastStart.Add(-time.Second) // a start's token comes back
	if err := b.take(); err != nil {
		t.Errorf("a helper after one ended: %v", err)
	}
}

// TestHelperIsNamedForWhatItIs: where the container lists its processes
// (ps reads comm and cmdline), a helper is cgfs-pidns-helper, not
// /proc/self/exe; and glibc keeps its malloc to one arena (64 MiB of
// address space a thread otherwise, in the container's ps VSZ).
func TestHelperIsNamedForWhatItIs(t *testing.T) {
	pool := poolInNewPidNS(t)
	m, err := pool.Owner()
	if err != nil {
		t.Fatal(err)
	}
	h, ok := m.(*helper)
	if !ok {
		t.Fatalf("the owner's Mover is %T, want a helper", m)
	}
	dir := "/proc/" + strconv.Itoa(h.cmd.Process.Pid)
	for _, c := range []struct{ file, want string }{
		{"comm", "cgfs-pidns-help\n"}, // the kernel keeps 15 bytes
		{"cmdline", HelperName + "\x00"},
	} {
		if b, err := os.ReadFile(filepath.Join(dir, c.file)); err != nil || string(b) != c.want {
			t.Errorf("the helper's %s = %q, %v; want %q", c.file, b, err, c.want)
		}
	}
	env, err := os.ReadFile(filepath.Join(dir, "environ"))
	if err != nil || !strings.Contains("\x00"+string(env), "\x00MALLOC_ARENA_MAX=1\x00") {
		t.Errorf("the helper's environment = %q, %v; want MALLOC_ARENA_MAX=1 in it", env, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "VmSize") || strings.HasPrefix(line, "Threads") {
				t.Log(line)
			}
		}
	}
}

// TestCallOfAHelperThatNeverAnswersTimesOut: a helper that takes a
// request and never answers fails the call once its timeout passes, and
// is broken (replaced), instead of holding the caller forever.
func TestCallOfAHelperThatNeverAnswersTimesOut(t *testing.T) {
	conn, child, err := helperConn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer child.Close() // the helper's end: open, silent
	h := newHelper(conn, nil)
	h.timeout = 50 * time.Millisecond
	go h.answers()
	done := make(chan error, 1)
	go func() { done <- h.Write(0, "cgroup.procs", 1) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Write to a silent helper = nil, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write to a silent helper did not return")
	}
	if !h.dead() {
		t.Error("a helper that did not answer is not marked broken")
	}
}

// fakeHelper answers on the helper's end of conn: it reads want
// requests, then answers them in reverse order, each with the errno its
// id's request named in its third field (W root rel id: the "id"
// written is the errno to answer).
func fakeHelper(t *testing.T, child *os.File, want int) {
	t.Helper()
	type req struct{ id, errno string }
	var got []req
	buf := make([]byte, 4096)
	for len(got) < want {
		n, err := unix.Read(int(child.Fd()), buf)
		if err != nil || n == 0 {
			t.Errorf("fake helper: read: %v", err)
			return
		}
		f := strings.Split(string(buf[:n]), "\x00")
		if len(f) != 5 || f[1] != "W" {
			t.Errorf("fake helper: request %q", f)
			return
		}
		got = append(got, req{f[0], f[4]})
	}
	for i := len(got) - 1; i >= 0; i-- {
		if _, err := unix.Write(int(child.Fd()), []byte(got[i].id+"\x00"+got[i].errno)); err != nil {
			t.Errorf("fake helper: write: %v", err)
		}
	}
}

// TestCallsInFlightGetTheirOwnAnswers: calls made at once are all in
// flight together (the helper sees every request before it answers
// one), and each gets its own answer although they come back in another
// order.
func TestCallsInFlightGetTheirOwnAnswers(t *testing.T) {
	conn, child, err := helperConn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer child.Close()
	h := newHelper(conn, nil)
	go h.answers()
	const calls = helperInflight
	done := make(chan struct{})
	go func() { fakeHelper(t, child, calls); close(done) }()
	errs := make([]error, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.Write(0, "cgroup.procs", i) // errno i (0: none)
		}()
	}
	all := make(chan struct{})
	go func() { wg.Wait(); <-done; close(all) }()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatalf("the calls were not all in flight at once: the helper waits for %d requests", calls)
	}
	for i, err := range errs {
		var want error
		if i != 0 {
			want = syscall.Errno(i)
		}
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("call %d = %v, want %v", i, err, want)
		}
	}
	if h.dead() {
		t.Error("the helper is marked broken after answering every call")
	}
}

// TestCallsInFlightFailWhenTheHelperGoes: a helper that ends with calls
// in flight fails each of them at once, not after the timeout, and is
// broken.
func TestCallsInFlightFailWhenTheHelperGoes(t *testing.T) {
	conn, child, err := helperConn()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h := newHelper(conn, nil)
	h.timeout = time.Hour
	go h.answers()
	const calls = 4
	errs := make(chan error, calls)
	for i := range calls {
		go func() { errs <- h.Write(0, "cgroup.procs", i) }()
	}
	buf := make([]byte, 4096)
	for range calls { // every request has arrived
		if _, err := unix.Read(int(child.Fd()), buf); err != nil {
			t.Fatal(err)
		}
	}
	child.Close()
	for range calls {
		if err := <-errs; !errors.Is(err, ErrHelperGone) {
			t.Errorf("a call in flight when the helper went = %v, want helper gone", err)
		}
	}
	if !h.dead() {
		t.Error("a helper that went is not marked broken")
	}
}
