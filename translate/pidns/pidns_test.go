package pidns

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cgfs/cgfs/access/proc"
	"github.com/cgfs/cgfs/translate/host"
)

func TestMain(m *testing.M) {
	if IsHelper() { // the test binary is the helper, as cgfs is
		os.Exit(HelperMain())
	}
	os.Exit(m.Run())
}

// TestHelperResolvesIDsInItsNamespace: in a new pid namespace whose
// init is a sleep, id 1 is that sleep, not the host's init, for both the
// pin and the write.
func TestHelperResolvesIDsInItsNamespace(t *testing.T) {
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
	th, err := procs.Thread(sleep.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := os.Open("/proc/" + strconv.Itoa(sleep.Process.Pid) + "/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	pool, err := NewPool(procs, ns, th)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
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
// HelperStarts a second.
func TestHelperStartsAreRateLimited(t *testing.T) {
	p := Inline(nil)
	for i := range MaxHelpers {
		if !p.mayStartLocked() {
			t.Fatalf("start %d of the burst refused", i+1)
		}
	}
	if p.mayStartLocked() {
		t.Error("a start past the burst allowed at once")
	}
	p.lastStart = p.lastStart.Add(-time.Second) // a second passes
	for i := range int(HelperStarts) {
		if !p.mayStartLocked() {
			t.Errorf("start %d of the next second refused", i+1)
		}
	}
	if p.mayStartLocked() {
		t.Error("more starts in a second than HelperStarts")
	}
}
