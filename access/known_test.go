package access

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// onThread runs f on a locked thread of its own, which exits after it
// (so what f changes of the thread never reaches another goroutine).
// The main thread is never used: Go does not end it but wedges it.
func onThread(t *testing.T, f func(tid int)) {
	t.Helper()
	run := func(done chan<- struct{}) {
		defer close(done) // the thread ends with the goroutine, still locked
		f(unix.Gettid())
	}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != os.Getpid() {
			run(done)
			return
		}
		// The main thread (Go wedges it rather than ending it): hold it
		// while another goroutine, which then cannot land on it, runs f.
		inner := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			run(inner)
		}()
		<-inner
		runtime.UnlockOSThread()
		close(done)
	}()
	<-done
}

// TestRememberedCallerSeesChanges: a remembered task is read afresh
// where it can change: a new user namespace (the same pid execs
// unshare -U) and capabilities dropped show at its next request,
// though its pin and thread facts are remembered.
func TestRememberedCallerSeesChanges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the task must hold CAP_SYS_ADMIN to lose it")
	}
	for _, tool := range []string{"unshare", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip("needs util-linux's " + tool)
		}
	}
	id := NewIdentifier(openProcs(t))
	// One process, three states: as started, in a new user namespace,
	// then without capabilities (setpriv drops the bounding set and
	// execs, in the new namespace).
	cmd := exec.Command("sh", "-c", "read x; exec unshare -U sh -c 'read y; exec setpriv --inh-caps=-all --bounding-set=-all sleep 100'")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	first, err := id.Identify(pid, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !first.HasCapSysAdmin() {
		t.Fatal("root's task lacks CAP_SYS_ADMIN")
	}
	if tasks, chains := id.Known(); tasks != 1 || chains != 1 {
		t.Errorf("remembers %d tasks and %d chains, want 1 and 1", tasks, chains)
	}
	userns := func() string { l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid)); return l }
	before := userns()
	in.Write([]byte("go\n"))
	waitFor(t, func() bool { return userns() != before })
	inNew, err := id.Identify(pid, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(inNew.UserNS) != len(first.UserNS)+1 || inNew.UserNS[1].NS != first.UserNS[0].NS {
		t.Errorf("after unshare -U the chain is %v, want a new namespace above %v", inNew.UserNS, first.UserNS)
	}
	in.Write([]byte("go\n"))
	waitFor(t, func() bool {
		c, err := id.Identify(pid, 0, 0)
		return err == nil && c.CapEff == 0
	})
	if tasks, _ := id.Known(); tasks != 1 {
		t.Errorf("remembers %d tasks, want the one", tasks)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}

// TestRememberedTaskGone: once a remembered thread exits, a request with
// its id is refused (the pin says it is gone), not answered from memory.
func TestRememberedTaskGone(t *testing.T) {
	id := NewIdentifier(openProcs(t))
	var tid int
	onThread(t, func(t2 int) {
		tid = t2
		r := id.Request(tid, 0, 0)
		defer r.Done()
		if _, err := r.Thread(); err != nil {
			t.Error(err)
		}
	})
	// The thread exits once its goroutine ends locked; its id may then
	// be free or reused by a thread of another process, never ours.
	waitFor(t, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
		return err != nil
	})
	r := id.Request(tid, 0, 0)
	defer r.Done()
	th, err := r.Thread()
	if err == nil && th.Tgid == os.Getpid() {
		t.Errorf("the exited thread %d was answered from memory: %+v", tid, th)
	}
}

func BenchmarkIdentifyRemembered(b *testing.B) {
	id := NewIdentifier(openProcs(b))
	tid := unix.Gettid()
	for b.Loop() {
		r := id.Request(tid, 0, 0)
		if _, err := r.Caller(); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Thread(); err != nil {
			b.Fatal(err)
		}
		r.Done()
	}
}

// TestCloseLetsGoOfWhatIsRemembered: a closed identifier holds no
// descriptor of what it remembered, even of a request under way when it
// closed (which lets go at its Done), and remembers nothing after, while
// it still identifies.
func TestCloseLetsGoOfWhatIsRemembered(t *testing.T) {
	runtime.LockOSThread() // one caller: this thread
	defer runtime.UnlockOSThread()
	procs := openProcs(t)
	fds := func() int {
		e, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(e)
	}
	before := fds()
	id := NewIdentifier(procs)
	if _, err := id.Identify(unix.Gettid(), 0, 0); err != nil {
		t.Fatal(err)
	}
	if tasks, chains := id.Known(); tasks != 1 || chains != 1 {
		t.Fatalf("remembers %d tasks and %d chains, want 1 and 1", tasks, chains)
	}
	if held := fds() - before; held != 2 {
		t.Fatalf("remembering holds %d descriptors, want 2 (a pin and a namespace)", held)
	}
	r := id.Request(unix.Gettid(), 0, 0)
	if _, err := r.Caller(); err != nil {
		t.Fatal(err)
	}
	id.Close()
	if tasks, chains := id.Known(); tasks != 0 || chains != 0 {
		t.Errorf("a closed identifier remembers %d tasks and %d chains", tasks, chains)
	}
	if held := fds() - before; held != 1 {
		t.Errorf("with a request under way, a closed identifier holds %d descriptors, want its pin alone", held)
	}
	r.Done()
	for range 3 {
		if c, err := id.Identify(unix.Gettid(), 0, 0); err != nil || len(c.UserNS) == 0 {
			t.Fatalf("a closed identifier identifies %+v, %v", c, err)
		}
	}
	if held := fds() - before; held != 0 {
		t.Errorf("a closed identifier holds %d descriptors after its requests, want none", held)
	}
	if tasks, chains := id.Known(); tasks != 0 || chains != 0 {
		t.Errorf("a closed identifier remembered %d tasks and %d chains", tasks, chains)
	}
}
