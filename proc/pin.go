package proc

import (
	"fmt"
	"os"
	"strconv"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Pin holds one host task through an open /proc/TID directory: names
// looked up through it reach that task or nothing (ENOENT once it is
// gone), even after its id is reused. Unlike pidfd_open it works for any
// thread on every kernel (PIDFD_THREAD needs 6.9, the pidfd namespace
// ioctls 6.11).
type Pin struct {
	fd  int
	tid int
	p   *Procs
}

// Pin pins host task tid. A task that does not exist is ESRCH.
func (p *Procs) Pin(tid int) (*Pin, error) {
	fd, err := unix.Open(p.root+"/"+strconv.Itoa(tid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOENT {
			return nil, unix.ESRCH
		}
		return nil, err
	}
	return &Pin{fd: fd, tid: tid, p: p}, nil
}

// Tid is the pinned task's host id.
func (t *Pin) Tid() int { return t.tid }

// Close releases the pin.
func (t *Pin) Close() { unix.Close(t.fd) }

// Alive reports whether the pinned task still exists (a zombie does: its
// id is not free yet). Whatever was read about its id since the pin was
// about it if it is still alive.
func (t *Pin) Alive() bool {
	var st unix.Stat_t
	return unix.Fstatat(t.fd, "stat", &st, 0) == nil
}

// Namespace opens the pinned task's namespace of kind ("user", "pid").
// The caller closes the descriptor.
func (t *Pin) Namespace(kind string) (int, error) {
	fd, err := unix.Openat(t.fd, "ns/"+kind, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("namespace %s of %d: %w", kind, t.tid, err)
	}
	return fd, nil
}

// NamespaceFile opens the pinned task's namespace of kind as a file, for
// holding it.
func (t *Pin) NamespaceFile(kind string) (*os.File, error) {
	fd, err := t.Namespace(kind)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "ns/"+kind), nil
}

// Status reads the task's thread group id and its pid in every pid
// namespace, the server's first. Check Alive after it.
func (t *Pin) Status() (tgid int, nspid []int, err error) {
	proc, err := t.p.fs.Proc(t.tid)
	if err != nil {
		return 0, nil, err
	}
	st, err := safely("status", t.tid, proc.NewStatus)
	if err != nil {
		return 0, nil, err
	}
	for _, n := range st.NSpids {
		nspid = append(nspid, int(n))
	}
	if len(nspid) == 0 { // kernels before 4.1 have no NSpid
		nspid = []int{t.tid}
	}
	return int(st.TGID), nspid, nil
}

// Cgroups reads the task's /proc/PID/cgroup lines. Check Alive after it.
func (t *Pin) Cgroups() ([]procfs.Cgroup, error) {
	return t.p.Cgroups(t.tid)
}

// UIDs reads the task's real and saved user ids, as the server's user
// namespace sees them. Check Alive after it.
func (t *Pin) UIDs() (uid, suid uint32, err error) {
	proc, err := t.p.fs.Proc(t.tid)
	if err != nil {
		return 0, 0, err
	}
	st, err := safely("status", t.tid, proc.NewStatus)
	if err != nil {
		return 0, 0, err
	}
	return uint32(st.UIDs[0]), uint32(st.UIDs[2]), nil
}

// Parent reads the id of the task's parent, in the pid namespace of the
// proc filesystem it was pinned through. Check Alive after it.
func (t *Pin) Parent() (int, error) {
	proc, err := t.p.fs.Proc(t.tid)
	if err != nil {
		return 0, err
	}
	st, err := safely("stat", t.tid, proc.Stat)
	if err != nil {
		return 0, err
	}
	return st.PPID, nil
}

// UserNS identifies the pinned task's user namespace now, without
// opening it. Check Alive after it.
func (t *Pin) UserNS() (NS, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(t.fd, "ns/user", &st, 0); err != nil {
		return NS{}, err
	}
	return NS{Dev: st.Dev, Ino: st.Ino}, nil
}
