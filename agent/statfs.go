//go:build linux

package agent

import (
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// statfs answers statfs(path, buf) when path is a view file.
func (a *Agent) statfs(p *proc, n *seccompNotif) verdict {
	if err := p.openMem(); err != nil {
		return a.failed(p, "statfs", err)
	}
	path, err := p.readString(n.Data.Args[0], pathMax, false)
	if err != nil {
		return a.failed(p, "statfs", err) // a bad pointer: the kernel says EFAULT
	}
	fd, err := p.resolve(path)
	if err != nil {
		return a.failed(p, "statfs", err) // the kernel gives the right errno
	}
	defer unix.Close(fd)
	return a.answerStatfs(p, "statfs", fd, n.Data.Args[1])
}

// fstatfs answers fstatfs(fd, buf) when fd is open on a view file. The
// caller's fd is reopened (O_PATH) through /proc/TID/fd/N, which leads to
// the open file itself, so stat and statfs see one file even if the
// caller replaces fd N meanwhile.
func (a *Agent) fstatfs(p *proc, n *seccompNotif) verdict {
	cfd := uint32(n.Data.Args[0]) // the kernel's unsigned int fd
	if cfd > 1<<31-1 {
		return cont("not an fd") // EBADF from the kernel
	}
	if err := p.openMem(); err != nil {
		return a.failed(p, "fstatfs", err)
	}
	fd, err := p.openFile("fd/"+strconv.FormatUint(uint64(cfd), 10), unix.O_PATH)
	if err != nil {
		return cont("fd: " + err.Error()) // not open, or not reopenable
	}
	defer unix.Close(fd)
	if !p.valid() {
		return gone
	}
	return a.answerStatfs(p, "fstatfs", fd, n.Data.Args[1])
}

// answerStatfs answers for the file open at fd: if Magic calls it a view,
// its real statfs with Magic's f_type is written at buf in the caller's
// memory.
func (a *Agent) answerStatfs(p *proc, sys string, fd int, buf uint64) verdict {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		a.callerWarn("seccomp agent: fstat of the caller's file failed", "syscall", sys, "tid", p.tid, "err", err)
		return cont("fstat: " + err.Error())
	}
	fsType, ok := a.magic(st.Dev, st.Ino)
	if !ok {
		return cont("not a view")
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		a.callerWarn("seccomp agent: statfs of a view failed", "syscall", sys, "tid", p.tid, "err", err)
		return answer(errnoOf(err))
	}
	sfs.Type = fsType
	if !p.valid() {
		return gone
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&sfs)), unsafe.Sizeof(sfs))
	if err := p.write(buf, b); err != nil {
		return verdict{answered: true, errno: unix.EFAULT, why: "write buf: " + err.Error()}
	}
	return answer(0)
}
