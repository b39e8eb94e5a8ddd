package translate

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
	"github.com/cgfs/cgfs/translate/pidns"
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
// dropped (as the kernel for a reader in a pid namespace), in the
// host's order on cgroup v2 and sorted without duplicates on v1, as
// each lists them.
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
	for _, id := range f.v.procs.Translate(ids, f.reader, f.v.v1) {
		out = strconv.AppendInt(out, int64(id), 10)
		out = append(out, '\n')
	}
	return out, nil
}

// writeTasks moves a task into f's cgroup: the id is read in the
// writer's pid namespace (0 is the writer itself: its thread for
// threads, its process otherwise), must name a task inside the view, and
// the opener must be allowed the move.
func writeTasks(threads bool) func(f *File, r *access.Request, data []byte) (int, error) {
	return func(f *File, r *access.Request, data []byte) (int, error) {
		n, err := ParsePid(data)
		if err != nil {
			return 0, refuse(RuleBadValue, unix.EINVAL, "not one task id (data "+strconv.Quote(host.Shorten(data))+")")
		}
		v := f.v
		if v.cgroupPath == "" {
			return 0, errNoCgroup
		}
		w, err := r.Thread()
		if err != nil {
			return 0, err
		}
		switch {
		case n == 0 && threads:
			n = w.OwnTid
		case n == 0:
			n = w.OwnPid
		}
		m, err := v.movers.For(w, r.PidNamespace)
		if errors.Is(err, pidns.ErrTooManyStarts) {
			return 0, refuse(RulePidNamespaces, unix.EAGAIN, "writes from new pid namespaces faster than helpers may start")
		}
		if errors.Is(err, pidns.ErrTooManyHelpers) {
			return 0, refuse(RulePidNamespaces, unix.EAGAIN, "writes from more pid namespaces than the container may have helpers in, all in use")
		}
		if err != nil {
			return 0, err
		}
		defer m.Release()
		// Migrations share the view lock: each is one task's, the
		// kernel serialises the moves themselves, and what they must not
		// meet (a leaf made or folded, a cgroup made or removed) holds
		// the lock alone.
		v.mu.RLock()
		defer v.mu.RUnlock()
		if err := v.migrateLocked(f, m, n); err != nil {
			if errors.Is(err, pidns.ErrHelperGone) && r.Gone() {
				// The writer's pid namespace ended under the write (the
				// helper dies with it), and the writer with it: nobody
				// reads the answer (ESRCH, as for any caller gone). A
				// helper gone while its writer lives stays an error the
				// host log shows.
				return 0, errors.Join(access.ErrGone, err)
			}
			return 0, err
		}
		return len(data), nil
	}
}

var (
	errNoSuchTask = refuse(RuleNoSuchTask, unix.ESRCH, "no such task in the writer's pid namespace")
	errOutside    = refuse(RuleTaskOutside, unix.ENOENT, "task outside the view")
	errNoCgroup   = errors.New("the view is not rooted at a cgroup: it moves no tasks")
)

// migrateLocked moves the task numbered n in m's pid namespace into f's
// cgroup. The task is pinned through that namespace's own proc
// filesystem (no walk, and it can only be one of the namespace's tasks),
// checked to be inside the view, judged for f's opener, and the id is
// written from inside the namespace, where the kernel resolves it again:
// a reused id can only ever be another task of that namespace. If the
// pinned task died before the kernel moved it and another took its id in
// that window, the other is put back where it was born. It runs with
// the view lock shared: other migrations run beside it (a task that
// took a dead task's id and was moved into the same cgroup by another
// writer at that very moment would be put back too: one of the
// container's own tasks, in a cgroup of its own).
func (v *View) migrateLocked(f *File, m pidns.Mover, n int) error {
	pin, err := m.Pin(n)
	if err != nil {
		return errNoSuchTask
	}
	defer pin.Close()
	from, err := v.cgroupOfPin(pin)
	if err != nil {
		return err
	}
	if !f.opened.holds(from) || !f.opened.holds(f.cgroup) {
		return refuse(RuleOpenerNamespace, unix.ENOENT, "the task ("+from+") or "+f.vpath+" is outside the cgroup namespace the file was opened in")
	}
	common, err := v.stat(host.Join(commonAncestor(from, f.cgroup), "cgroup.procs"))
	if err != nil {
		return err
	}
	if err := v.policy.MayMigrate(f.opener, &common); err != nil {
		return err
	}
	if v.v1 {
		uid, suid, err := pin.UIDs()
		if err != nil || !pin.Alive() {
			return errNoSuchTask
		}
		if err := v.policy.MayMoveV1Task(f.opener, uid, suid); err != nil {
			return err
		}
	}
	err = m.Write(v.root, f.vpath, n)
	if errors.Is(err, unix.EBUSY) && f.name == "cgroup.procs" && !v.v1 {
		// The cgroup enables domain controllers for its children (no
		// internal processes): the process goes into its hidden leaf.
		if lerr := v.ensureLeafLocked(f.cgroup); lerr != nil {
			return lerr
		}
		err = m.Write(v.root, host.Join(host.Join(f.cgroup, LeafName), f.name), n)
	}
	if err != nil {
		return err
	}
	if pin.Alive() {
		// Ids are not reused while a task lives: the kernel moved ours.
		return nil
	}
	return v.undoStrangerLocked(m, n, f.cgroup)
}

