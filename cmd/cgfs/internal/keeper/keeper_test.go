package keeper

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binary is also the server the keeper runs (KEEPER_TEST_ROLE):
// the first keeps a pipe's write end and dies; the next says what it
// was given by writing through it, and exits on SIGTERM.
func TestMain(m *testing.M) {
	switch os.Getenv("KEEPER_TEST_ROLE") {
	case "server":
		os.Exit(server())
	case "new":
		os.Exit(newServer())
	case "die":
		_, _, code := given()
		os.Exit(code + 1) // a server that cannot start
	}
	os.Exit(m.Run())
}

// given is a test server's start: its link and the items the keeper
// gave it up to end (code: an exit status, if that failed).
func given() (l *Link, items []Msg, code int) {
	l, err := Dial()
	if err != nil || l == nil {
		return nil, nil, 3
	}
	for {
		m, err := l.Recv()
		if err != nil {
			return nil, nil, 4
		}
		if m.Op == "end" {
			return l, items, 0
		}
		items = append(items, m)
	}
}

func server() int {
	l, items, code := given()
	if l == nil {
		return code
	}
	if len(items) == 0 { // the first: keep the pipe, then die
		w := os.NewFile(3+1, "pipe") // ExtraFiles[1]
		if err := l.Send(Msg{Op: "keep", Name: "p", Kind: "view", State: json.RawMessage(`{"n":1}`), Files: []*os.File{w}}); err != nil {
			return 5
		}
		return 1 // a crash: the keeper reads the message before the end

	}
	for _, it := range items {
		if len(it.Files) == 1 {
			_, _ = it.Files[0].WriteString(it.Name + " " + string(it.State) + "\n")
			it.Files[0].Close()
		}
	}
	return untilTerm()
}

// untilTerm waits for SIGTERM or SIGINT (a server's end).
func untilTerm() int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

// serverCommand makes a server of the test binary in role, with w as
// its ExtraFiles[1] (fd 4: the keeper's link is fd 3).
func serverCommand(role string, w *os.File) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "KEEPER_TEST_ROLE="+role)
		cmd.ExtraFiles = []*os.File{w}
		return cmd
	}
}

// TestKeeperRestartsWithWhatWasKept: a server that dies is replaced by
// one given every item the first kept, descriptors included.
func TestKeeperRestartsWithWhatWasKept(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var logs bytes.Buffer
	var mu sync.Mutex
	k := &Keeper{Log: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil)), Command: serverCommand("server", w)}
	done := make(chan error, 1)
	go func() { done <- k.Run() }()
	defer w.Close()
	got := make(chan string, 1)
	go func() {
		// The servers and the keeper hold the write end: a line, not EOF.
		line, _ := bufio.NewReader(r).ReadString('\n')
		got <- line
	}()
	var line string
	select {
	case line = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no server said what it was given")
	}
	if !strings.Contains(line, `p {"n":1}`) {
		t.Errorf("the second server was given %q, want the pipe kept as p with its state", line)
	}
	mu.Lock()
	l := logs.String()
	mu.Unlock()
	if strings.Count(l, "server started") < 2 || !strings.Contains(l, "exit status 1") {
		t.Errorf("the keeper did not restart the dead server:\n%s", l)
	}
	p, _ := os.FindProcess(os.Getpid())
	_ = p.Signal(os.Interrupt) // the keeper passes it on and ends with its server
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the keeper did not end with its server")
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// newServer is the role of the server an upgrade starts in
// TestItemsKeptDuringAnUpgradeReachTheNewServer: it says it is ready,
// then writes to the pipe (ExtraFiles[1]) the items it holds once told
// to go: those given at start, with the ones the keeper told of before
// go added or dropped.
func newServer() int {
	l, items, code := given()
	if l == nil {
		return code
	}
	pipe := os.NewFile(3+1, "pipe")
	held := map[string]bool{}
	for _, m := range items {
		held[m.Name] = true
	}
	if err := l.Send(Msg{Op: "ready"}); err != nil {
		return 5
	}
	for {
		m, err := l.Recv()
		if err != nil {
			return 6
		}
		switch m.Op {
		case "item":
			held[m.Name] = true
		case "drop":
			delete(held, m.Name)
		}
		for _, f := range m.Files {
			f.Close()
		}
		if m.Op == "go" {
			break
		}
	}
	var names []string
	for n := range held {
		names = append(names, n)
	}
	slices.Sort(names)
	_, _ = pipe.WriteString(strings.Join(names, " ") + "\n")
	return untilTerm()
}

