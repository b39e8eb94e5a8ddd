package translate

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate/host"
	"github.com/cgfs/cgfs/translate/pidns"
)

// LeafName is the reserved name of hidden leaf cgroups. A virtual cgroup
// V whose host cgroup H must hold processes while it enables domain
// controllers for its children (which cgroup v2 forbids below the real
// root) keeps those processes in H/LeafName. The view never lists it,
// never finds it, and refuses to create it (EINVAL).
//
// Everything about leaves is derived from the host tree, so a restarted
// server sees the same view: a leaf exists only while H needs one, and
// Reconcile folds back any leaf that is no longer needed.
const LeafName = ".cgfs-leaf"

// cgroup.subtree_control is delegated at the root; a write that the
// no-internal-process rule refuses moves the cgroup's processes into its
// hidden leaf and is tried again.
func init() {
	register("cgroup.subtree_control", &controlFile{write: writeSubtreeControl, delegated: true})
}

// leafIndex is which virtual cgroups have a hidden leaf. Only cgfs makes
// and removes leaves, so the index is kept as it does, after one walk
// when the view is made: no read ever walks the tree to find them.
type leafIndex struct {
	mu sync.Mutex // a leaf in the lock order
	m  map[string]bool
	// made and folded count the leaves this view created and removed.
	made, folded atomic.Uint64
}

func (x *leafIndex) set(dir string, has bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if has {
		x.m[dir] = true
	} else {
		delete(x.m, dir)
	}
}

func (x *leafIndex) has(dir string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.m[dir]
}

// under counts the leaves of vdir and of the cgroups below it.
func (x *leafIndex) under(vdir string) int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	var n int64
	for dir := range x.m {
		if vdir == "" || dir == vdir || strings.HasPrefix(dir, vdir+"/") {
			n++
		}
	}
	return n
}

// IndexLeaves reads afresh which cgroups have hidden leaves: for a
// server taking over from another, which made and folded leaves until
// it drained.
func (v *View) IndexLeaves() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.indexLeavesLocked()
}

// indexLeavesLocked walks the view once to find the leaves it has. v.mu
// is held (or v is not yet shared).
func (v *View) indexLeavesLocked() error {
	v.leaves.m = map[string]bool{}
	if v.v1 {
		return nil // no leaves on v1: no internal-process rule there
	}
	return v.walk("", func(dir string, leaf bool) error {
		if leaf {
			v.leaves.set(dir, true)
		}
		return nil
	})
}

// LeafDirs are the cgroups of the view that have a hidden leaf, as its
// index holds them (virtual paths; "" is the root), sorted.
func (v *View) LeafDirs() []string {
	v.leaves.mu.Lock()
	defer v.leaves.mu.Unlock()
	dirs := make([]string, 0, len(v.leaves.m))
	for dir := range v.leaves.m {
		dirs = append(dirs, dir)
	}
	slices.Sort(dirs)
	return dirs
}

// SetLeafDirs takes the index of the server this one takes over from,
// which made and folded leaves until it drained (its LeafDirs), instead
// of walking the tree for them (IndexLeaves). A path that is no clean
// path inside the view is left out.
func (v *View) SetLeafDirs(dirs []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.leaves.mu.Lock()
	defer v.leaves.mu.Unlock()
	v.leaves.m = map[string]bool{}
	if v.v1 {
		return
	}
	for _, dir := range dirs {
		if dir == "" || (filepath.IsLocal(dir) && filepath.Clean(dir) == dir) {
			v.leaves.m[dir] = true
		}
	}
}

// hasLeaf reports whether the virtual cgroup dir has a hidden leaf.
func (v *View) hasLeaf(dir string) bool { return v.leaves.has(dir) }

// hostTasks reads the ids in a host task file of host directory dir.
func (v *View) hostTasks(dir, file string) ([]int, error) {
	b, err := v.host.ReadFile(host.Join(dir, file))
	if err != nil {
		return nil, err
	}
	return ParseIDs(b), nil
}

