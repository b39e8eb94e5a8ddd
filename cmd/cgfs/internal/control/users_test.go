package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/testhost"
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
	"time"

	"golang.org/x/sys/unix"
)

func serveUsersTest(t *testing.T, h UserHandler, b UserBounds) (string, *testhost.Log) {
	t.Helper()
	testhost.NeedRoot(t, "the user socket's tests (the socket lives where root puts it)")
	path := filepath.Join(t.TempDir(), "run", "user.sock")
	ln, err := Listen("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	logs := &testhost.Log{}
	ServeUsers(ln, h, b, slog.New(slog.NewTextHandler(logs, nil)))
	return path, logs
}

// dial connects to the user socket without asking anything yet.
func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// answerOn sends a request on c and reads what comes back: the answer,
// or io.EOF when the server closed without one.
func answerOn(t *testing.T, c *net.UnixConn, req string) (Answer, error) {
	t.Helper()
	if _, err := c.Write([]byte(req)); err != nil {
		return Answer{}, err
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return Answer{}, err
	}
	if n == 0 {
		return Answer{}, io.EOF
	}
	var a Answer
	if err := json.Unmarshal(buf[:n], &a); err != nil {
		t.Fatalf("the answer %q: %v", buf[:n], err)
	}
	return a, nil
}

// untilClosed reads c until the server closes it: by then the server
// counts the connection no more.
func untilClosed(c *net.UnixConn) {
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, _ = io.Copy(io.Discard, c)
}

// TestUserConnectionsBoundedPerUser: a user holding as many connections
// as it may has more refused: each answered that it holds too many (as
// many of those at once as it may hold), any beyond closed at once;
// another user is served meanwhile; once the user's connections end, it
// is served again.
func TestUserConnectionsBoundedPerUser(t *testing.T) {
	if p := os.Getenv("CGFS_CONTROL_USER_ASK"); p != "" { // askAs's asker
		a, _, err := AskUser(p, Request{Op: "list"})
		if err != nil || a.Error != "" {
			fmt.Printf("%v %s", err, a.Error)
		} else {
			fmt.Printf("init=%d", a.Init)
		}
		os.Exit(0)
	}
	// The refused connections are held until they say what they ask,
	// within a bound the test must not outlast on a busy machine (taken
	// by the server when it starts).
	saved := refusedReadDeadline
	refusedReadDeadline = 20 * time.Second
	t.Cleanup(func() { refusedReadDeadline = saved })
	release := make(chan struct{})
	entered := make(chan int, 16)
	refused := make(chan string, 16)
	path, _ := serveUsersTest(t, func(req Request, p Peer) (Answer, *os.File) {
		entered <- p.Uid
		if p.Uid == 0 {
			<-release
		}
		return Answer{Init: p.Uid}, nil
	}, UserBounds{Conns: 2, Rate: 1000, Burst: 1000, Refused: func(uid int, rule string) { refused <- rule }})
	wait := func(ch any, what string) any {
		t.Helper()
		switch c := ch.(type) {
		case chan int:
			select {
			case v := <-c:
				return v
			case <-time.After(20 * time.Second):
			}
		case chan string:
			select {
			case v := <-c:
				return v
			case <-time.After(20 * time.Second):
			}
		}
		t.Fatalf("no %s in 20 s", what)
		return nil
	}
	// Root holds its two connections, each in the handler.
	held := []*net.UnixConn{dial(t, path), dial(t, path)}
	heldAnswers := make(chan error, 2)
	for _, c := range held {
		go func() {
			a, err := answerOn(t, c, `{"op":"list"}`)
			if err == nil && a.Error != "" {
				err = a.Err()
			}
			heldAnswers <- err
		}()
	}
	for range held {
		if uid := wait(entered, "request in the handler"); uid != 0 {
			t.Fatalf("the handler saw uid %v, want 0", uid)
		}
	}
	// Two more are refused, each held until it says what it asks.
	extra := []*net.UnixConn{dial(t, path), dial(t, path)}
	for range extra {
		if rule := wait(refused, "refusal"); rule != "user-connections" {
			t.Fatalf("refused by %v, want user-connections", rule)
		}
	}
	// Beyond those, a connection is closed at once, unanswered.
	if a, err := answerOn(t, dial(t, path), `{"op":"list"}`); err == nil {
		t.Errorf("a connection beyond the refused ones was answered %+v, want it closed", a)
	}
	wait(refused, "refusal")
	for _, c := range extra {
		a, err := answerOn(t, c, `{"op":"list"}`)
		if err != nil || !a.Usage || !strings.Contains(a.Error, "too many connections") {
			t.Errorf("a refused connection was answered %+v, %v; want too many connections", a, err)
		}
	}
	// Another user is served meanwhile.
	if out := askAs(t, path, 65534); out != "init=65534" {
		t.Errorf("another user asking while root is at its bound: %q, want served", out)
	}
	// Root's connections end: root is served again.
	close(release)
	for _, c := range held {
		if err := <-heldAnswers; err != nil {
			t.Errorf("a held request: %v", err)
		}
		untilClosed(c)
	}
	a, _, err := AskUser(path, Request{Op: "list"})
	if err != nil || a.Error != "" || a.Init != 0 {
		t.Errorf("root asking after its connections ended: %+v %v, want served", a, err)
	}
}

// askAs asks path's user socket for a list as uid, from a copy of this
// test binary, and returns what it was answered.
func askAs(t *testing.T, path string, uid uint32) string {
	t.Helper()
	// Let the user reach the socket and the binary.
	for p := filepath.Dir(path); p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(filepath.Dir(path), "asker")
	b, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(exe, b, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^TestUserConnectionsBoundedPerUser$")
	// (A race-built asker need not sleep its second at exit.)
	cmd.Env = append(os.Environ(), "CGFS_CONTROL_USER_ASK="+path, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr // (coverage runs say there what they cannot write)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("asking as %d: %v\n%s%s", uid, err, out, stderr.Bytes())
	}
	return string(out)
}

// TestSubordinateIdsCountAsTheirOwner: a peer whose uid is a user's
// subordinate id (its process in a user namespace of its own) is
// refused, with the rule named in the host log, and never reaches the
// handler; its connections count against its owner's bound, so that
// every id the user may run as holds no more than the user.
func TestSubordinateIdsCountAsTheirOwner(t *testing.T) {
	saved := refusedReadDeadline
	refusedReadDeadline = 20 * time.Second
	t.Cleanup(func() { refusedReadDeadline = saved })
	release := make(chan struct{})
	entered := make(chan int, 16)
	var mu sync.Mutex
	var rules []string
	path, logs := serveUsersTest(t, func(req Request, p Peer) (Answer, *os.File) {
		entered <- p.Uid
		if p.Uid == 0 {
			<-release
		}
		return Answer{Init: p.Uid}, nil
	}, UserBounds{Conns: 2, Rate: 1000, Burst: 1000,
		Refused: func(uid int, rule string) { mu.Lock(); rules = append(rules, rule); mu.Unlock() },
		Owner: func(uid int) (int, string, bool, error) {
			switch {
			case uid >= 60000 && uid < 65535: // root's subordinate ids
				return 0, "root", true, nil
			case uid == 65535:
				return 0, "", false, errors.New("the file cannot be read")
			}
			return 0, "", false, nil
		}})
	out := askAs(t, path, 65534)
	if !strings.Contains(out, "uid 65534 is a subordinate id of user root (/etc/subuid), not a user of its own") {
		t.Errorf("a subordinate id asking: %q, want refused", out)
	}
	if out := askAs(t, path, 65535); !strings.Contains(out, "cannot tell whose subordinate id uid 65535 is: the file cannot be read") {
		t.Errorf("a peer whose owner cannot be told: %q, want refused", out)
	}
	if out := askAs(t, path, 1234); out != "init=1234" {
		t.Errorf("a user of its own asking: %q, want served", out)
	}
	select {
	case uid := <-entered:
		if uid != 1234 {
			t.Errorf("the handler saw uid %d", uid)
		}
	default:
		t.Error("the handler saw no request of uid 1234")
	}
	if !strings.Contains(logs.String(), `uid=65534 charged-to=0 rule=subordinate-id`) {
		t.Errorf("the host log names no subordinate-id refusal charged to root:\n%s", logs.String())
	}
	// Root holds its two connections: its subordinate ids get none.
	held := []*net.UnixConn{dial(t, path), dial(t, path)}
	heldAnswers := make(chan error, 2)
	for _, c := range held {
		go func() {
			_, err := answerOn(t, c, `{"op":"list"}`)
			heldAnswers <- err
		}()
	}
	for range held {
		select {
		case <-entered:
		case <-time.After(20 * time.Second):
			t.Fatal("root's requests did not reach the handler")
		}
	}
	if out := askAs(t, path, 60000); !strings.Contains(out, "too many connections") {
		t.Errorf("root's subordinate id while root holds its connections: %q, want too many connections", out)
	}
	close(release)
	for range held {
		if err := <-heldAnswers; err != nil {
			t.Error(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"subordinate-id", "subordinate-id", "user-connections"}; strings.Join(rules, " ") != strings.Join(want, " ") {
		t.Errorf("refusals counted %v, want %v", rules, want)
	}
}

// TestUserRateBound: a user asking faster than its rate has exactly its
// burst served of requests that come at once; the rest are answered to
// ask later, each counted, and the host log says so a line a second at
// most.
func TestUserRateBound(t *testing.T) {
	var mu sync.Mutex
	served, rateRefused := 0, 0
	path, logs := serveUsersTest(t, func(Request, Peer) (Answer, *os.File) {
		mu.Lock()
		served++
		mu.Unlock()
		return Answer{}, nil
	}, UserBounds{Conns: 64, Rate: 0.001, Burst: 3, Refused: func(uid int, rule string) {
		if rule == "user-rate" {
			mu.Lock()
			rateRefused++
			mu.Unlock()
		}
	}})
	const asked = 12
	start := time.Now()
	var wg sync.WaitGroup
	var later int
	for range asked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, _, err := AskUser(path, Request{Op: "list"})
			switch {
			case err != nil:
				t.Errorf("ask: %v", err)
			case a.Error == "":
			case a.Usage && strings.Contains(a.Error, "ask again later"):
				mu.Lock()
				later++
				mu.Unlock()
			default:
				t.Errorf("ask: %+v", a)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	if served != 3 || later != asked-3 || rateRefused != asked-3 {
		t.Errorf("%d asked at once with a burst of 3: %d served, %d told to ask later, %d refusals counted; want 3, %d, %d",
			asked, served, later, rateRefused, asked-3, asked-3)
	}
	if n, most := logs.Count("refused a user's request"), 1+int(took.Seconds()); n < 1 || n > most {
		t.Errorf("%d refusal lines in the host log for %d refusals in %v, want 1 to %d (a line a second)", n, asked-3, took, most)
	}
}

// TestUserRequestsAndDescriptors: the user's descriptors reach the
// handler and its answer's descriptor reaches the user; a request with
// more descriptors than a request may carry, or longer than one may be,
// or that is no request, is refused before the handler, and the
// descriptors it brought are closed.
func TestUserRequestsAndDescriptors(t *testing.T) {
	var mu sync.Mutex
	var got []Request
	path, _ := serveUsersTest(t, func(req Request, p Peer) (Answer, *os.File) {
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		for _, f := range req.Files {
			f.Close()
		}
		r, w, err := os.Pipe()
		if err != nil {
			return Answer{Error: err.Error()}, nil
		}
		fmt.Fprintf(w, "for uid %d", p.Uid)
		w.Close()
		return Answer{}, r
	}, UserBounds{Conns: 8, Rate: 1000, Burst: 1000})
	pipes := func(n int) (*os.File, []*os.File) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		// Its end is read to see every writer gone: within a bound.
		_ = r.SetReadDeadline(time.Now().Add(20 * time.Second))
		var ws []*os.File
		for range n {
			ws = append(ws, w)
		}
		return r, ws
	}
	r, ws := pipes(2)
	a, f, err := AskUser(path, Request{Op: "adopt", Name: "c"}, ws...)
	ws[0].Close()
	if err != nil || a.Error != "" || f == nil {
		t.Fatalf("ask with 2 descriptors: %+v %v %v", a, f, err)
	}
	if b, _ := io.ReadAll(f); string(b) != "for uid 0" {
		t.Errorf("the answer's descriptor reads %q", b)
	}
	f.Close()
	if len(got) != 1 || got[0].Op != "adopt" || len(got[0].Files) != 2 {
		t.Errorf("the handler got %+v, want adopt with 2 descriptors", got)
	}
	// The handler closed them: the pipe's every writer is gone.
	if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
		t.Errorf("the pipe read %q %v after the handler closed the descriptors, want its end", b, err)
	}
	r.Close()

	for _, c := range []struct {
		name  string
		req   string
		files int
		want  string
	}{
		{"too many descriptors", `{"op":"adopt"}`, maxUserFiles + 1, "too many descriptors"},
		{"too long", `{"op":"` + strings.Repeat("x", 20<<10) + `"}`, 1, "too long"},
		{"no request", `{"op":`, 1, "does not understand"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, ws := pipes(c.files)
			defer r.Close()
			conn := dial(t, path)
			fds := make([]int, len(ws))
			for i, w := range ws {
				fds[i] = int(w.Fd())
			}
			if _, _, err := conn.WriteMsgUnix([]byte(c.req), unix.UnixRights(fds...), nil); err != nil {
				t.Fatal(err)
			}
			ws[0].Close()
			buf := make([]byte, 4096)
			n, err := conn.Read(buf)
			var a Answer
			if err != nil || json.Unmarshal(buf[:n], &a) != nil || !a.Usage || !strings.Contains(a.Error, c.want) {
				t.Errorf("answer %q %v, want a usage error %q", buf[:n], err, c.want)
			}
			if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
				t.Errorf("the descriptors it brought were kept: the pipe read %q %v", b, err)
			}
		})
	}
	if len(got) != 1 {
		t.Errorf("the handler ran for refused requests: %+v", got[1:])
	}
}

// TestUserConfirm: a user's attach that waits for the user's word
// (Placed) is told what the user says.
func TestUserConfirm(t *testing.T) {
	told := make(chan bool, 1)
	path, _ := serveUsersTest(t, func(req Request, _ Peer) (Answer, *os.File) {
		return Answer{Placed: func(ok bool) { told <- ok }}, nil
	}, UserBounds{Conns: 8, Rate: 1000, Burst: 1000})
	for _, want := range []bool{true, false} {
		_, _, placed, err := AskUserConfirm(path, Request{Op: "attach", Name: "c"})
		if err != nil {
			t.Fatal(err)
		}
		placed(want)
		select {
		case got := <-told:
			if got != want {
				t.Errorf("the user said %v, the server was told %v", want, got)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the server was told nothing")
		}
	}
}