// TestItemsKeptDuringAnUpgradeReachTheNewServer: what the old server
// keeps or drops while the new one prepares (a container attached, a
// view dropped) reaches the new one before it takes over, so no
// connection is left with nobody to serve it.
func TestItemsKeptDuringAnUpgradeReachTheNewServer(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	k := &Keeper{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Command: serverCommand("new", w)}
	k.kept = map[string]*item{}
	k.events = make(chan event, 64)
	// The old server is this test, at the other end of a link.
	mine, theirs, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	c, err := net.FileConn(theirs)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	oldEnd := &Link{c: c.(*net.UnixConn)}
	defer oldEnd.Close()
	old := &child{cmd: exec.Command("true"), link: mine, started: time.Now()}
	k.cur = old
	file := func() []*os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		return []*os.File{f}
	}
	k.handle(old, Msg{Op: "keep", Name: "view:a", Kind: "view", Files: file()})
	k.handle(old, Msg{Op: "keep", Name: "view:b", Kind: "view", Files: file()})
	k.handle(old, Msg{Op: "upgrade"})
	if k.up == nil {
		t.Fatal("no upgrade under way")
	}
	defer func() {
		_ = k.up.new.cmd.Process.Kill()
		_ = k.up.new.cmd.Wait()
	}()
	newer := k.up.new
	// While the new one prepares: c attached, a dropped, a socket taken.
	k.handle(old, Msg{Op: "keep", Name: "view:c", Kind: "view", Files: file()})
	k.handle(old, Msg{Op: "drop", Name: "view:a"})
	k.handle(old, Msg{Op: "keep", Name: "socket:unix:/x", Kind: "socket", Files: file()})
	ev := <-k.events
	if ev.err != nil || ev.c != newer || ev.msg.Op != "ready" {
		t.Fatalf("the new server did not say it is ready: %+v", ev)
	}
	k.handle(newer, ev.msg)
	m, err := oldEnd.Recv()
	if err != nil || m.Op != "drain" {
		t.Fatalf("the old server was not told to drain: %+v %v", m, err)
	}
	k.handle(old, Msg{Op: "drained"})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- s
	}()
	select {
	case got := <-line:
		if want := "socket:unix:/x view:b view:c\n"; got != want {
			t.Errorf("the new server took over %q, want %q", got, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the new server said nothing")
	}
}

// oldServer is the test as a keeper's current server: its end of a
// link, and the child the keeper knows it by (a process that ran).
func oldServer(t *testing.T, k *Keeper) (*child, *Link) {
	t.Helper()
	mine, theirs, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mine.Close() })
	c, err := net.FileConn(theirs)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	end := &Link{c: c.(*net.UnixConn)}
	t.Cleanup(func() { end.Close() })
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	old := &child{cmd: cmd, link: mine, started: time.Now()}
	k.cur = old
	return old, end
}

// newKeeper is a keeper whose servers are the test binary in role, with
// w as their ExtraFiles[1]; the test drives its events.
func newKeeper(role string, w *os.File) *Keeper {
	k := &Keeper{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Command: serverCommand(role, w)}
	k.kept = map[string]*item{}
	k.events = make(chan event, 64)
	return k
}

// nextEvent is the keeper's next event (a message of a server, or a
// server's end).
func nextEvent(t *testing.T, k *Keeper) event {
	t.Helper()
	select {
	case ev := <-k.events:
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event of the keeper's servers in 20 s")
	}
	panic("unreachable")
}

// recvWithin is l's next message, within 20 s.
func recvWithin(t *testing.T, l *Link) Msg {
	t.Helper()
	got := make(chan Msg, 1)
	go func() {
		m, err := l.Recv()
		if err != nil {
			m = Msg{Op: "error: " + err.Error()}
		}
		got <- m
	}()
	select {
	case m := <-got:
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("the server was told nothing in 20 s")
	}
	panic("unreachable")
}

