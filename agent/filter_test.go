//go:build linux

package agent

import (
	"testing"

	"golang.org/x/sys/unix"
)

// runBPF runs a classic BPF seccomp program on (arch, nr): the small
// subset of instructions filter uses. It returns the action and how many
// instructions ran.
func runBPF(t *testing.T, prog []unix.SockFilter, arch, nr uint32) (action uint32, steps int) {
	t.Helper()
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		steps++
		in := prog[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			switch in.K {
			case offNr:
				acc = nr
			case offArch:
				acc = arch
			default:
				t.Fatalf("pc %d loads offset %d: the filter must look only at nr and arch", pc, in.K)
			}
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K:
			var cond bool
			switch in.Code &^ (unix.BPF_JMP | unix.BPF_K) {
			case unix.BPF_JEQ:
				cond = acc == in.K
			case unix.BPF_JGE:
				cond = acc >= in.K
			case unix.BPF_JSET:
				cond = acc&in.K != 0
			}
			if cond {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case unix.BPF_RET | unix.BPF_K:
			return in.K, steps
		default:
			t.Fatalf("pc %d: unexpected instruction %#x", pc, in.Code)
		}
	}
	t.Fatal("program ran off its end")
	return 0, steps
}

func TestFilter(t *testing.T) {
	const (
		allow  = unix.SECCOMP_RET_ALLOW
		notify = unix.SECCOMP_RET_USER_NOTIF
		enosys = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
		x86_64 = unix.AUDIT_ARCH_X86_64
		i386   = unix.AUDIT_ARCH_I386
	)
	prog := filter()
	if len(prog) > 24 {
		t.Errorf("filter has %d instructions, expected a small one", len(prog))
	}
	cases := []struct {
		arch, nr uint32
		want     uint32
	}{
		{x86_64, 137, notify}, {x86_64, 138, notify}, {x86_64, 165, notify},
		{x86_64, 435, enosys}, {x86_64, 430, enosys},
		{x86_64, 0, allow}, {x86_64, 39, allow}, {x86_64, 56, allow}, {x86_64, 431, allow}, {x86_64, 437, allow}, {x86_64, 999, allow},
		{x86_64, x32Bit | 137, enosys}, {x86_64, x32Bit, enosys}, {x86_64, 0xffffffff, enosys},
		{i386, 435, enosys}, {i386, 430, enosys},
		{i386, 99, allow}, {i386, 100, allow}, {i386, 268, allow}, {i386, 269, allow}, {i386, 21, allow}, {i386, 137, allow},
		{unix.AUDIT_ARCH_AARCH64, 435, allow}, {unix.AUDIT_ARCH_AARCH64, 43, allow},
	}
	for _, c := range cases {
		if got, _ := runBPF(t, prog, c.arch, c.nr); got != c.want {
			t.Errorf("arch %#x nr %#x: %#x, want %#x", c.arch, c.nr, got, c.want)
		}
	}
	// Without the kernel's action cache, an allowed x86_64 syscall runs
	// at most 11 instructions (9 below 430).
	for nr := uint32(0); nr < 512; nr++ {
		action, steps := runBPF(t, prog, x86_64, nr)
		if action == allow && (steps > 11 || nr < 430 && steps > 9) {
			t.Errorf("nr %d: %d instructions", nr, steps)
		}
	}
}