// undoStrangerLocked looks, after a move whose pinned task died, for a
// task that took its id n meanwhile and was moved into the cgroup dest
// instead; it is put back in its parent's cgroup, where it was born.
func (v *View) undoStrangerLocked(m pidns.Mover, n int, dest string) error {
	pin, err := m.Pin(n)
	if err != nil {
		return errNoSuchTask // nobody took the id: the task died, nothing moved
	}
	defer pin.Close()
	at, err := v.cgroupOfPin(pin)
	if err != nil || at != dest {
		return errNoSuchTask
	}
	ppid, err := pin.Parent()
	if err != nil {
		return errNoSuchTask
	}
	parent, err := m.Pin(ppid)
	if err != nil {
		return errNoSuchTask
	}
	defer parent.Close()
	home, err := v.hostCgroupOfPin(parent)
	if err != nil || !pin.Alive() {
		return errNoSuchTask
	}
	back := fmt.Sprintf("task %d exited during its move and task %d took its id; moved back to %s", n, n, home)
	if err := v.moveBackLocked(m, n, home); err != nil {
		back = fmt.Sprintf("task %d exited during its move and task %d took its id; moving it back to %s failed: %v", n, n, home, err)
	}
	return refuse(RuleTaskReused, unix.ESRCH, back)
}

