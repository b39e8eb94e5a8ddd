package proc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// WaitExit waits until the process pidfd (non-blocking, so that the
// runtime's poller waits for it) refers to has ended, or until pidfd is
// closed. A pidfd turns readable when its process exits, and also for a
// moment while a thread other than its leader execs (the kernel's
// de_thread): an end is taken only once the process is a zombie or
// reaped.
func WaitExit(pidfd *os.File) {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return
	}
	for pause := time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
		err := rc.Read(func(fd uintptr) bool {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(p, 0)
			if err == unix.EINTR {
				return false // a signal (the runtime's preemption): look again
			}
			return err != nil || n > 0 // false: wait for the poller
		})
		if err != nil {
			return // closed
		}
		ended := true
		_ = rc.Control(func(fd uintptr) { ended = pidfdEnded(int(fd)) })
		if ended {
			return
		}
		time.Sleep(pause) // an exec's wake-up: the state passes
	}
}

// pidfdEnded reports whether pidfd fd's process was reaped or is a
// zombie.
func pidfdEnded(fd int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return true
	}
	pid := -1
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if pid <= 0 {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return true
	}
	return s[i+2] == 'Z' || s[i+2] == 'X'
}
