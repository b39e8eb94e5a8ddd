package launch

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
)

// signalsRole makes the test binary a container's init that says which
// signals it gets and ignores them all (as a shell with traps does).
const signalsRole = "LAUNCH_TEST_SIGNALS"

func signalsMain() int {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	fmt.Println("ready")
	for s := range ch {
		fmt.Println(s.(syscall.Signal).String())
	}
	return 0
}

// TestForwardSignals: the signals cgfs run gets reach the container's
// init; a second signal to stop kills it, as an init that ignores them
// would otherwise never end.
func TestForwardSignals(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), signalsRole+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(20 * time.Second):
			t.Fatal("the init said nothing in 20 s")
		}
		return ""
	}
	if l := next(); l != "ready" {
		t.Fatalf("the init said %q", l)
	}
	var logs strings.Builder
	var mu sync.Mutex
	sig := make(chan os.Signal, 4)
	stop := forwardSignals(sig, cmd.Process, slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil)))
	defer stop()
	for _, s := range []syscall.Signal{syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGUSR1} {
		sig <- s
		if l := next(); l != s.String() {
			t.Errorf("sent %v, the init got %q", s, l)
		}
	}
	sig <- syscall.SIGINT // the second to stop
	ended := make(chan error, 1)
	go func() { ended <- cmd.Wait() }()
	select {
	case err = <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("the init lives on 20 s after a second signal to stop")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("after a second signal to stop the init ended %v, want killed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "a second signal to stop: killing the container") {
		t.Errorf("the kill is not logged:\n%s", logs.String())
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

// TestExitStatus: cgfs run exits with the command's status, 128+N for
// a signal N.
func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 7", 7},
		{"kill -KILL $$", 128 + 9},
		{"kill -TERM $$", 128 + 15},
	} {
		code, err := ExitStatus(exec.Command("/bin/sh", "-c", c.script).Run())
		if err != nil || code != c.want {
			t.Errorf("sh -c %q: %d, %v; want %d", c.script, code, err, c.want)
		}
	}
	if _, err := ExitStatus(exec.Command("/nonexistent").Run()); err == nil {
		t.Error("a command that never ran has an exit status")
	}
}

// TestKilledAtStartSaysWhatFailed: the error of a start whose init was
// killed names the signal, and what failed then where the kernel
// refused it (its errno).
func TestKilledAtStartSaysWhatFailed(t *testing.T) {
	o := Options{}
	err := o.killedAtStart(syscall.SIGKILL, nil, fmt.Errorf("joining: %w", unix.EPERM))
	const want = "the container's init was killed (SIGKILL) before it ran the command; what failed then: joining: operation not permitted (EPERM)"
	if err == nil || err.Error() != want {
		t.Errorf("killedAtStart = %v, want %q", err, want)
	}
	err = o.killedAtStart(syscall.SIGTERM, nil, errors.New("the init ended"))
	if err == nil || err.Error() != "the container's init was killed (SIGTERM) before it ran the command" {
		t.Errorf("killedAtStart of a failure that is no errno = %v, want the signal alone", err)
	}
}

// fakeUser is the daemon as a user's cgfs run sees it, recording what it
// was asked.
type fakeUser struct {
	mu        sync.Mutex
	calls     []string
	createErr error
	updateErr error
}

func (u *fakeUser) note(call string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls = append(u.calls, call)
}

func (u *fakeUser) asked() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.calls, " ")
}

func (u *fakeUser) Create(name string, lim cgroups.Limits) error {
	u.note("create")
	return u.createErr
}
func (u *fakeUser) Update(lim cgroups.Limits) error {
	u.note(fmt.Sprintf("update:%d", lim.Pids))
	return u.updateErr
}
func (u *fakeUser) Adopt(init int) error { u.note("adopt"); return nil }
func (u *fakeUser) Agent(listener *os.File) error {
	u.note("agent")
	return nil
}
func (u *fakeUser) Remove() error { u.note("remove"); return nil }

