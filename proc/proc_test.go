package proc

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

func open(t *testing.T) *Procs {
	t.Helper()
	p, err := Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func nsOfPath(t *testing.T, path string) NS {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return NS{Dev: st.Dev, Ino: st.Ino}
}

func TestThreadOfSelf(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	p := open(t)
	th, err := p.Thread(unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	if th.Tgid != os.Getpid() || th.PidNS != nsOfPath(t, "/proc/self/ns/pid") {
		t.Errorf("Thread(self) = %+v, want tgid %d in our pid namespace", th, os.Getpid())
	}
	// The server sees itself as it is, at its own level.
	if n, ok := p.NumberIn(os.Getpid(), th); !ok || n != os.Getpid() {
		t.Errorf("NumberIn(self, self) = %d, %v; want %d", n, ok, os.Getpid())
	}
	if got := p.Translate([]int{os.Getpid(), 1 << 30}, th, false); th.Level == 0 && len(got) != 2 {
		t.Errorf("Translate at level 0 = %v, want the ids as they are", got)
	}
	if _, err := p.Thread(1 << 30); err != unix.ESRCH {
		t.Errorf("Thread(no such task) = %v, want ESRCH", err)
	}
}

func TestAncestryOfOwnUserNamespace(t *testing.T) {
	fd, err := unix.Open("/proc/self/ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	chain, err := UserNSAncestry(fd)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) == 0 || chain[0].NS != nsOfPath(t, "/proc/self/ns/user") {
		t.Errorf("UserNSAncestry(self) = %+v, want our namespace first", chain)
	}
	// The descriptor is still ours.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		t.Errorf("UserNSAncestry consumed its argument: %v", err)
	}
}

func TestPinTellsExit(t *testing.T) {
	p := open(t)
	pin, err := p.Pin(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer pin.Close()
	if !pin.Alive() {
		t.Error("a pin of the test process says it is gone")
	}
	if _, err := p.Pin(1 << 30); err != unix.ESRCH {
		t.Errorf("Pin(no such task) = %v, want ESRCH", err)
	}
}

func TestHierarchyIn(t *testing.T) {
	// /proc/PID/cgroup of a task on a hybrid host, as procfs parses it.
	lines := []procfs.Cgroup{
		{HierarchyID: 9, Controllers: []string{"name=systemd"}, Path: "/init.scope"},
		{HierarchyID: 4, Controllers: []string{"cpu", "cpuacct"}, Path: "/c1"},
		{HierarchyID: 3, Controllers: []string{"memory"}, Path: "/c1/m"},
		{HierarchyID: 0, Path: "/c1/v2"},
	}
	for _, c := range []struct {
		h    Controllers
		want string
		ok   bool
	}{
		{"", "/c1/v2", true},
		{"memory", "/c1/m", true},
		{"cpu,cpuacct", "/c1", true},
		{"name=systemd", "/init.scope", true},
		{"cpu", "", false},
		{"pids", "", false},
	} {
		if got, ok := c.h.In(lines); got != c.want || ok != c.ok {
			t.Errorf("Controllers(%q).In = %q, %v; want %q, %v", c.h, got, ok, c.want, c.ok)
		}
	}
	// The server's own cgroup in cgroup v2, through the one parser.
	own, err := open(t).SelfCgroups()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := Controllers("").In(own); !ok {
		t.Errorf("the server has no cgroup v2 line in %+v", own)
	}
}

// TestSees: a scan's test of visibility sees a task of the reader's own
// pid namespace and of one below it, not one above it, and says when a
// task is gone.
func TestSees(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a new pid namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs util-linux's unshare")
	}
	p, err := Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self, err := p.Thread(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var inner int // the sleep, pid 1 of the new namespace
	for deadline := time.Now().Add(5 * time.Second); inner == 0; time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		fmt.Sscan(string(b), &inner)
		if time.Now().After(deadline) {
			t.Fatal("unshare started no child")
		}
	}
	below, err := p.Thread(inner)
	if err != nil {
		t.Fatal(err)
	}
	if below.Level != self.Level+1 {
		t.Fatalf("the child is at level %d, want %d", below.Level, self.Level+1)
	}
	for _, c := range []struct {
		name       string
		reader     Thread
		tid        int
		seen, gone bool
	}{
		{"itself", self, os.Getpid(), true, false},
		{"a task below", self, inner, true, false},
		{"a task above", below, os.Getpid(), false, false},
		{"a task that is gone", self, 1 << 30, false, true},
	} {
		sees := p.Sees(c.reader)
		for range 2 { // the second time from memory
			if seen, gone := sees(c.tid); seen != c.seen || gone != c.gone {
				t.Errorf("%s: seen %v gone %v, want %v %v", c.name, seen, gone, c.seen, c.gone)
			}
		}
	}
}
