package launch

import (
	"bytes"
	"fmt"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/testhost"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/mimic"
	"github.com/cgfs/cgfs/translate/layout"
)

func TestMain(m *testing.M) {
	if IsInit() { // the test binary is the container's init, as cgfs is
		os.Exit(InitMain())
	}
	if os.Getenv(signalsRole) != "" {
		os.Exit(signalsMain())
	}
	os.Exit(m.Run())
}

// testParent holds the tests' containers below every hierarchy's root
// (made and removed by Run, as cgfs run's parent): the tests' cgroups are
// named cgfs-test-*.
const testParent = "cgfs-test-launch"

var containers atomic.Int32

// container is what Run starts for a test: cmd in cgroups of its own
// with lim, its view an empty tmpfs laid out as the host's hierarchies
// (the view's contents play no part here), and the host's cgroup
// directories of its limits' controllers. It needs host root.
func container(t *testing.T, lim cgroups.Limits, cmd ...string) (Options, *layout.Layout) {
	t.Helper()
	testhost.NeedRoot(t, "a container")
	_, l := testhost.Host(t)
	name := fmt.Sprintf("c%d-%d", os.Getpid(), containers.Add(1))
	t.Cleanup(func() {
		for _, h := range l.Hierarchies {
			if _, err := os.Stat(filepath.Join(h.MountPoint, testParent, name)); err == nil {
				t.Errorf("%s left behind", filepath.Join(h.MountPoint, testParent, name))
			}
		}
	})
	o := Options{Name: name, Parent: testParent, Limits: lim, Map: IDMap{HostID: 100000, Count: 65536}, Net: NetOwn, Cmd: cmd,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	o.View = func(int) (*os.File, func(), error) {
		fd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
		if err != nil {
			return nil, nil, err
		}
		defer unix.Close(fd)
		if err := unix.FsconfigCreate(fd); err != nil {
			return nil, nil, err
		}
		m, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, 0)
		if err != nil {
			return nil, nil, err
		}
		for _, h := range l.Hierarchies {
			if d := mimic.MountOf(h).Dir; d != "" {
				if err := unix.Mkdirat(m, d, 0o755); err != nil {
					unix.Close(m)
					return nil, nil, err
				}
			}
		}
		return os.NewFile(uintptr(m), "view"), func() {}, nil
	}
	return o, &l
}

// controlFile is the container's host file (its cgroup's, in the
// hierarchy that has it; "" if none does).
func controlFile(l *layout.Layout, o Options, file string) string {
	for _, h := range l.Hierarchies {
		p := filepath.Join(h.MountPoint, o.Parent, o.Name, file)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func readTrimmed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
	}
	return strings.TrimSpace(string(b))
}

// TestTaskLimitLetsTheInitRunAlone: --pids 1 is pids.max 1 for the
// command, which runs alone as the kernel lets it (a fork is refused),
// and never for cgfs's own init before it, whose Go runtime's threads
// are the cgroup's tasks (a Go runtime refused a thread aborts: 108
// lines of crash and no container).
func TestTaskLimitLetsTheInitRunAlone(t *testing.T) {
	for _, c := range []struct {
		name string
		cmd  string
		want int // -1: anything but 3 (the shell could not fork)
	}{
		{"the init alone", "exit 7", 7},
		{"a fork", "/bin/true; exit 3", -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, l := container(t, cgroups.Limits{Pids: 1}, "/bin/sh", "-c", c.cmd)
			var pidsMax string
			view := o.View
			o.View = func(init int) (*os.File, func(), error) {
				// The init is in its cgroups and still cgfs's own.
				pidsMax = controlFile(l, o, "pids.max")
				if pidsMax == "" {
					t.Skip("the host has no pids controller")
				}
				if got := readTrimmed(t, pidsMax); got != "max" {
					t.Errorf("pids.max while cgfs's init runs = %s, want max (its Go runtime's threads count)", got)
				}
				return view(init)
			}
			o.Started = func(int, func(*os.File)) func() {
				if got := readTrimmed(t, pidsMax); got != "1" {
					t.Errorf("pids.max once the command runs = %s, want 1", got)
				}
				return func() {}
			}
			code, err := Run(o)
			if err != nil || c.want >= 0 && code != c.want || c.want < 0 && (code == 3 || code == 0) {
				t.Errorf("sh -c %q with pids.max 1 = %d, %v; want %d (-1: the fork refused)", c.cmd, code, err, c.want)
			}
		})
	}
}

// needMemory makes o's container skip the test, once its cgroups
// exist, where the host has no memory controller.
func needMemory(t *testing.T, o *Options, l *layout.Layout) {
	view := o.View
	o.View = func(init int) (*os.File, func(), error) {
		if controlFile(l, *o, "memory.max") == "" && controlFile(l, *o, "memory.limit_in_bytes") == "" {
			t.Skip("the host has no memory controller")
		}
		return view(init)
	}
}

// TestMemoryTooLittleToStart: a memory limit the init cannot start in
// (the OOM killer kills it) is an error that names the limit and the
// kernel's count, never what a dead init made fail (its v1 cgroups read
// as the hierarchies' roots).
func TestMemoryTooLittleToStart(t *testing.T) {
	o, l := container(t, cgroups.Limits{Memory: 1}, "/bin/true")
	needMemory(t, &o, l)
	var stderr bytes.Buffer
	o.Stderr = &stderr
	code, err := Run(o)
	t.Logf("Run = %d, %v", code, err)
	const want = "--memory 1: too little for cgfs run to start the container: the container's init was killed (SIGKILL) before it ran the command: out of memory (memory."
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("a container in 1 byte = %d, %v; want an error %q...", code, err, want)
	}
	if err != nil && strings.Contains(err.Error(), "hierarchy") {
		t.Errorf("the error %q names a hierarchy", err)
	}
}

// TestKilledInitSaysWhy: a command the OOM killer kills exits 137, as
// it did, and cgfs run says why on its stderr, from the cgroup's count.
func TestKilledInitSaysWhy(t *testing.T) {
	o, l := container(t, cgroups.Limits{Memory: 64 << 20}, "/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1")
	needMemory(t, &o, l)
	var stderr bytes.Buffer
	o.Stderr = &stderr
	code, err := Run(o)
	t.Logf("Run = %d, %v; stderr %q", code, err, stderr.String())
	if err != nil || code != 137 {
		t.Fatalf("dd of 256M in 64M = %d, %v; want 137", code, err)
	}
	const want = "cgfs run: the container's init was killed (SIGKILL): out of memory (memory."
	if got := stderr.String(); !strings.HasPrefix(got, want) || !strings.Contains(got, "oom_kill 1)") {
		t.Errorf("cgfs run said %q, want %q...oom_kill 1)", got, want)
	}
}
