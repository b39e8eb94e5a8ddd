package translate

import (
	"bytes"
	"errors"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/access/proc"
	"github.com/cgfs/cgfs/translate/host"
)

// Task files list the tasks of a cgroup in the reader's pid namespace,
// merged with its hidden leaf's, and a write of one id moves that task
// there (cgroup-v2.rst "Processes" and "Threads"; v1's tasks moves one
// thread). The root's are delegated: the container may move its tasks
// there.
func init() {
	register("cgroup.procs", &controlFile{read: readTasks, reader: true, write: writeTasks(false), delegated: true})
	register("cgroup.threads", &controlFile{read: readTasks, reader: true, write: writeTasks(true), delegated: true})
	register("tasks", &controlFile{read: readTasks, reader: true, write: writeTasks(true), delegated: true})
}

// readTasks renders a task file for its reader, with its cgroup's
// hidden leaf's tasks: host text as it is for a reader in the server's
// pid namespace, else each id as the reader sees it, invisible ones
// dropped, sorted, de-duplicated (as base.go cgroupProcsData in gVisor,
// and the kernel for a reader in a pid namespace).
func readTasks(f *File) ([]byte, error) {
	raw, err := f.readHost()
	if err != nil {
		return nil, err
	}
	var leafRaw []byte
	if f.v.hasLeaf(f.cgroup) {
		leafRaw, _ = f.v.host.ReadFile(host.Join(host.Join(f.cgroup, LeafName), f.name))
	}
	if f.reader.Level == 0 {
		return append(raw, leafRaw...), nil
	}
	ids := append(ParseIDs(raw), ParseIDs(leafRaw)...)
	out := make([]byte, 0, len(raw)+16)
	for _, id := range f.v.procs.Translate(ids, f.reader) {
		out = strconv.AppendInt(out, int64(id), 10)
		out = append(out, '\n')
	}
	return out, nil
}

// writeTasks moves a task into f's cgroup: the id is read in the
// writer's pid namespace (0 is the writer itself: its thread for
// threads, its process otherwise), must name a task the writer sees
// inside the view, and the opener must be allowed the move.
func writeTasks(threads bool) func(f *File, r *access.Request, data []byte) (int, error) {
	return func(f *File, r *access.Request, data []byte) (int, error) {
		n, err := ParsePid(data)
		if err != nil {
			return 0, refuse(RuleBadValue, unix.EINVAL, "not one task id (data "+strconv.Quote(host.Shorten(data))+")")
		}
		w, err := r.Thread()
		if err != nil {
			return 0, err
		}
		v := f.v
		v.mu.Lock()
		defer v.mu.Unlock()
		if err := v.migrateLocked(f, w, n, threads); err != nil {
			return 0, err
		}
		return len(data), nil
	}
}

// migrateLocked resolves number, written by w, to a host task in the
// view, lets the policy judge the move for f's opener, and writes it.
func (v *View) migrateLocked(f *File, w proc.Thread, number int, threads bool) error {
	tid, from, err := v.resolveLocked(w, number, threads)
	if err != nil {
		return err
	}
	common, err := v.stat(host.Join(commonAncestor(from, f.cgroup), "cgroup.procs"))
	if err != nil {
		return err
	}
	if err := v.policy.MayMigrate(f.opener, &common); err != nil {
		return err
	}
	return v.moveLocked(f, tid)
}

// commonAncestor of two virtual cgroup paths ("" is the root).
func commonAncestor(a, b string) string {
	if a == "" || b == "" {
		return ""
	}
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	var common []string
	for i := 0; i < len(as) && i < len(bs) && as[i] == bs[i]; i++ {
		common = append(common, as[i])
	}
	return strings.Join(common, "/")
}

var (
	errNoSuchTask = refuse(RuleNoSuchTask, unix.ESRCH, "no such task in the writer's pid namespace")
	errOutside    = refuse(RuleTaskOutside, unix.ENOENT, "task outside the view")
	errNoCgroup   = errors.New("the view is not rooted at a cgroup: it moves no tasks")
)

// resolveLocked maps number, written by w into a task file of this view
// (threads: one thread moves), to a host task inside the view's subtree.
// It returns the host tid to write and the task's current cgroup as a
// virtual path.
func (v *View) resolveLocked(w proc.Thread, number int, threads bool) (tid int, from string, err error) {
	if v.cgroupPath == "" {
		return 0, "", errNoCgroup
	}
	switch {
	case number == 0 && threads:
		tid = w.Tid
	case number == 0:
		tid = w.Tgid
	default:
		if tid, err = v.findLocked(w, number); err != nil {
			return 0, "", err
		}
	}
	from, err = v.cgroupOf(tid)
	return tid, from, err
}

// findLocked looks for the task numbered n in w's pid namespace among
// the view's tasks; failing that, it tells ESRCH from ENOENT by looking
// at every process on the host.
func (v *View) findLocked(w proc.Thread, n int) (int, error) {
	tids, err := v.tasks("")
	if err != nil {
		return 0, err
	}
	for _, tid := range tids {
		if got, ok := v.procs.NumberIn(tid, w); ok && got == n {
			return tid, nil
		}
	}
	pids, err := v.procs.AllPids()
	if err != nil {
		return 0, err
	}
	for _, pid := range pids {
		if got, ok := v.procs.NumberIn(pid, w); ok && got == n {
			return 0, errOutside
		}
	}
	return 0, errNoSuchTask
}