// moveAllLocked moves every process of cgroup from into cgroup to, from
// inside the owner's pid namespace (so a listed id reused meanwhile can
// only name one of the container's own tasks). Processes that exit
// meanwhile are skipped.
func (v *View) moveAllLocked(from, to string) error {
	m, err := v.movers.Owner()
	if errors.Is(err, pidns.ErrTooManyHelpers) || errors.Is(err, pidns.ErrTooManyStarts) {
		return refuse(RulePidNamespaces, unix.EAGAIN, "no helper in the owner's pid namespace: "+err.Error())
	}
	if err != nil {
		return err
	}
	defer m.Release()
	return m.MoveAll(v.root, from, to)
}

// ensureLeafLocked makes the hidden leaf of cgroup dir if it has none.
func (v *View) ensureLeafLocked(dir string) error {
	if err := v.host.Mkdir(dir, LeafName, 0o755); err == nil {
		v.leaves.made.Add(1)
	} else if !errors.Is(err, unix.EEXIST) {
		return err
	}
	v.leaves.set(dir, true)
	return nil
}

// foldLocked moves the leaf's processes back into cgroup dir and removes
// the leaf, unless dir still enables controllers: domain ones (the
// kernel would answer EBUSY) or threaded ones (the kernel would make dir
// a threaded domain, its children invalid).
func (v *View) foldLocked(dir string) error {
	if b, err := v.host.ReadFile(host.Join(dir, "cgroup.subtree_control")); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return nil // still needed
	}
	if !v.hasLeaf(dir) {
		return nil
	}
	leaf := host.Join(dir, LeafName)
	if err := v.moveAllLocked(leaf, dir); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil // still needed
		}
		return err
	}
	if err := v.host.Rmdir(dir, LeafName); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return nil // a process arrived meanwhile; keep it
		}
		return err
	}
	v.leaves.set(dir, false)
	v.leaves.folded.Add(1)
	return nil
}

// Leaves is how many hidden leaves the view has, and how many it made
// and folded since it was made.
func (v *View) Leaves() (now int, made, folded uint64) {
	v.leaves.mu.Lock()
	now = len(v.leaves.m)
	v.leaves.mu.Unlock()
	return now, v.leaves.made.Load(), v.leaves.folded.Load()
}

// Hierarchy says whether the view is of a cgroup v1 hierarchy and, if
// so, its controllers as /proc/PID/cgroup names them.
func (v *View) Hierarchy() (v1 bool, controllers string) { return v.v1, string(v.controllers) }

// writeSubtreeControl carries a write to cgroup.subtree_control of f's
// cgroup H. A domain cgroup H that holds processes cannot enable domain
// controllers (the no internal process rule: EBUSY), and enabling
// threaded ones (cpu, pids, ...) turns it into a threaded domain whose
// child cgroups are invalid (cgroup-v2.rst, "Threads"). Neither happens
// at a host's root, and neither happens here: before a write that
// enables a controller, H's processes move into H's leaf; after a write
// that leaves nothing enabled, the leaf is folded back. A cgroup that is
// no plain domain (threaded, or made a threaded domain by the container
// itself) is left to the kernel, and EBUSY for a race is retried the
// same way.
func writeSubtreeControl(f *File, _ *access.Request, data []byte) (int, error) {
	v, dir := f.v, f.cgroup
	v.mu.Lock()
	defer v.mu.Unlock()
	if strings.Contains(string(data), "+") && !v.hasLeaf(dir) {
		typ, terr := v.host.ReadFile(host.Join(dir, "cgroup.type"))
		pids, perr := v.hostTasks(dir, "cgroup.procs")
		if terr == nil && perr == nil && strings.TrimSpace(string(typ)) == "domain" && len(pids) > 0 {
			if err := v.ensureLeafLocked(dir); err != nil {
				return 0, err
			}
			if err := v.moveAllLocked(dir, host.Join(dir, LeafName)); err != nil {
				_ = v.foldLocked(dir)
				return 0, err
			}
		}
	}
	n, err := v.host.Write(f.host, f.vpath, data)
	for try := 0; errors.Is(err, unix.EBUSY) && try < 3; try++ {
		pids, lerr := v.hostTasks(dir, "cgroup.procs")
		if lerr != nil || len(pids) == 0 || !strings.Contains(string(data), "+") {
			break // EBUSY for another reason: the kernel's answer stands
		}
		if lerr := v.ensureLeafLocked(dir); lerr != nil {
			return 0, lerr
		}
		if lerr := v.moveAllLocked(dir, host.Join(dir, LeafName)); lerr != nil {
			_ = v.foldLocked(dir)
			return 0, lerr
		}
		n, err = v.host.Write(f.host, f.vpath, data)
	}
	if err != nil {
		_ = v.foldLocked(dir)
		return 0, err
	}
	return n, v.foldLocked(dir)
}

