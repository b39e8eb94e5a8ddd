package control

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func serveTest(t *testing.T, h Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sub", "c.sock")
	ln, err := Serve(path, h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return path
}

// TestAskCarriesRequestAnswerAndDescriptor: the handler sees the request
// and the asker's pid; the asker gets the answer and a working
// descriptor.
func TestAskCarriesRequestAnswerAndDescriptor(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("only root may ask; not root")
	}
	// What the handler saw, through a channel: the socket the answer
	// goes by orders nothing for the race detector.
	type seen struct {
		req  Request
		peer int
	}
	saw := make(chan seen, 1)
	path := serveTest(t, func(req Request, p int) (Answer, *os.File) {
		saw <- seen{req, p}
		r, w, err := os.Pipe()
		if err != nil {
			return Answer{Error: err.Error()}, nil
		}
		w.WriteString("through the socket")
		w.Close()
		return Answer{Init: 42, Views: []ViewInfo{{Name: "a", Owner: 7}}}, r
	})
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v; want mode 0600", st, err)
	}
	a, fd, err := Ask(path, Request{Op: "lookup", Name: "a"})
	if err != nil || a.Err() != nil {
		t.Fatal(err, a.Err())
	}
	sw := <-saw
	if got, peer := sw.req, sw.peer; got.Op != "lookup" || got.Name != "a" || peer != os.Getpid() {
		t.Errorf("handler saw %+v from pid %d, want lookup a from %d", got, peer, os.Getpid())
	}
	if a.Init != 42 || len(a.Views) != 1 || a.Views[0] != (ViewInfo{"a", 7}) {
		t.Errorf("answer %+v", a)
	}
	if fd == nil {
		t.Fatal("no descriptor came with the answer")
	}
	defer fd.Close()
	if b, _ := io.ReadAll(fd); string(b) != "through the socket" {
		t.Errorf("descriptor reads %q", b)
	}
}