// cgroupOf returns the virtual path of host task tid's cgroup (a task in
// a hidden leaf is, to the container, in the leaf's cgroup), or ENOENT
// if the task is outside the view.
func (v *View) cgroupOf(tid int) (string, error) {
	p, err := v.procs.CgroupIn(tid, v.controllers)
	if err != nil {
		return "", errNoSuchTask
	}
	root := v.cgroupPath
	if p == root {
		return "", nil
	}
	rel, ok := strings.CutPrefix(p, strings.TrimSuffix(root, "/")+"/")
	if !ok {
		return "", errOutside
	}
	if rel == LeafName {
		return "", nil
	}
	return strings.TrimSuffix(rel, "/"+LeafName), nil
}

// Foreign finds a task in the view that the owner, reading task ids as
// th, cannot see: a process outside the owner's namespaces, which the
// container must not be able to freeze, limit or move. It walks the
// view once (at mount).
func (v *View) Foreign(th proc.Thread) (tid int, found bool, err error) {
	tids, err := v.tasks("")
	if err != nil {
		return 0, false, err
	}
	for _, tid := range tids {
		if _, ok := v.procs.NumberIn(tid, th); !ok {
			if pin, err := v.procs.Pin(tid); err == nil { // not one that just exited
				pin.Close()
				return tid, true, nil
			}
		}
	}
	return 0, false, nil
}

// tasks lists the host tids of every task in the virtual cgroup vdir
// and below, hidden leaves included.
func (v *View) tasks(vdir string) ([]int, error) {
	file := "cgroup.threads"
	if v.v1 {
		file = "tasks"
	}
	var out []int
	err := v.walk(vdir, func(dir string, leaf bool) error {
		b, err := v.host.ReadFile(host.Join(dir, file))
		if err != nil {
			return err
		}
		out = append(out, ParseIDs(b)...)
		if leaf {
			b, err := v.host.ReadFile(host.Join(host.Join(dir, LeafName), file))
			if err == nil {
				out = append(out, ParseIDs(b)...)
			}
		}
		return nil
	})
	return out, err
}

// moveLocked writes host task tid into f (the destination's task file).
// The task is pinned and re-checked to be inside the view after the pin,
// so a pid reused in between cannot be moved. A process the kernel
// refuses because the cgroup enables domain controllers for its children
// (EBUSY, no internal processes) goes into the cgroup's hidden leaf.
func (v *View) moveLocked(f *File, tid int) error {
	id := strconv.Itoa(tid)
	pin, err := v.procs.Pin(tid)
	if err != nil {
		return errNoSuchTask
	}
	defer pin.Close()
	if _, err := v.cgroupOf(tid); err != nil {
		return err
	}
	if !pin.Alive() { // the cgroup read above may have been a new task's
		return errNoSuchTask
	}
	_, err = v.host.Write(f.host, f.vpath, []byte(id))
	if errors.Is(err, unix.EBUSY) && f.name == "cgroup.procs" && !v.v1 {
		if lerr := v.ensureLeafLocked(f.cgroup); lerr != nil {
			return lerr
		}
		_, err = v.host.WriteFile(host.Join(host.Join(f.cgroup, LeafName), f.name), []byte(id))
	}
	return err
}

// ParsePid parses what a writer wrote to a task file as the kernel's
// cgroup_procs_write_start does: kstrtoint(strstrip(buf), 0, &pid), and
// a negative id is EINVAL too.
func ParsePid(data []byte) (int, error) {
	n, err := kstrtoint(data)
	if err != nil || n < 0 {
		return 0, unix.EINVAL
	}
	return int(n), nil
}

// kstrtoint parses as the kernel's kstrtoint(strstrip(buf), 0, ...):
// surrounding white space, a sign, "0x" hex and leading-0 octal are
// taken; anything else is EINVAL, a number outside an int ERANGE.
func kstrtoint(data []byte) (int64, error) {
	s := string(bytes.TrimSpace(data))
	digits := strings.TrimPrefix(strings.TrimPrefix(s, "+"), "-")
	// Go's base 0 also takes 0b, 0o and '_', which the kernel does not.
	lower := strings.ToLower(digits)
	if strings.ContainsRune(digits, '_') || strings.HasPrefix(lower, "0b") || strings.HasPrefix(lower, "0o") ||
		strings.HasPrefix(digits, "+") || strings.HasPrefix(digits, "-") {
		return 0, unix.EINVAL
	}
	n, err := strconv.ParseInt(s, 0, 32)
	if errors.Is(err, strconv.ErrRange) {
		return 0, unix.ERANGE
	}
	if err != nil {
		return 0, unix.EINVAL
	}
	return n, nil
}

// ParseIDs parses one decimal id per line, as task files hold them.
func ParseIDs(b []byte) []int {
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
