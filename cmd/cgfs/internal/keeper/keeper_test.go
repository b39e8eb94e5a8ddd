package keeper

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
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
	if os.Getenv("KEEPER_TEST_ROLE") == "server" {
		os.Exit(server())
	}
	os.Exit(m.Run())
}

func server() int {
	l, err := Dial()
	if err != nil || l == nil {
		return 3
	}
	var items []Msg
	for {
		m, err := l.Recv()
		if err != nil {
			return 4
		}
		if m.Op == "end" {
			break
		}
		items = append(items, m)
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
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
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
	k := &Keeper{Log: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil)), Command: func() *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "KEEPER_TEST_ROLE=server")
		cmd.ExtraFiles = []*os.File{w}
		return cmd
	}}
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
