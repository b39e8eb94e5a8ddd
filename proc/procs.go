package proc

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Procs reads tasks from the proc filesystem mounted at one place. It is
// safe for concurrent use.
type Procs struct {
	root  string
	fs    procfs.FS
	cache *pidCache
}

// Open reads tasks from the proc filesystem at root ("/proc" on a host).
func Open(root string) (*Procs, error) {
	fs, err := procfs.NewFS(root)
	if err != nil {
		return nil, err
	}
	cache, err := newPidCache()
	if err != nil {
		return nil, err
	}
	return &Procs{root: root, fs: fs, cache: cache}, nil
}

// Thread is a host thread as a reader or writer of task ids: its thread
// group and the pid namespace it names tasks in, Level namespaces below
// the server's.
type Thread struct {
	Tid   int
	Tgid  int
	PidNS NS
	Level int
	// OwnTid and OwnPid are the thread's and its process's ids in its
	// own pid namespace: what a write of "0" names there.
	OwnTid, OwnPid int
}

// Thread identifies host thread tid as a reader or writer of task ids.
// It is read through a pin: a reused id never lends its namespace.
func (p *Procs) Thread(tid int) (Thread, error) {
	pin, err := p.Pin(tid)
	if err != nil {
		return Thread{}, err
	}
	defer pin.Close()
	return pin.Thread()
}

// StartTime is when task tid started, in clock ticks after boot: with
// its id, what names one task across id reuse.
func (p *Procs) StartTime(tid int) (uint64, error) {
	pr, err := p.fs.Proc(tid)
	if err != nil {
		return 0, err
	}
	st, err := pr.Stat()
	if err != nil {
		return 0, err
	}
	return st.Starttime, nil
}

// Thread identifies the pinned task as a reader or writer of task ids.
func (t *Pin) Thread() (Thread, error) {
	tgid, nspid, err := t.Status()
	if err != nil {
		return Thread{}, err
	}
	fd, err := t.Namespace("pid")
	if err != nil {
		return Thread{}, err
	}
	ns, err := nsOf(fd)
	unix.Close(fd)
	if err != nil {
		return Thread{}, err
	}
	th := Thread{Tid: t.tid, Tgid: tgid, PidNS: ns, Level: len(nspid) - 1, OwnTid: nspid[len(nspid)-1]}
	th.OwnPid = th.OwnTid
	if tgid != t.tid {
		// The leader's id cannot be reused while this thread lives.
		st, err := t.p.statusOf(tgid)
		if err != nil {
			return Thread{}, fmt.Errorf("thread group %d: %w", tgid, err)
		}
		th.OwnPid = st.nspid[len(st.nspid)-1]
	}
	if !t.Alive() {
		return Thread{}, fmt.Errorf("task %d exited while being read", t.tid)
	}
	return th, nil
}

// NumberIn returns the number host task tid has in th's pid namespace,
// if th can see it (the task's pid namespace is th's or below it). It
// reads afresh through a pin, never from the cache: migrations decide
// on it.
func (p *Procs) NumberIn(tid int, th Thread) (int, bool) {
	pin, err := p.Pin(tid)
	if err != nil {
		return 0, false
	}
	defer pin.Close()
	_, nspid, err := pin.Status()
	if err != nil || len(nspid) <= th.Level {
		return 0, false
	}
	fd, err := pin.Namespace("pid")
	if err != nil {
		return 0, false
	}
	up := len(nspid) - 1 - th.Level
	chain, err := Ancestry(fd, up+1)
	if err != nil || len(chain) != up+1 || chain[up].NS != th.PidNS || !pin.Alive() {
		return 0, false
	}
	return nspid[th.Level], true
}

// ThreadGroup returns the host thread group id (the pid) of thread tid.
func (p *Procs) ThreadGroup(tid int) (int, error) {
	st, err := p.statusOf(tid)
	return st.tgid, err
}

// AllPids lists every process (thread group) on the host.
func (p *Procs) AllPids() ([]int, error) {
	procs, err := p.fs.AllProcs()
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(procs))
	for _, proc := range procs {
		out = append(out, proc.PID)
	}
	return out, nil
}

// Cgroups reads task tid's /proc/PID/cgroup: the one parser of it in
// cgfs (prometheus/procfs's).
func (p *Procs) Cgroups(tid int) ([]procfs.Cgroup, error) {
	proc, err := p.fs.Proc(tid)
	if err != nil {
		return nil, err
	}
	return proc.Cgroups()
}

// SelfCgroups reads the server's own /proc/self/cgroup.
func (p *Procs) SelfCgroups() ([]procfs.Cgroup, error) {
	return p.Cgroups(os.Getpid())
}

// Controllers names a cgroup hierarchy as /proc/PID/cgroup lines do, by
// their controllers field: "" for cgroup v2, "memory", "cpu,cpuacct",
// "name=systemd" for v1 hierarchies.
type Controllers string

// In returns the path of the line for hierarchy h among a task's cgroup
// lines.
func (h Controllers) In(lines []procfs.Cgroup) (string, bool) {
	for _, l := range lines {
		if h == "" && l.HierarchyID == 0 && len(l.Controllers) == 0 {
			return l.Path, true
		}
		if h != "" && l.HierarchyID != 0 && strings.Join(l.Controllers, ",") == string(h) {
			return l.Path, true
		}
	}
	return "", false
}

// CgroupIn returns host task tid's cgroup path in hierarchy h, as the
// server's cgroup namespace shows it.
func (p *Procs) CgroupIn(tid int, h Controllers) (string, error) {
	lines, err := p.Cgroups(tid)
	if err != nil {
		return "", err
	}
	path, ok := h.In(lines)
	if !ok {
		return "", fmt.Errorf("task %d has no line for hierarchy %q", tid, h)
	}
	return path, nil
}

// Root is where the proc filesystem is mounted.
func (p *Procs) Root() string { return p.root }

// Sees returns a test of whether th's pid namespace sees host task tid
// (the task's pid namespace is th's or below it), for scans of many
// tasks: each task costs one stat of its ns/pid, and each namespace met
// one walk up its ancestry. A task that no longer exists is not seen
// (gone is true).
func (p *Procs) Sees(th Thread) func(tid int) (seen, gone bool) {
	memo := map[NS]bool{}
	return func(tid int) (bool, bool) {
		var st unix.Stat_t
		path := p.root + "/" + strconv.Itoa(tid) + "/ns/pid"
		if err := unix.Stat(path, &st); err != nil {
			return false, true
		}
		ns := NS{Dev: st.Dev, Ino: st.Ino}
		if seen, ok := memo[ns]; ok {
			return seen, false
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return false, true
		}
		chain, err := Ancestry(fd, MaxDepth)
		if err != nil || len(chain) == 0 || chain[0].NS != ns {
			return false, false // changed under us: judged again next time
		}
		seen := slices.ContainsFunc(chain, func(a Ancestor) bool { return a.NS == th.PidNS })
		memo[ns] = seen
		return seen, false
	}
}

// safely runs a procfs parser of a task's file. procfs indexes by what
// the text says (a stat whose "(comm)" is not in order, a Uid line of
// more than four ids: both panic); the kernel never writes such text,
// but no text of one task may stop the server: a panic is an error.
func safely[T any](file string, tid int, parse func() (T, error)) (v T, err error) {
	defer func() {
		if x := recover(); x != nil {
			err = fmt.Errorf("task %d: unreadable %s: %v", tid, file, x)
		}
	}()
	return parse()
}
