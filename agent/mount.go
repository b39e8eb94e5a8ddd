//go:build linux

package agent

import "golang.org/x/sys/unix"

// Mounter answers a mount(2) of fstype "cgroup" or "cgroup2" by a container
// process (nested runtimes). It returns handled=false to let the kernel do
// it. m carries what the caller asked, read from its memory.
type Mounter func(c Caller, m MountCall) (handled bool, errno unix.Errno)

// MountCall is what a caller passed to mount(2). A NULL source or data is
// "".
type MountCall struct {
	Source, Target, FSType, Data string
	Flags                        uintptr
}

// mountDataMax bounds data: the kernel copies at most a page of it.
const mountDataMax = 4096

// mount gives a mount of a cgroup filesystem to cfg.Mounter.
//
// Every other mount is continued. That is the TOCTOU case
// seccomp_unotify(2) warns about: another thread of the caller may rewrite
// fstype between this check and the kernel's own read, and so reach a
// kernel cgroupfs after all. That is acceptable here: a container may mount
// its own cgroupfs anyway (its cgroup namespace belongs to its user
// namespace). The interception keeps nested runtimes on cgfs; it does not
// make the kernel mount impossible.
func (a *Agent) mount(p *proc, n *seccompNotif) verdict {
	if a.cfg.Mounter == nil {
		return cont("no Mounter")
	}
	args := n.Data.Args
	if err := p.openMem(); err != nil {
		return a.failed(p, "mount", err)
	}
	fstype, err := p.readString(args[2], pathMax, true)
	if err != nil {
		return a.failed(p, "mount", err)
	}
	if fstype != "cgroup" && fstype != "cgroup2" {
		return cont("fstype " + fstype)
	}
	m := MountCall{FSType: fstype, Flags: uintptr(args[3])}
	for _, s := range []struct {
		addr   uint64
		max    int
		nullOK bool
		to     *string
	}{
		{args[0], pathMax, true, &m.Source},
		{args[1], pathMax, false, &m.Target},
		{args[4], mountDataMax, true, &m.Data},
	} {
		if *s.to, err = p.readString(s.addr, s.max, s.nullOK); err != nil {
			return a.failed(p, "mount", err)
		}
	}
	// Caller.Resolve opens root or cwd as needed and checks validity
	// after; the Mounter must see a live caller in any case.
	if !p.valid() {
		return gone
	}
	handled, errno := a.cfg.Mounter(Caller{Tid: p.tid, Init: p.init, p: p}, m)
	if !handled {
		return cont("Mounter declined")
	}
	return answer(errno)
}
