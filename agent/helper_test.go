//go:build linux

package agent

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// requireRoot skips t unless it runs as root; under CI=true a skip is a
// failure.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root for seccomp without NO_NEW_PRIVS (CI=true: not skipping)")
	}
	t.Skip("needs root for seccomp without NO_NEW_PRIVS")
}

// child is a running child test binary (see TestMain).
type child struct {
	cmd    *exec.Cmd
	sock   *os.File // the parent's end of fd 3
	stdout bytes.Buffer
	stderr bytes.Buffer
}

// startChild runs the test binary in mode with env added, in a mount
// namespace of its own with / private (Go does that for CLONE_NEWNS).
func startChild(t testing.TB, mode string, env ...string) *child {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "child-sock")
	defer theirs.Close()
	c := &child{sock: os.NewFile(uintptr(fds[0]), "parent-sock")}
	t.Cleanup(func() { c.sock.Close() })
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	// A race-enabled child would sleep a second at exit.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	c.cmd.Env = append(os.Environ(), append([]string{childEnv + "=" + mode, "GORACE=" + gorace}, env...)...)
	c.cmd.ExtraFiles = []*os.File{theirs}
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: unix.CLONE_NEWNS}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

// listener receives the child's listener.
func (c *child) listener(t testing.TB) *os.File {
	t.Helper()
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(c.sock.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil || n != 1 || oobn == 0 {
		c.cmd.Wait()
		t.Fatalf("no listener from child (err %v): %s", err, c.stderr.String())
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control message: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v", err)
	}
	return os.NewFile(uintptr(fds[0]), "seccomp-listener")
}

// wait waits for the child to exit successfully.
func (c *child) wait(t testing.TB) {
	t.Helper()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child: %v\nstderr:\n%s", err, c.stderr.String())
	}
}

// magicFor is a Magic that calls dir (and only dir) a view of type fsType.
func magicFor(t testing.TB, dir string, fsType int64) Magic {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return func(dev, ino uint64) (int64, bool) {
		return fsType, dev == st.Dev && ino == st.Ino
	}
}

// testLogger logs to t at Debug level, until t ends (answers may still be
// logging then: Close does not wait for them).
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimSuffix(p, []byte("\n"))))
	}
	return len(p), nil
}
