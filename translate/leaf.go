package translate

import (
	"errors"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
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

// errReservedName refuses LeafName to the container.
var errReservedName = &Error{Op: "mkdir", Path: LeafName, Data: "reserved for hidden leaves", Err: unix.EINVAL}

// migrations serialises, per view, everything that moves processes or
// makes and removes leaves: writes to cgroup.procs and
// cgroup.subtree_control, rmdir, reconciling. One lock for the whole
// view, not one per cgroup: a fold moves the processes it listed in a
// leaf, and a writer under another cgroup's lock could have moved one
// of them away in between (the fold would drag it back). The kernel
// serialises migrations under cgroup_mutex anyway.
type migrations struct{ mu sync.Mutex }

func (m *migrations) lock() func() {
	m.mu.Lock()
	return m.mu.Unlock
}

// hostTasks reads the ids in a host cgroup file (cgroup.procs or
// cgroup.threads) of host directory dir.
func (v *View) hostTasks(dir, file string) ([]int, error) {
	b, err := v.host.ReadFile(Join(dir, file))
	if err != nil {
		return nil, err
	}
	return parseIDs(b), nil
}

// hasLeaf reports whether host directory dir has a hidden leaf.
func (v *View) hasLeaf(dir string) bool {
	st, err := v.host.Stat(Join(dir, LeafName))
	return err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// writeHostPid writes one id into a host control file.
func (v *View) writeHostPid(path string, id int) error {
	_, err := v.writeHost(path, []byte(strconv.Itoa(id)))
	return err
}

// moveAll moves every process of host cgroup from into host cgroup to.
// Processes that exit meanwhile are skipped.
func (v *View) moveAll(from, to string) error {
	pids, err := v.hostTasks(from, "cgroup.procs")
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := v.writeHostPid(Join(to, "cgroup.procs"), pid); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	return nil
}

// intoLeaf moves the processes of host cgroup dir into its leaf, making
// the leaf if needed.
func (v *View) intoLeaf(dir string) error {
	if err := v.ensureLeaf(dir); err != nil {
		return err
	}
	return v.moveAll(dir, Join(dir, LeafName))
}

// fold moves the leaf's processes back into host cgroup dir and removes
// the leaf, unless dir still enables domain controllers (the kernel
// answers EBUSY, and the leaf stays).
func (v *View) fold(dir string) error {
	if !v.hasLeaf(dir) {
		return nil
	}
	leaf := Join(dir, LeafName)
	if err := v.moveAll(leaf, dir); err != nil {
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
	return nil
}

// writeSubtreeControl carries a write to V's cgroup.subtree_control. If
// the kernel refuses it with EBUSY because H holds processes (the no
// internal process rule), the processes move into H's leaf and the write
// is tried again; after a write that leaves no domain controller
// enabled, the leaf is folded back.
func (v *View) writeSubtreeControl(vdir string, data []byte) (int, error) {
	defer v.migrations.lock()()
	dir := v.hostPath(vdir)
	path := Join(dir, "cgroup.subtree_control")
	n, err := v.writeHost(path, data)
	for try := 0; errors.Is(err, unix.EBUSY) && try < 3; try++ {
		pids, lerr := v.hostTasks(dir, "cgroup.procs")
		if lerr != nil || len(pids) == 0 || !strings.Contains(string(data), "+") {
			break // EBUSY for another reason: the kernel's answer stands
		}
		if lerr := v.intoLeaf(dir); lerr != nil {
			_ = v.fold(dir)
			return 0, lerr
		}
		n, err = v.writeHost(path, data)
	}
	if err != nil {
		_ = v.fold(dir)
		return 0, err
	}
	return n, v.fold(dir)
}

// writeHost writes data to a host control file in one write(2). O_TRUNC
// is what runtimes use; cgroupfs ignores it, a plain file (a fake
// hierarchy) needs it.
func (v *View) writeHost(path string, data []byte) (int, error) {
	f, err := v.host.Open(path, unix.O_WRONLY|unix.O_TRUNC)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.Write(data)
	if err != nil {
		return 0, &Error{Op: "write", Path: path, Data: shortData(data), Err: err}
	}
	return n, nil
}

func shortData(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// Reconcile folds back every leaf of the view that is no longer needed,
// as after a server restart that interrupted a leaf operation. Leaves
// whose cgroup still enables domain controllers stay.
func (v *View) Reconcile() error {
	if v.v1 {
		return nil // no leaves on v1: no internal-process rule there
	}
	defer v.migrations.lock()()
	return v.walk("", func(vdir string) error {
		return v.fold(v.hostPath(vdir))
	})
}

// walk calls f for every virtual cgroup from vdir down.
func (v *View) walk(vdir string, f func(string) error) error {
	if err := f(vdir); err != nil {
		return err
	}
	entries, err := v.List(vdir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := v.walk(Join(vdir, e.Name), f); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
	}
	return nil
}

// countLeaves counts hidden leaves in host cgroup dir and below.
func (v *View) countLeaves(dir string) int {
	entries, err := v.host.Names(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if e.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		if e.Name == LeafName {
			n++
			continue
		}
		n += v.countLeaves(Join(dir, e.Name))
	}
	return n
}
