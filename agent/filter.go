//go:build linux

package agent

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Syscall numbers the filter names. They are ABI constants of each
// architecture, spelled out here so that the filter does not depend on the
// architecture the agent is built for.
const (
	x86_64Statfs  = 137
	x86_64Fstatfs = 138
	x86_64Mount   = 165
	x32Bit        = 0x40000000 // __X32_SYSCALL_BIT

	// The syscalls added since Linux 5.0 have one number on every
	// architecture.
	nrFsopen = 430
	nrClone3 = 435
)

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
)

// filter is the BPF program Install loads:
//
//	x86_64: x32 syscalls             → ENOSYS
//	        statfs, fstatfs, mount   → USER_NOTIF
//	        clone3, fsopen           → ENOSYS
//	i386:   clone3, fsopen           → ENOSYS (statfs, fstatfs, statfs64,
//	                                   fstatfs64 and mount are allowed:
//	                                   32-bit programs see the FUSE magic)
//	everything else, any other arch  → ALLOW
//
// clone3 fails so that glibc and systemd fall back to clone or fork and
// cgroup.procs: CLONE_INTO_CGROUP with a directory fd of a FUSE view would
// fail with EBADF. fsopen fails so that a nested runtime cannot reach a
// kernel cgroupfs through the new mount API; everything falls back to
// mount(2) on ENOSYS, where the agent sees it.
//
// Only arch and nr are loaded, never arguments: the kernel's action cache
// (Linux 5.11) then decides every allowed syscall without running the
// program. Without the cache an allowed x86_64 syscall below 430 costs 9
// instructions.
func filter() []unix.SockFilter {
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		ret  = unix.BPF_RET | unix.BPF_K
		jeq  = unix.BPF_JEQ
		jge  = unix.BPF_JGE
		jset = unix.BPF_JSET
	)
	var a asm
	a.stmt(ld, offArch)
	a.jmp(jeq, unix.AUDIT_ARCH_X86_64, "", "not64")

	a.stmt(ld, offNr)
	a.jmp(jset, x32Bit, "enosys", "")
	a.jmp(jge, nrFsopen, "new64", "")
	a.jmp(jeq, x86_64Statfs, "notify", "")
	a.jmp(jeq, x86_64Fstatfs, "notify", "")
	a.jmp(jeq, x86_64Mount, "notify", "")
	a.stmt(ret, unix.SECCOMP_RET_ALLOW)
	a.label("new64")
	a.jmp(jeq, nrFsopen, "enosys", "")
	a.jmp(jeq, nrClone3, "enosys", "allow")

	a.label("not64")
	a.jmp(jeq, unix.AUDIT_ARCH_I386, "", "allow")
	a.stmt(ld, offNr)
	a.jmp(jeq, nrFsopen, "enosys", "")
	a.jmp(jeq, nrClone3, "enosys", "allow")

	a.label("allow")
	a.stmt(ret, unix.SECCOMP_RET_ALLOW)
	a.label("enosys")
	a.stmt(ret, unix.SECCOMP_RET_ERRNO|uint32(unix.ENOSYS))
	a.label("notify")
	a.stmt(ret, unix.SECCOMP_RET_USER_NOTIF)
	return a.assemble()
}

// Install puts the calling thread's process under cgfs's filter (all
// threads: TSYNC) and returns the listener. Call it from a locked OS thread
// right before exec.
//
// It needs CAP_SYS_ADMIN in the caller's user namespace: NO_NEW_PRIVS is
// not set, so setuid programs in the container keep working.
//
// The listener is close-on-exec. Hand it to an agent (Serve) before the
// caller makes a notified syscall, and keep a copy somewhere: when the
// last copy is closed, every notified syscall fails with ENOSYS. A process
// can have one listener in its filter chain; a second Install fails with
// EBUSY.
func Install() (listener *os.File, err error) {
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("agent: install seccomp filter: only amd64 is supported, not %s", runtime.GOARCH)
	}
	prog := filter()
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	// TSYNC with NEW_LISTENER needs TSYNC_ESRCH (Linux 5.7). Without it
	// (EINVAL) only this thread gets the filter, which is enough when it
	// execs next: exec leaves the new program this thread alone.
	flags := []uintptr{
		unix.SECCOMP_FILTER_FLAG_NEW_LISTENER | unix.SECCOMP_FILTER_FLAG_TSYNC | unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH,
		unix.SECCOMP_FILTER_FLAG_NEW_LISTENER,
	}
	var errno unix.Errno
	for _, f := range flags {
		var fd uintptr
		fd, _, errno = unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, f, uintptr(unsafe.Pointer(&fprog)))
		runtime.KeepAlive(prog)
		if errno == 0 {
			return os.NewFile(fd, "seccomp-listener"), nil
		}
		if errno != unix.EINVAL {
			break
		}
	}
	switch {
	case errors.Is(errno, unix.EACCES):
		return nil, fmt.Errorf("agent: install seccomp filter: %w: needs CAP_SYS_ADMIN in the caller's user namespace (NO_NEW_PRIVS is deliberately not set)", errno)
	case errors.Is(errno, unix.EBUSY):
		return nil, fmt.Errorf("agent: install seccomp filter: %w: the process already has a seccomp listener", errno)
	case errors.Is(errno, unix.ESRCH):
		return nil, fmt.Errorf("agent: install seccomp filter: %w: another thread could not be synchronized", errno)
	}
	return nil, fmt.Errorf("agent: install seccomp filter: %w", errno)
}