// TestUpgradeWhoseNewServerDies: an upgrade whose new server dies before
// it takes over fails, told to whoever asked; the old server serves on
// as the keeper's, and the next upgrade may start.
func TestUpgradeWhoseNewServerDies(t *testing.T) {
	k := newKeeper("die", nil)
	old, oldEnd := oldServer(t, k)
	k.handle(old, Msg{Op: "upgrade"})
	if k.up == nil {
		t.Fatal("no upgrade under way")
	}
	newer := k.up.new
	// A second upgrade while one is under way is refused.
	k.handle(old, Msg{Op: "upgrade"})
	if m := recvWithin(t, oldEnd); m.Op != "done" || !strings.Contains(m.Error, "under way already") {
		t.Errorf("a second upgrade: the asker was told %+v, want refused", m)
	}
	ev := nextEvent(t, k)
	for ev.err == nil { // what it sent before it died
		ev = nextEvent(t, k)
	}
	if ev.c != newer {
		t.Fatalf("the end of %v, want the new server's", ev.c)
	}
	if done := k.exited(ev.c, ev.c.cmd.Wait(), false); done {
		t.Fatal("the keeper ended with the new server")
	}
	if m := recvWithin(t, oldEnd); m.Op != "done" || !strings.Contains(m.Error, "the new server exited") {
		t.Errorf("the asker was told %+v, want the upgrade failed", m)
	}
	if k.up != nil || k.cur != old {
		t.Errorf("after the failed upgrade: up %v, current %v; want none under way and the old one current", k.up, k.cur)
	}
	k.handle(old, Msg{Op: "upgrade"})
	if k.up == nil {
		t.Error("the next upgrade did not start")
	} else {
		_ = k.up.new.cmd.Process.Kill()
		_ = k.up.new.cmd.Wait()
	}
}

// TestOldServerDiesMidUpgrade: the old server dying while the new one
// prepares has the new one told go (with what the keeper holds) at once:
// the connections are not left without a server.
func TestOldServerDiesMidUpgrade(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	k := newKeeper("new", w)
	old, _ := oldServer(t, k)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	k.handle(old, Msg{Op: "keep", Name: "view:a", Kind: "view", Files: []*os.File{f}})
	k.handle(old, Msg{Op: "upgrade"})
	if k.up == nil {
		t.Fatal("no upgrade under way")
	}
	defer func() {
		_ = k.up.new.cmd.Process.Kill()
		_ = k.up.new.cmd.Wait()
	}()
	k.handle(old, Msg{Op: "keep", Name: "view:b", Kind: "view"}) // kept meanwhile
	if done := k.exited(old, errors.New("signal: killed"), false); done {
		t.Fatal("the keeper ended with the old server")
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- s
	}()
	select {
	case got := <-line:
		if got != "view:a view:b\n" {
			t.Errorf("the new server took over %q, want view:a view:b", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the new server was never told go")
	}
}

// TestKeeperLetsGoOfWhatItIsNotTold: a message the keeper does not take
// has its descriptors closed; a drained or listening message of a
// server that is not the one the upgrade waits for changes nothing.
func TestKeeperLetsGoOfWhatItIsNotTold(t *testing.T) {
	k := newKeeper("new", nil)
	old, _ := oldServer(t, k)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	k.handle(old, Msg{Op: "bogus", Files: []*os.File{w}})
	_ = r.SetReadDeadline(time.Now().Add(20 * time.Second))
	if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
		t.Errorf("the pipe read %q %v: the keeper kept a descriptor of a message it does not take", b, err)
	}
	k.handle(old, Msg{Op: "drained", States: map[string]json.RawMessage{"x": json.RawMessage(`1`)}})
	k.handle(old, Msg{Op: "listening"})
	k.handle(old, Msg{Op: "ready"})
	if k.up != nil || k.cur != old || len(k.kept) != 0 {
		t.Errorf("messages out of an upgrade changed the keeper: up %v, current %v, kept %v", k.up, k.cur, k.kept)
	}
}
