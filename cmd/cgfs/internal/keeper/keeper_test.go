package keeper

import (
	"bufio"
	"bytes"
	"encoding/json"
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