// Reconcile folds back every leaf of the view that is no longer needed,
// as after a server restart that interrupted a leaf operation. Leaves
// whose cgroup still enables domain controllers stay.
func (v *View) Reconcile() error {
	if v.v1 {
		return nil // no leaves on v1: no internal-process rule there
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.indexLeavesLocked(); err != nil {
		return err
	}
	v.leaves.mu.Lock()
	dirs := make([]string, 0, len(v.leaves.m))
	for dir := range v.leaves.m {
		dirs = append(dirs, dir)
	}
	v.leaves.mu.Unlock()
	for _, dir := range dirs {
		if err := v.foldLocked(dir); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			return err
		}
	}
	return nil
}

// walk visits the virtual cgroup vdir and every visible cgroup below it,
// each before its children, telling visit whether the cgroup has a
// hidden leaf. A cgroup below vdir removed meanwhile (gone, or dying:
// its files answer ENODEV) is skipped with what is below it. This is the
// only walk of a tree in cgfs, and no request of a container makes it:
// it runs when a view is made (the leaf index, Foreign) and, on v1, when
// a container reaches its descendant limit.
func (v *View) walk(vdir string, visit func(vdir string, leaf bool) error) error {
	entries, err := v.host.Names(vdir)
	if err != nil {
		return err
	}
	leaf := false
	var children []string
	for _, e := range entries {
		switch {
		case !e.IsDir():
		case e.Name == LeafName:
			leaf = true
		default:
			children = append(children, e.Name)
		}
	}
	if err := visit(vdir, leaf); err != nil {
		return err
	}
	for _, c := range children {
		err := v.walk(host.Join(vdir, c), visit)
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			return err
		}
	}
	return nil
}

// cgroup.type: a child made threaded may need its parent's processes
// back from the hidden leaf (see writeCgroupType).
func init() {
	register("cgroup.type", &controlFile{write: writeCgroupType})
}

// threadedControllers are the controllers a thread subtree may use (the
// kernel's cgrp_dfl_threaded_ss_mask), and what each of a child's files
// of them holds until someone writes it: a child's own settings would be
// lost when the controller is turned off in its parent for a moment.
var threadedControllers = map[string]map[string]string{
	"cpu": {
		"cpu.weight": "100", "cpu.max": "max 100000", "cpu.max.burst": "0",
		"cpu.idle": "0", "cpu.uclamp.min": "0.00", "cpu.uclamp.max": "max",
	},
	"cpuset":     {"cpuset.cpus": "", "cpuset.mems": "", "cpuset.cpus.partition": "member"},
	"perf_event": {},
	"pids":       {"pids.max": "max"},
}

