package translate

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Pids reads task identities from a proc filesystem: which pid a host
// task has in which pid namespace, and which cgroup it is in.
type Pids struct {
	proc  string
	fs    procfs.FS
	cache *pidCache
}

// NewPids reads from the proc filesystem mounted at proc.
func NewPids(proc string) (*Pids, error) {
	fs, err := procfs.NewFS(proc)
	if err != nil {
		return nil, err
	}
	cache, err := newPidCache()
	if err != nil {
		return nil, err
	}
	return &Pids{proc: proc, fs: fs, cache: cache}, nil
}

// Task is a host task as one pid namespace sees it.
type Task struct {
	Tid   int   // host thread id
	Tgid  int   // host thread group id
	NSpid []int // its pid in each pid namespace, host first
}

func (p *Pids) task(tid int) (Task, error) {
	proc, err := p.fs.Proc(tid)
	if err != nil {
		return Task{}, err
	}
	st, err := proc.NewStatus()
	if err != nil {
		return Task{}, err
	}
	t := Task{Tid: tid, Tgid: int(st.TGID)}
	for _, n := range st.NSpids {
		t.NSpid = append(t.NSpid, int(n))
	}
	if len(t.NSpid) == 0 { // kernels before 4.1 have no NSpid
		t.NSpid = []int{tid}
	}
	return t, nil
}

// Reader is a thread on whose behalf pids are read or written: its pid
// namespace and how deep that namespace is below the server's.
type Reader struct {
	Tid   int
	Tgid  int
	NS    NS
	Level int
}

// ReaderOf describes host thread tid as a reader or writer of pids.
func (p *Pids) ReaderOf(tid int) (Reader, error) {
	t, err := p.task(tid)
	if err != nil {
		return Reader{}, err
	}
	ns, err := NamespaceOf(p.proc, tid, "pid")
	if err != nil {
		return Reader{}, err
	}
	return Reader{Tid: tid, Tgid: t.Tgid, NS: ns, Level: len(t.NSpid) - 1}, nil
}

// seenBy returns the number task t has in r's pid namespace, if r can see
// t: t's pid namespace must be r's or a descendant of it.
func (p *Pids) seenBy(t Task, r Reader) (int, bool) {
	if len(t.NSpid) <= r.Level {
		return 0, false
	}
	up := len(t.NSpid) - 1 - r.Level
	ns, err := ancestorNS(p.proc+"/"+strconv.Itoa(t.Tid)+"/ns/pid", up)
	if err != nil || ns != r.NS {
		return 0, false
	}
	return t.NSpid[r.Level], true
}

// cgroupOf returns host task tid's cgroup path in the hierarchy whose
// /proc/PID/cgroup field is controllers ("" for cgroup v2), as the
// server's cgroup namespace shows it.
func (p *Pids) cgroupOf(tid int, controllers string) (string, error) {
	b, err := os.ReadFile(p.proc + "/" + strconv.Itoa(tid) + "/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && f[1] == controllers && (controllers != "" || f[0] == "0") {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("task %d has no line for hierarchy %q", tid, controllers)
}

// ParsePid parses what a writer wrote to cgroup.procs or cgroup.threads
// as the kernel's cgroup_procs_write_start does: kstrtoint(strstrip(buf),
// 0, &pid), so surrounding white space, a leading '+', "0x" hex and
// leading-0 octal are taken; anything else, two numbers or a negative
// one included, is EINVAL.
func ParsePid(data []byte) (int, error) {
	s := string(bytes.TrimSpace(data))
	digits := strings.TrimPrefix(s, "+")
	// Go's base 0 also takes 0b, 0o and '_', which kstrtoint does not.
	if strings.ContainsRune(digits, '_') || strings.HasPrefix(strings.ToLower(digits), "0b") ||
		strings.HasPrefix(strings.ToLower(digits), "0o") {
		return 0, unix.EINVAL
	}
	n, err := strconv.ParseInt(digits, 0, 32)
	if err != nil || n < 0 {
		return 0, unix.EINVAL
	}
	return int(n), nil
}

// errPidOutside: the pid names a task the writer sees, outside the view:
// ENOENT, as nsdelegate answers a migration across the namespace root.
var errPidOutside = fmt.Errorf("task outside the view: %w", unix.ENOENT)

// errNoSuchPid: the writer sees no task with that number (ESRCH, as the
// kernel's find_task_by_vpid failing).
var errNoSuchPid = fmt.Errorf("no such task in the writer's pid namespace: %w", unix.ESRCH)

// resolveWrite maps number, written by w into cgroup.procs (threads
// false) or cgroup.threads (true) of this view, to a host task inside the
// view's subtree. 0 means the writer itself: its thread group for procs,
// its thread for threads. It returns the host tid to write and the task's
// current cgroup as a virtual path.
func (v *View) resolveWrite(w Reader, number int, threads bool) (hostTid int, from string, err error) {
	p := v.pids
	if p == nil || v.host.cgroupPath == "" {
		return 0, "", errors.New("view has no pid support (no cgroup2 host path)")
	}
	switch {
	case number == 0 && threads:
		hostTid = w.Tid
	case number == 0:
		hostTid = w.Tgid
	default:
		hostTid, err = v.findInSubtree(w, number)
		if err != nil {
			return 0, "", err
		}
	}
	from, err = v.virtualCgroupOf(hostTid)
	return hostTid, from, err
}

// findInSubtree looks for the task numbered n in w's pid namespace among
// the view's tasks; failing that, it tells ESRCH from ENOENT by looking
// at every task on the host.
func (v *View) findInSubtree(w Reader, n int) (int, error) {
	tids, err := v.Tasks("")
	if err != nil {
		return 0, err
	}
	for _, tid := range tids {
		t, err := v.pids.task(tid)
		if err != nil {
			continue // exited
		}
		if got, ok := v.pids.seenBy(t, w); ok && got == n {
			return tid, nil
		}
	}
	procs, err := v.pids.fs.AllProcs()
	if err != nil {
		return 0, err
	}
	for _, proc := range procs {
		t, err := v.pids.task(proc.PID)
		if err != nil {
			continue
		}
		if got, ok := v.pids.seenBy(t, w); ok && got == n {
			return 0, errPidOutside
		}
	}
	return 0, errNoSuchPid
}

// virtualCgroupOf returns the virtual path of host task tid's cgroup, or
// ENOENT if the task is outside the view.
func (v *View) virtualCgroupOf(tid int) (string, error) {
	path, err := v.pids.cgroupOf(tid, v.host.controllers)
	if err != nil {
		return "", errNoSuchPid
	}
	root := v.host.cgroupPath
	if path == root {
		return "", nil
	}
	rel, ok := strings.CutPrefix(path, strings.TrimSuffix(root, "/")+"/")
	if !ok {
		return "", errPidOutside
	}
	// A task in a hidden leaf is, to the container, in the leaf's cgroup.
	if rel == LeafName {
		return "", nil
	}
	return strings.TrimSuffix(rel, "/"+LeafName), nil
}

// Tasks lists the host tids of every task in the virtual cgroup vpath
// and below.
func (v *View) Tasks(vpath string) ([]int, error) {
	b, err := v.host.ReadFile(Join(v.hostPath(vpath), v.tasksFile()))
	if err != nil {
		return nil, err
	}
	out := parseIDs(b)
	entries, err := v.host.Names(v.hostPath(vpath))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.Mode&unix.S_IFMT == unix.S_IFDIR {
			sub, err := v.Tasks(Join(vpath, e.Name))
			// A cgroup removed while we walk is gone (ENOENT) or dying
			// (its files answer ENODEV): it has no tasks.
			if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				return nil, err
			}
			out = append(out, sub...)
		}
	}
	return out, nil
}