// TestTaskLimitOfAUsersContainer: a user's container's task limit is
// set by the daemon (an update), named in the error if it fails; none
// is set without one.
func TestTaskLimitOfAUsersContainer(t *testing.T) {
	u := &fakeUser{}
	o := Options{User: u, Limits: cgroups.Limits{Pids: 5}}
	if err := o.setTaskLimit(nil); err != nil || u.asked() != "update:5" {
		t.Errorf("setTaskLimit: %v, the daemon asked %q; want update:5", err, u.asked())
	}
	u.updateErr = errors.New("refused")
	if err := o.setTaskLimit(nil); err == nil || err.Error() != "--pids 5: refused" {
		t.Errorf("setTaskLimit refused: %v, want --pids 5: refused", err)
	}
	o.Limits.Pids = 0
	u.calls = nil
	if err := o.setTaskLimit(nil); err != nil || u.asked() != "" {
		t.Errorf("setTaskLimit without a limit: %v, the daemon asked %q; want nothing", err, u.asked())
	}
}

// children are this process's child processes now.
func children(t *testing.T) []string {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	var out []string
	for _, task := range tasks {
		b, _ := os.ReadFile(task)
		out = append(out, strings.Fields(string(b))...)
	}
	return out
}

// TestRunEndsWhatItStartedWhenItFails: a start that fails after the
// init exists (its view cannot be made, a user's ids cannot be mapped)
// ends and reaps the init and removes what it made: the cgroups, or the
// user's container at the daemon; one that fails before makes nothing.
func TestRunEndsWhatItStartedWhenItFails(t *testing.T) {
	t.Run("the view", func(t *testing.T) {
		o, _ := container(t, cgroups.Limits{}, "/bin/true")
		var init int
		o.View = func(pid int) (*os.File, func(), error) {
			init = pid
			return nil, nil, errors.New("no view today")
		}
		if _, err := Run(o); err == nil || !strings.Contains(err.Error(), "no view today") {
			t.Errorf("Run = %v, want the view's error", err)
		}
		if init == 0 {
			t.Fatal("the view was never asked for")
		}
		if err := unix.Kill(init, 0); !errors.Is(err, unix.ESRCH) {
			t.Errorf("the init %d after the failed start: %v, want gone and reaped", init, err)
		}
		// container's cleanup checks the cgroups are gone.
	})
	t.Run("a user's ids", func(t *testing.T) {
		o, _ := container(t, cgroups.Limits{}, "/bin/true")
		u := &fakeUser{}
		o.User, o.UserMaps = u, nil
		o.View = func(int) (*os.File, func(), error) {
			t.Error("a view was asked for a container whose ids are not mapped")
			return nil, nil, errors.New("no")
		}
		before := children(t)
		if _, err := Run(o); err == nil || !strings.Contains(err.Error(), "no id maps") {
			t.Errorf("Run = %v, want no id maps", err)
		}
		if got := u.asked(); got != "create remove" {
			t.Errorf("the daemon was asked %q, want create remove", got)
		}
		if after := children(t); len(after) > len(before) {
			t.Errorf("children %v after the failed start, %v before: the init was not reaped", after, before)
		}
	})
	t.Run("a user's container refused", func(t *testing.T) {
		o, _ := container(t, cgroups.Limits{}, "/bin/true")
		u := &fakeUser{createErr: errors.New("user-containers")}
		o.User = u
		if _, err := Run(o); err == nil || err.Error() != "user-containers" {
			t.Errorf("Run = %v, want the daemon's refusal", err)
		}
		if got := u.asked(); got != "create" {
			t.Errorf("the daemon was asked %q, want create alone", got)
		}
	})
}

// TestNotificationsCountedWhileAgentsJoin: the count of seccomp
// notifications handled (read by metrics scrapes) is read while agents
// of processes joining the container (cgfs exec) are added, and counts
// what the container's statfs asked.
func TestNotificationsCountedWhileAgentsJoin(t *testing.T) {
	o, _ := container(t, cgroups.Limits{}, "/bin/sh", "-c", "stat -f /sys/fs/cgroup >/dev/null")
	var count func() uint64
	o.Notifications = func(c func() uint64) { count = c }
	var handled uint64
	o.Started = func(init int, agents func(*os.File)) func() {
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, w, err := os.Pipe() // a listener whose tasks are gone
				if err != nil {
					t.Error(err)
					return
				}
				w.Close()
				agents(r)
			}()
		}
		for range 100 {
			count()
		}
		wg.Wait()
		return func() { handled = count() }
	}
	code, err := Run(o)
	if err != nil || code != 0 {
		t.Fatalf("stat -f /sys/fs/cgroup in the container: %d, %v", code, err)
	}
	if handled == 0 {
		t.Error("no notification counted for the container's statfs")
	}
}
