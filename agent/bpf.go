//go:build linux

package agent

import "golang.org/x/sys/unix"

// asm assembles a classic BPF program whose jumps name labels instead of
// counting instructions, so the filter reads as what it does.
type asm struct {
	prog   []unix.SockFilter
	labels map[string]int
	jumps  []jump
}

// jump is a conditional jump whose targets are resolved by assemble.
type jump struct {
	at     int
	jt, jf string // "" is the next instruction
}

// label names the next instruction.
func (a *asm) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	a.labels[name] = len(a.prog)
}

// stmt adds an instruction that does not jump.
func (a *asm) stmt(code uint16, k uint32) {
	a.prog = append(a.prog, unix.SockFilter{Code: code, K: k})
}

// jmp adds a conditional jump (BPF_JMP|op|BPF_K against k) to jt if true
// and jf if false.
func (a *asm) jmp(op uint16, k uint32, jt, jf string) {
	a.jumps = append(a.jumps, jump{at: len(a.prog), jt: jt, jf: jf})
	a.stmt(unix.BPF_JMP|op|unix.BPF_K, k)
}

// assemble resolves the jumps. Classic BPF jumps only forward, at most
// 255 instructions; a program breaking that is a bug in this package.
func (a *asm) assemble() []unix.SockFilter {
	off := func(from int, to string) uint8 {
		if to == "" {
			return 0
		}
		at, ok := a.labels[to]
		d := at - from - 1
		if !ok || d < 0 || d > 255 {
			panic("agent: bad BPF jump to " + to)
		}
		return uint8(d)
	}
	for _, j := range a.jumps {
		a.prog[j.at].Jt = off(j.at, j.jt)
		a.prog[j.at].Jf = off(j.at, j.jf)
	}
	return a.prog
}
