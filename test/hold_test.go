package test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A syscall hold stops the process it traces at the entry of the first
// write(2) or pwrite64(2) to one file, or sendmsg(2) on a unix socket
// (how cgfs hands a write to a helper in a pid namespace), and keeps
// that thread there until released: the window between a server's checks
// and its write, held open for as long as a test needs, with real
// threads and a real kernel.
type syscallHold struct {
	held    chan int      // the held thread, once
	release chan struct{} // closed by Release
	done    chan error    // the tracer's end
}

// ptrace(2) constants x/sys/unix does not name.
const (
	ptraceGetSyscallInfo = 0x420e
	syscallInfoEntry     = 1
)

// holdWrite holds process pid's first write to path (or to a helper).
// The tracer is a process of its own: a parent waiting for its child
// (as the test waits for a server) would take the child's ptrace stops.
func holdWrite(t testing.TB, pid int, path string) *syscallHold {
	t.Helper()
	cmd := exec.Command(helperBin, "hold", strconv.Itoa(pid), path)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	in, out := startPiped(t, cmd)
	h := &syscallHold{held: make(chan int, 1), release: make(chan struct{}), done: make(chan error, 1)}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "tracing" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("tracing %d: %s", pid, lines.Text())
	}
	go func() {
		if lines.Scan() {
			if tid, err := strconv.Atoi(strings.TrimPrefix(lines.Text(), "held ")); err == nil {
				h.held <- tid
			}
		}
		<-h.release
		in.Close()
		for lines.Scan() {
		}
		h.done <- cmd.Wait()
	}()
	t.Cleanup(func() { h.Release(t) })
	return h
}

// holdFileWrite is holdWrite of writes to path alone (no sendmsg).
func holdFileWrite(t testing.TB, pid int, path string) *syscallHold {
	t.Helper()
	return holdWrite(t, pid, "="+path)
}

// Held waits until a write is held and returns the thread.
func (h *syscallHold) Held(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case tid := <-h.held:
		return tid
	case err := <-h.done:
		t.Fatalf("the tracer ended before a write was held: %v", err)
	case <-time.After(timeout):
		t.Fatalf("no write was held within %v", timeout)
	}
	return 0
}

// Release lets the held write go on and detaches from every thread.
func (h *syscallHold) Release(t testing.TB) {
	t.Helper()
	select {
	case <-h.release:
		return // already
	default:
	}
	close(h.release)
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("tracer: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("the tracer did not detach")
	}
}

// holdMain is the tracer process: hold PID PATH. It prints "tracing",
// then "held TID" once a write is held, and releases it when its input
// ends.
func holdMain(args []string) int {
	pid, _ := strconv.Atoi(args[0])
	h := &syscallHold{held: make(chan int, 1), release: make(chan struct{}), done: make(chan error, 1)}
	started := make(chan error, 1)
	go h.trace([]int{pid}, args[1], started)
	if err := <-started; err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("tracing")
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(h.release)
	}()
	select {
	case tid := <-h.held:
		fmt.Println("held", tid)
	case <-h.release:
	}
	<-h.release
	if err := <-h.done; err != nil {
		fmt.Fprintln(os.Stderr, "tracer:", err)
		return 1
	}
	return 0
}

// trace runs on one locked thread: ptrace requests must come from the
// tracer's thread.
func (h *syscallHold) trace(pids []int, path string, started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	traced := map[int]bool{}
	for _, pid := range pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			started <- err
			return
		}
		for _, e := range tasks {
			tid, _ := strconv.Atoi(e.Name())
			opts := unix.PTRACE_O_TRACESYSGOOD | unix.PTRACE_O_TRACECLONE // new threads, not new processes
			if _, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(tid), 0, uintptr(opts), 0, 0); errno != 0 {
				started <- fmt.Errorf("PTRACE_SEIZE %d: %w", tid, errno)
				return
			}
			traced[tid] = true
			_, _, _ = unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_INTERRUPT, uintptr(tid), 0, 0, 0, 0)
		}
	}
	started <- nil
	heldTid := 0
	releasing := false
	resume := func(tid, sig int) {
		if releasing {
			_ = unix.PtraceDetach(tid)
			delete(traced, tid)
			return
		}
		_, _, _ = unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SYSCALL, uintptr(tid), 0, uintptr(sig), 0, 0)
	}
	for len(traced) > 0 {
		if !releasing {
			select {
			case <-h.release:
				releasing = true
				for tid := range traced {
					_, _, _ = unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_INTERRUPT, uintptr(tid), 0, 0, 0, 0)
				}
				if heldTid != 0 {
					resume(heldTid, 0)
				}
			default:
			}
		}
		// Wait for the traced threads only: the test's other children
		// (servers, containers) are reaped by their own.
		stopped := false
		for tid := range traced {
			var ws unix.WaitStatus
			got, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG, nil)
			if err == unix.ECHILD {
				delete(traced, tid) // gone
				continue
			}
			if err != nil || got == 0 {
				continue
			}
			stopped = true
			h.handle(tid, ws, traced, path, &heldTid, releasing, resume)
		}
		if !stopped {
			time.Sleep(200 * time.Microsecond)
		}
	}
	h.done <- nil
}

// handle deals with one stop of traced thread tid.
func (h *syscallHold) handle(tid int, ws unix.WaitStatus, traced map[int]bool, path string, heldTid *int, releasing bool, resume func(tid, sig int)) {
	switch {
	case ws.Exited() || ws.Signaled():
		delete(traced, tid)
	case !ws.Stopped():
	case ws.StopSignal() == syscall.SIGTRAP|0x80: // a syscall stop
		if !releasing && *heldTid == 0 && writesTo(tid, path) {
			*heldTid = tid
			h.held <- tid
			return // stays stopped until released
		}
		resume(tid, 0)
	case ws.StopSignal() == syscall.SIGTRAP: // ptrace events: a new thread, a stop
		if ws.TrapCause() == unix.PTRACE_EVENT_CLONE {
			if child, err := unix.PtraceGetEventMsg(tid); err == nil {
				traced[int(child)] = true
			}
		}
		resume(tid, 0)
	default:
		sig := int(ws.StopSignal())
		if ws.TrapCause() == unix.PTRACE_EVENT_STOP {
			sig = 0 // a group stop or our interrupt
		}
		resume(tid, sig)
	}
}

// writesTo reports whether thread tid stopped at the entry of a write or
// pwrite64 to the file path (or, unless path starts with "=", which then
// goes, a sendmsg on a socket).
func writesTo(tid int, path string) bool {
	path, onlyFile := strings.CutPrefix(path, "=")
	var info [88]byte
	_, _, errno := unix.Syscall6(unix.SYS_PTRACE, ptraceGetSyscallInfo, uintptr(tid), uintptr(len(info)), uintptr(unsafe.Pointer(&info[0])), 0, 0)
	if errno != 0 || info[0] != syscallInfoEntry {
		return false
	}
	nr := *(*uint64)(unsafe.Pointer(&info[24]))
	fd := *(*uint64)(unsafe.Pointer(&info[32]))
	target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", tid, fd))
	switch {
	case err != nil:
		return false
	case nr == unix.SYS_WRITE || nr == unix.SYS_PWRITE64:
		return filepath.Clean(target) == filepath.Clean(path)
	case nr == unix.SYS_SENDMSG:
		return !onlyFile && strings.HasPrefix(target, "socket:")
	}
	return false
}
