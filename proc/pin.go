package proc

import (
	"bytes"
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
	st, err := t.status()
	return st.tgid, st.nspid, err
}

// status reads the pinned task's status file through the pin (a file of
// this task, or an error once it is gone), the fields cgfs uses.
func (t *Pin) status() (taskStatus, error) {
	fd, err := unix.Openat(t.fd, "status", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return taskStatus{}, fmt.Errorf("task %d: status: %w", t.tid, err)
	}
	defer unix.Close(fd)
	return readStatus(fd, t.tid)
}

// statusOf reads host task tid's status file by its id: for a task whose
// id cannot be reused meanwhile (a live thread's leader).
func (p *Procs) statusOf(tid int) (taskStatus, error) {
	fd, err := unix.Open(p.root+"/"+strconv.Itoa(tid)+"/status", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return taskStatus{}, fmt.Errorf("task %d: status: %w", tid, err)
	}
	defer unix.Close(fd)
	return readStatus(fd, tid)
}

// taskStatus is what cgfs reads of /proc/TID/status.
type taskStatus struct {
	tgid      int
	nspid     []int // the task's id in each pid namespace, the reader's first
	uid, suid uint32
}

// readStatus reads a status file from fd in one pass (the kernel makes
// it whole at the first read) and picks out Tgid, NSpid and Uid: a task
// identified on every FUSE request is read with four system calls and
// no other allocation than the ids, where a general parser of every
// field cost a fifth of the server's time moving tasks.
func readStatus(fd, tid int) (taskStatus, error) {
	var buf [4096]byte
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return taskStatus{}, fmt.Errorf("task %d: status: %w", tid, err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	st, ok := parseStatus(buf[:n])
	if !ok {
		return taskStatus{}, fmt.Errorf("task %d: unreadable status", tid)
	}
	if len(st.nspid) == 0 { // kernels before 4.1 have no NSpid
		st.nspid = []int{tid}
	}
	return st, nil
}

// parseStatus picks Tgid, NSpid and Uid out of a status file's text; ok
// is false when Tgid or Uid is missing or not a number.
func parseStatus(b []byte) (st taskStatus, ok bool) {
	var haveTgid, haveUID bool
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		key, val, found := bytes.Cut(line, []byte(":"))
		if !found {
			continue
		}
		switch string(key) {
		case "Tgid":
			v, err := strconv.Atoi(string(bytes.TrimSpace(val)))
			if err != nil || v <= 0 {
				return st, false
			}
			st.tgid, haveTgid = v, true
		case "NSpid":
			for _, f := range bytes.Fields(val) {
				v, err := strconv.Atoi(string(f))
				if err != nil || v <= 0 {
					return st, false
				}
				st.nspid = append(st.nspid, v)
			}
		case "Uid":
			f := bytes.Fields(val)
			if len(f) != 4 {
				return st, false
			}
			uid, err1 := strconv.ParseUint(string(f[0]), 10, 32)
			suid, err2 := strconv.ParseUint(string(f[2]), 10, 32)
			if err1 != nil || err2 != nil {
				return st, false
			}
			st.uid, st.suid, haveUID = uint32(uid), uint32(suid), true
		}
	}
	return st, haveTgid && haveUID
}

// Cgroups reads the task's /proc/PID/cgroup lines. Check Alive after it.
func (t *Pin) Cgroups() ([]procfs.Cgroup, error) {
	return t.p.Cgroups(t.tid)
}

// UIDs reads the task's real and saved user ids, as the server's user
// namespace sees them. Check Alive after it.
func (t *Pin) UIDs() (uid, suid uint32, err error) {
	st, err := t.status()
	return st.uid, st.suid, err
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