// TestGarbageIsAUsageError: bytes that are not a request get an answer
// that says so, and the handler never runs.
func TestGarbageIsAUsageError(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("only root may ask; not root")
	}
	path := serveTest(t, func(Request, int) (Answer, *os.File) {
		t.Error("the handler ran for garbage")
		return Answer{}, nil
	})
	for _, junk := range [][]byte{[]byte("{\"op\":"), []byte("\x00\xff"), []byte(strings.Repeat("[", 70000))} {
		c, err := net.Dial("unixpacket", path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(junk); err != nil {
			c.Close()
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		var a Answer
		if err := json.Unmarshal(buf[:n], &a); err != nil || !a.Usage || !strings.Contains(a.Error, "does not understand") {
			t.Errorf("%d garbage bytes: answer %s (%v)", len(junk), buf[:n], err)
		}
	}
}

// TestOnlyRootMayAsk: a non-root asker is turned away even if it can
// reach the socket.
func TestOnlyRootMayAsk(t *testing.T) {
	if os.Getenv("CGFS_CONTROL_ASK") != "" {
		a, _, err := Ask(os.Getenv("CGFS_CONTROL_ASK"), Request{Op: "list"})
		if err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		os.Stdout.WriteString(a.Error)
		os.Exit(0)
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to ask as another user")
	}
	path := serveTest(t, func(Request, int) (Answer, *os.File) {
		t.Error("the handler ran for a non-root asker")
		return Answer{}, nil
	})
	// Let nobody reach it: the refusal must come from the peer check.
	for p := path; p != os.TempDir(); p = filepath.Dir(p) {
		os.Chmod(p, 0o777)
		if p == "/" {
			break
		}
	}
	os.Chmod(path, 0o777)
	// The test binary sits in a directory only root may enter.
	exe := filepath.Join(filepath.Dir(path), "asker")
	b, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(exe, b, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^TestOnlyRootMayAsk$")
	cmd.Env = append(os.Environ(), "CGFS_CONTROL_ASK="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("asking as nobody: %v %s", err, err.(*exec.ExitError).Stderr)
	}
	if string(out) != "only root may ask cgfs" {
		t.Errorf("nobody was answered %q", out)
	}
}

// TestConfirm: an answer that waits for the asker's word (Placed) is
// told yes when the asker says it put what came in place, and no when it
// says not or ends without a word.
func TestConfirm(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("only root may ask; not root")
	}
	told := make(chan bool, 1)
	path := serveTest(t, func(req Request, _ int) (Answer, *os.File) {
		if !req.Confirm {
			t.Errorf("the request %+v does not ask to confirm", req)
		}
		return Answer{Placed: func(ok bool) { told <- ok }}, nil
	})
	for _, c := range []struct {
		name string
		word func(placed func(bool))
		want bool
	}{
		{"placed", func(placed func(bool)) { placed(true); placed(false) }, true},
		{"not placed", func(placed func(bool)) { placed(false) }, false},
	} {
		_, _, placed, err := AskConfirm(path, Request{Op: "attach"})
		if err != nil {
			t.Fatal(err)
		}
		c.word(placed)
		if got := <-told; got != c.want {
			t.Errorf("%s: the server was told %v, want %v", c.name, got, c.want)
		}
	}
	// An asker that dies before its word: a child that asks and exits.
	cmd := exec.Command(os.Args[0], "-test.run=^TestConfirmHelper$")
	cmd.Env = append(os.Environ(), "CONFIRM_HELPER_SOCKET="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the asker: %v\n%s", err, out)
	}
	if got := <-told; got {
		t.Error("an asker that ended without a word: the server was told yes")
	}
}

// TestConfirmHelper asks with Confirm and exits without a word (run by
// TestConfirm).
func TestConfirmHelper(t *testing.T) {
	path := os.Getenv("CONFIRM_HELPER_SOCKET")
	if path == "" {
		t.Skip("a helper of TestConfirm")
	}
	if _, _, _, err := AskConfirm(path, Request{Op: "attach"}); err != nil {
		t.Fatal(err)
	}
	os.Exit(0)
}

// TestConcurrentAsksRetriedThroughAHandOver: many askers at once, each
// told to retry a few times (a server handing over) before the next
// answers, each get their own answer and their own descriptor.
func TestConcurrentAsksRetriedThroughAHandOver(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("only root may ask; not root")
	}
	var mu sync.Mutex
	retried := map[string]int{}
	path := serveTest(t, func(req Request, _ int) (Answer, *os.File) {
		mu.Lock()
		n := retried[req.Name]
		retried[req.Name]++
		mu.Unlock()
		if n < 3 {
			return Answer{Error: "handing over", Retry: true}, nil
		}
		r, w, err := os.Pipe()
		if err != nil {
			return Answer{Error: err.Error()}, nil
		}
		w.WriteString(req.Name)
		w.Close()
		return Answer{Init: len(req.Name)}, r
	})
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := strings.Repeat("x", i+1)
			var a Answer
			var fd *os.File
			var err error
			if i%2 == 0 {
				a, fd, err = Ask(path, Request{Op: "lookup", Name: name})
			} else {
				var placed func(bool)
				a, fd, placed, err = AskConfirm(path, Request{Op: "attach", Name: name})
				if placed != nil {
					defer placed(true)
				}
			}
			if err != nil || a.Error != "" || a.Init != i+1 || fd == nil {
				t.Errorf("%s: %+v %v %v, want init %d and a descriptor", name, a, fd, err, i+1)
				return
			}
			defer fd.Close()
			if b, _ := io.ReadAll(fd); string(b) != name {
				t.Errorf("%s got the descriptor of %q", name, b)
			}
		}()
	}
	wg.Wait()
	for name, n := range retried {
		if n != 4 {
			t.Errorf("%s asked %d times, want 4 (3 retries)", name, n)
		}
	}
}