// Migrate carries out a write of number by writer w to the control file
// vpath (cgroup.procs, cgroup.threads or v1's tasks): it resolves the
// number to a task in the view (see resolveWrite), asks allow whether the
// move from the task's cgroup to vpath's may happen, and writes it (see
// WritePid), all under the view's migration lock so the tree cannot
// change in between.
func (v *View) Migrate(vpath string, w Reader, number int, threads bool, allow func(from, to string) error) error {
	defer v.migrations.lock()()
	tid, from, err := v.resolveWrite(w, number, threads)
	if err != nil {
		return err
	}
	if err := allow(from, parentOf(vpath)); err != nil {
		return err
	}
	return v.writePid(vpath, tid)
}

// writePid writes host task tid into the control file vpath (cgroup.procs
// or cgroup.threads) on the host. The task is pinned (its /proc
// directory) and re-checked to be inside the view after the pin, so a pid reused in
// between cannot be moved. A process the kernel refuses in H because H
// enables domain controllers for its children (EBUSY, no internal
// processes) goes into H's hidden leaf. Callers hold the migration lock.
func (v *View) writePid(vpath string, tid int) error {
	pin, err := OpenTaskDir(v.pids.proc, tid)
	if err != nil {
		return &Error{Op: "write", Path: vpath, Data: strconv.Itoa(tid), Err: unix.ESRCH}
	}
	defer pin.Close()
	if _, err := v.virtualCgroupOf(tid); err != nil {
		return &Error{Op: "write", Path: vpath, Data: strconv.Itoa(tid), Err: err}
	}
	if !pin.Alive() { // the cgroup read above may have been a new task's
		return &Error{Op: "write", Path: vpath, Data: strconv.Itoa(tid), Err: unix.ESRCH}
	}
	dir := v.hostPath(parentOf(vpath))
	file := path.Base(vpath)
	err = v.writeHostPid(Join(dir, file), tid)
	if errors.Is(err, unix.EBUSY) && file == "cgroup.procs" {
		if lerr := v.ensureLeaf(dir); lerr != nil {
			return lerr
		}
		err = v.writeHostPid(Join(Join(dir, LeafName), file), tid)
	}
	return err
}

// ensureLeaf makes host cgroup dir's hidden leaf if it has none.
func (v *View) ensureLeaf(dir string) error {
	if v.hasLeaf(dir) {
		return nil
	}
	if err := v.host.Mkdir(dir, LeafName, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// preadAll reads a control file from offset 0 to its end.
func preadAll(f *os.File) ([]byte, error) {
	buf := make([]byte, 0, 64<<10)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := unix.Pread(int(f.Fd()), buf[len(buf):cap(buf)], int64(len(buf)))
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// parseIDs parses one decimal id per line, as cgroup.procs holds them.
func parseIDs(b []byte) []int {
	ids := make([]int, 0, len(b)/6)
	n, in := 0, false
	for _, c := range b {
		if c >= '0' && c <= '9' {
			n = n*10 + int(c-'0')
			in = true
			continue
		}
		if in {
			ids = append(ids, n)
		}
		n, in = 0, false
	}
	if in {
		ids = append(ids, n)
	}
	return ids
}

// tasksFile lists every thread of a cgroup: cgroup.threads on v2, tasks
// on v1.
func (v *View) tasksFile() string {
	if v.v1 {
		return "tasks"
	}
	return "cgroup.threads"
}