// moveBackLocked writes id n (in m's namespace) into the host cgroup at
// path home of the hierarchy (inside the view or not).
func (v *View) moveBackLocked(m pidns.Mover, n int, home string) error {
	if rel, ok := v.virtualOf(home); ok {
		return m.Write(v.root, host.Join(rel, "cgroup.procs"), n)
	}
	if v.outer == nil {
		return errors.New("no access to the hierarchy outside the view")
	}
	f, err := v.outer.Open(host.Join(strings.TrimPrefix(home, "/"), "cgroup.procs"), unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	return m.WriteFile(f, n)
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

// hostCgroupOfPin is the pinned task's cgroup in the view's hierarchy,
// as the server's cgroup namespace shows it.
func (v *View) hostCgroupOfPin(pin *proc.Pin) (string, error) {
	lines, err := pin.Cgroups()
	if err != nil {
		return "", errNoSuchTask
	}
	p, ok := v.controllers.In(lines)
	if !ok || !pin.Alive() {
		return "", errNoSuchTask
	}
	return p, nil
}

// cgroupOfPin is the virtual path of the pinned task's cgroup (a task in
// a hidden leaf is, to the container, in the leaf's cgroup), or ENOENT
// if the task is outside the view.
func (v *View) cgroupOfPin(pin *proc.Pin) (string, error) {
	p, err := v.hostCgroupOfPin(pin)
	if err != nil {
		return "", err
	}
	rel, ok := v.virtualOf(p)
	if !ok {
		return "", errOutside
	}
	if rel == LeafName {
		return "", nil
	}
	return strings.TrimSuffix(rel, "/"+LeafName), nil
}

// virtualOf is the path below the view root of the host cgroup p, if it
// is inside the view: each step below the root a cgroup's name. The
// kernel shows a cgroup outside the reader's cgroup namespace as
// "/../x" (cgroup_namespaces(7)), which a view rooted at "/" must not
// take for its child "..".
func (v *View) virtualOf(p string) (string, bool) {
	if p == v.cgroupPath {
		return "", true
	}
	rel, ok := strings.CutPrefix(p, strings.TrimSuffix(v.cgroupPath, "/")+"/")
	if !ok {
		return "", false
	}
	for _, name := range strings.Split(rel, "/") {
		if ValidName(name) != nil {
			return "", false
		}
	}
	return rel, true
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
	sees := v.procs.Sees(th)
	for _, tid := range tids {
		if seen, gone := sees(tid); !seen && !gone {
			return tid, true, nil
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

// kstrtoint parses as the kernel's kstrtoint(strstrip(buf), 0, ...)
// (lib/kstrtox.c): one sign, then "0x" hex (when a hex digit follows),
// leading-0 octal or decimal digits, nothing after them; anything else
// is EINVAL, a number outside an int ERANGE. As _parse_integer reports
// an overflow of 64 bits before looking past the digits, a number that
// long is ERANGE whatever follows it. Go's strconv differs (it takes
// '_', 0b and 0o, and stops at the first overflowing digit), so the
// kernel's own steps are followed here.
func kstrtoint(data []byte) (int64, error) {
	s := strstrip(data)
	neg := len(s) > 0 && s[0] == '-'
	if neg || len(s) > 0 && s[0] == '+' {
		s = s[1:]
	}
	base := uint64(10)
	if len(s) > 0 && s[0] == '0' {
		base = 8
		if len(s) > 2 && s[1]|0x20 == 'x' && digitOf(s[2]) < 16 {
			base, s = 16, s[2:]
		}
	}
	var u uint64
	i, overflow := 0, false
	for ; i < len(s) && digitOf(s[i]) < base; i++ {
		d := digitOf(s[i])
		overflow = overflow || u > (math.MaxUint64-d)/base
		u = u*base + d
	}
	switch {
	case overflow:
		return 0, unix.ERANGE
	case i == 0 || i < len(s): // no digits, or something after them
		return 0, unix.EINVAL
	case neg && u > 1<<31, !neg && u > 1<<31-1:
		return 0, unix.ERANGE
	case neg:
		return -int64(u), nil
	}
	return int64(u), nil
}

// digitOf is the value of the digit c in bases up to 16, 16 if it is
// none.
func digitOf(c byte) uint64 {
	switch {
	case c >= '0' && c <= '9':
		return uint64(c - '0')
	case c|0x20 >= 'a' && c|0x20 <= 'f':
		return uint64(c|0x20-'a') + 10
	}
	return 16
}

// strstrip is what the kernel's strstrip leaves of a written buffer: up
// to its first NUL, without the white space (lib/ctype.c isspace) at
// either end.
func strstrip(data []byte) []byte {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	isSpace := func(c byte) bool { return c == ' ' || c >= '\t' && c <= '\r' || c == 0xa0 }
	for len(data) > 0 && isSpace(data[len(data)-1]) {
		data = data[:len(data)-1]
	}
	for len(data) > 0 && isSpace(data[0]) {
		data = data[1:]
	}
	return data
}

// ParseIDs parses one decimal id per line, as task files hold them. A
// run of digits too long for an id reads as one above every task id
// (never wrapped round into a real task's).
func ParseIDs(b []byte) []int {
	ids := make([]int, 0, len(b)/6)
	n, in := 0, false
	for _, c := range b {
		if c >= '0' && c <= '9' {
			if n <= math.MaxInt32 {
				n = n*10 + int(c-'0')
			}
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

// Enter moves host process pid (the server's own id for it) into the
// view root, or into its hidden leaf when the root enables domain
// controllers (never EBUSY): a process joining the container from the
// host's side, as cgfs exec does. Only the host's root asks.
func (v *View) Enter(pid int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	id := []byte(strconv.Itoa(pid))
	_, err := v.host.WriteFile("cgroup.procs", id)
	if errors.Is(err, unix.EBUSY) && !v.v1 {
		if err := v.ensureLeafLocked(""); err != nil {
			return err
		}
		_, err = v.host.WriteFile(host.Join(LeafName, "cgroup.procs"), id)
	}
	return err
}

// EnterOwn puts the task numbered n in the owner's pid namespace into
// the view root (its hidden leaf when the root enables domain
// controllers), written from inside that namespace: a reused id can
// name only another of the container's tasks.
func (v *View) EnterOwn(n int) error {
	m, err := v.movers.Owner()
	if err != nil {
		return err
	}
	defer m.Release()
	v.mu.Lock()
	defer v.mu.Unlock()
	err = m.Write(v.root, "cgroup.procs", n)
	if errors.Is(err, unix.EBUSY) && !v.v1 {
		if err := v.ensureLeafLocked(""); err != nil {
			return err
		}
		err = m.Write(v.root, host.Join(LeafName, "cgroup.procs"), n)
	}
	return err
}

// nsScope is a cgroup namespace's root as a view sees it.
type nsScope struct {
	// root is the view path of the namespace's root when it is below
	// the view root ("" when it is the view root or above it: the whole
	// view is inside).
	root string
	// outside: the root is neither (the namespace holds nothing of the
	// view).
	outside bool
}

// holds tells whether the view's cgroup vpath is inside the namespace.
func (s nsScope) holds(vpath string) bool {
	return !s.outside && (s.root == "" || vpath == s.root || strings.HasPrefix(vpath, s.root+"/"))
}

// nsRootsKept bounds the namespaces whose roots a view remembers.
const nsRootsKept = 8

// keptScope is a remembered namespace's scope, with a descriptor of the
// namespace itself: held, it cannot end, so its inode number cannot
// name another namespace while it is remembered.
type keptScope struct {
	scope nsScope
	fd    int
}

// serverCgroupNS is the server's own cgroup namespace, read once: a
// server never leaves it (a thread that enters another for a moment
// serves no request).
var serverCgroupNS = sync.OnceValue(func() unix.Stat_t {
	var st unix.Stat_t
	_ = unix.Stat("/proc/self/ns/cgroup", &st)
	return st
})

// openerNS is the cgroup namespace of r's caller as this view sees it,
// on cgroup v2 (cgroup_procs_write_permission checks the namespace the
// file was opened in).
// A namespace's root never changes, so it is remembered by the
// namespace's inode; the server's own (the host's, or the one it was
// started in) holds every view.
func (v *View) openerNS(r *access.Request) (nsScope, error) {
	if v.v1 {
		// cgroup v1 judges a migration by credentials alone
		// (__cgroup1_procs_write): no namespace is kept.
		return nsScope{}, nil
	}
	th, err := r.Thread()
	if err != nil {
		return nsScope{}, err
	}
	pin, err := v.procs.Pin(th.Tid)
	if err != nil {
		return nsScope{}, errNoSuchTask
	}
	defer pin.Close()
	fd, err := pin.Namespace("cgroup")
	if err != nil {
		// No cgroup namespace to keep (a kernel without them; the unit
		// tests' fake /proc): the view's own scope, as before.
		return nsScope{}, nil
	}
	keep := false
	defer func() {
		if !keep {
			unix.Close(fd)
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nsScope{}, err
	}
	if own := serverCgroupNS(); own.Ino == st.Ino && own.Dev == st.Dev {
		return nsScope{}, nil
	}
	v.nsMu.Lock()
	k, ok := v.nsScopes[st.Ino]
	v.nsMu.Unlock()
	if ok {
		return k.scope, nil
	}
	roots, err := v.procs.CgroupNSRoots(th.Tid)
	if err != nil || !pin.Alive() {
		return nsScope{}, errNoSuchTask
	}
	// A root that cannot be told (the opener is outside it: "/.." in
	// its own line) narrows nothing, as before.
	var s nsScope
	if p, ok := v.controllers.In(roots); ok {
		base := strings.TrimSuffix(v.cgroupPath, "/")
		switch {
		case p == "/" || p == v.cgroupPath || strings.HasPrefix(base+"/", strings.TrimSuffix(p, "/")+"/"):
			// at or above the view root: the whole view
		default:
			if rel, ok := v.virtualOf(p); ok {
				if rel == LeafName {
					rel = ""
				}
				s = nsScope{root: strings.TrimSuffix(rel, "/"+LeafName)}
			} else {
				s = nsScope{outside: true} // beside the view: none of it
			}
		}
	}
	v.nsMu.Lock()
	defer v.nsMu.Unlock()
	if _, ok := v.nsScopes[st.Ino]; ok {
		return s, nil
	}
	if v.nsScopes == nil || len(v.nsScopes) >= nsRootsKept {
		v.forgetScopesLocked()
		v.nsScopes = map[uint64]keptScope{}
	}
	v.nsScopes[st.Ino] = keptScope{scope: s, fd: fd}
	keep = true
	return s, nil
}

// Close lets go of what the view holds of its callers (the cgroup
// namespaces it remembers); its host directories are its server's.
func (v *View) Close() {
	v.nsMu.Lock()
	defer v.nsMu.Unlock()
	v.forgetScopesLocked()
}

// forgetScopesLocked lets the remembered namespaces go.
func (v *View) forgetScopesLocked() {
	for _, k := range v.nsScopes {
		unix.Close(k.fd)
	}
	v.nsScopes = nil
}