// writeCgroupType carries a write to cgroup.type of f's cgroup. Making a
// cgroup threaded needs its parent P to be able to be a thread root: no
// populated domain child and no domain controller enabled. A P that
// enabled controllers while it held processes keeps those processes in
// its hidden leaf, a populated domain child, so the kernel answers
// EOPNOTSUPP where, at a real root (which is exempt), the write would
// succeed. When P enables only threaded controllers, the leaf is not
// needed for them (threaded controllers take internal processes), so
// the processes come back into P and the write is tried again; P is
// then a thread root, as a kernel cgroup with processes and threaded
// controllers is. With a domain controller enabled in P (memory, io)
// the kernel's answer stands: no cgroup below the root can be a thread
// root and enable one, and cgfs does not move the threaded subtree
// elsewhere to pretend it could (see the README's "Hidden leaves").
func writeCgroupType(f *File, _ *access.Request, data []byte) (int, error) {
	v := f.v
	v.mu.Lock()
	defer v.mu.Unlock()
	n, err := v.host.Write(f.host, f.vpath, data)
	if !errors.Is(err, unix.EOPNOTSUPP) || strings.TrimSpace(string(data)) != "threaded" || f.cgroup == "" || v.v1 {
		return n, err
	}
	parent, _ := split(f.cgroup)
	if !v.hasLeaf(parent) {
		return n, err
	}
	if ok, ferr := v.leafToThreadRootLocked(parent); ferr != nil || !ok {
		return n, err // the kernel's first answer stands
	}
	return v.host.Write(f.host, f.vpath, data)
}

// leafToThreadRootLocked folds the hidden leaf of cgroup dir back while
// dir keeps its controllers, when they are all threaded and no child has
// changed a setting of theirs: it turns them off in dir for a moment
// (the kernel refuses internal processes only while some controller is
// on), moves the leaf's processes back, removes the leaf and turns them
// on again. It reports whether dir has no leaf now; on a failure
// midway, dir is put back as it was.
func (v *View) leafToThreadRootLocked(dir string) (bool, error) {
	sc := host.Join(dir, "cgroup.subtree_control")
	b, err := v.host.ReadFile(sc)
	if err != nil {
		return false, err
	}
	enabled := strings.Fields(string(b))
	for _, c := range enabled {
		if _, ok := threadedControllers[c]; !ok {
			return false, nil
		}
	}
	if ok, err := v.childrenAtDefaultsLocked(dir, enabled); err != nil || !ok {
		return false, err
	}
	toggle := func(sign string) error {
		if len(enabled) == 0 {
			return nil
		}
		_, err := v.host.WriteFile(sc, []byte(sign+strings.Join(enabled, " "+sign)))
		return err
	}
	if err := toggle("-"); err != nil {
		return false, nil // a child enables one itself (EBUSY): leave it be
	}
	if err := v.foldLocked(dir); err != nil || v.hasLeaf(dir) {
		// Some processes may have come back already: all of them go
		// into the leaf again before the controllers come back on, or
		// the kernel would refuse them (EBUSY) and leave them off.
		err = errors.Join(err, v.ensureLeafLocked(dir))
		err = errors.Join(err, v.moveAllLocked(dir, host.Join(dir, LeafName)), toggle("+"))
		return false, err
	}
	if err := toggle("+"); err != nil {
		// Put the processes back into a leaf, then the controllers.
		err = errors.Join(err, v.ensureLeafLocked(dir))
		err = errors.Join(err, v.moveAllLocked(dir, host.Join(dir, LeafName)), toggle("+"))
		return false, err
	}
	return true, nil
}

// childrenAtDefaultsLocked reports whether no visible child of cgroup
// dir has changed a file of the controllers named from what it holds
// when made (threadedControllers).
func (v *View) childrenAtDefaultsLocked(dir string, controllers []string) (bool, error) {
	entries, err := v.host.Names(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if !e.IsDir() || e.Name == LeafName {
			continue
		}
		child := host.Join(dir, e.Name)
		for _, c := range controllers {
			for file, def := range threadedControllers[c] {
				got, err := v.host.ReadFile(host.Join(child, file))
				if errors.Is(err, unix.ENOENT) {
					continue // not in this kernel
				}
				if err != nil || strings.TrimSpace(string(got)) != def {
					return false, err
				}
			}
		}
	}
	return true, nil
}
