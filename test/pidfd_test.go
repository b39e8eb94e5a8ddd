package test

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
)

// TestPidfdOfAWritingThread: what cgroup.event_control takes a writer's
// descriptors through (access.Request.Pidfd, pidfd_getfd) works for a
// thread that is not its group's leader, on this lane's kernel: with
// PIDFD_THREAD (Linux 6.9, the host lane) or through the leader whose
// descriptor table it shares (the VM lane's 6.1).
func TestPidfdOfAWritingThread(t *testing.T) {
	requireRoot(t)
	procs, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	tids := make(chan int)
	release := make(chan struct{})
	defer close(release)
	lockedThread := func() int {
		go func() {
			runtime.LockOSThread() // a thread of its own, ended with the goroutine
			tids <- unix.Gettid()
			<-release
		}()
		return <-tids
	}
	// A goroutine may land on the leader thread; while it holds that
	// thread, a second one cannot.
	tid := lockedThread()
	if tid == unix.Getpid() {
		tid = lockedThread()
	}
	r := access.NewIdentifier(procs).Request(tid, 0, 0)
	defer r.Done()
	pidfd, err := r.Pidfd()
	if err != nil {
		t.Fatalf("a pidfd of thread %d: %v", tid, err)
	}
	defer pidfd.Close()
	got, err := unix.PidfdGetfd(int(pidfd.Fd()), p[0], 0)
	if err != nil {
		t.Fatalf("pidfd_getfd: %v", err)
	}
	defer unix.Close(got)
	var a, b unix.Stat_t
	if err := unix.Fstat(p[0], &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(got, &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Errorf("pidfd_getfd gave inode %d, want the thread's descriptor's %d", b.Ino, a.Ino)
	}
}
