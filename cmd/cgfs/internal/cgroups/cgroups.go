// Package cgroups makes a container's cgroups on the host: one of its own
// below a parent in every hierarchy the host mounts (never a hierarchy's
// root), its limits set where the container cannot change them (the view
// root's resource files are root-locked), processes put in them, and all
// of it removed again, what is left in them killed.
package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/mimic"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
	"github.com/cgfs/cgfs/translate/layout"
)

// Limits are what a container may use, set on its cgroups where it
// cannot change them (the view root's resource files are root-locked).
type Limits struct {
	Memory int64   // bytes; 0 for none
	Pids   int64   // tasks; 0 for none
	CPUs   float64 // CPUs of bandwidth; 0 for none
}

// The kernel's bounds on the limits cgfs sets.
const (
	// CPUPeriod is the bandwidth period cgfs sets, in microseconds (the
	// kernel's default, cpu.cfs_period_us and cpu.max alike).
	CPUPeriod = 100000
	// minQuota and maxQuota bound a quota in microseconds, as
	// tg_set_cfs_bandwidth (kernel/sched/core.c) does with EINVAL:
	// min_cfs_quota_period (1ms) and max_cfs_runtime (MAX_BW, 2^44-1
	// microseconds).
	minQuota = 1000
	maxQuota = 1<<44 - 1
	// MaxPids is the largest pids.max: pids_max_write
	// (kernel/cgroup/pids.c) answers EINVAL from PIDS_MAX, which is
	// PID_MAX_LIMIT+1 (4194304 tasks on 64-bit).
	MaxPids = 4 << 20
)

// CPUQuota is the quota, in microseconds of each CPUPeriod, that gives
// cpus CPUs of bandwidth, or why the kernel would refuse it.
func CPUQuota(cpus float64) (int64, error) {
	if math.IsNaN(cpus) || math.IsInf(cpus, 0) {
		return 0, errors.New("not a finite number of CPUs")
	}
	q := math.Round(cpus * CPUPeriod)
	switch {
	case q < minQuota:
		return 0, fmt.Errorf("less than the kernel's least, %g CPUs (a quota of %dus per %dus period)", float64(minQuota)/CPUPeriod, minQuota, CPUPeriod)
	case q > maxQuota:
		return 0, fmt.Errorf("more than the kernel's most, %d CPUs (a quota of 2^44-1us per %dus period)", maxQuota/CPUPeriod, CPUPeriod)
	}
	return int64(q), nil
}

// CheckPids says why the kernel would refuse a pids.max of n tasks.
func CheckPids(n int64) error {
	if n > MaxPids {
		return fmt.Errorf("more than the kernel's most, %d tasks (PID_MAX_LIMIT)", int64(MaxPids))
	}
	return nil
}

// Set is a container's cgroup in every hierarchy.
type Set struct {
	// Dirs are the container's cgroups, by their hierarchy's mount
	// point.
	Dirs    map[string]string
	parents []string // the parents (removed when no container is left in them)
	// V2 is the cgroup v2 one, "" if the host has none, and V2Mount its
	// hierarchy's mount point.
	V2, V2Mount string
	// top is where enabling a controller for the container starts: the
	// v2 hierarchy's root, or the delegated cgroup (MakeDelegated).
	top string
	// Mounts are the kernel's mounts of them, as the container's mount
	// table shows them.
	Mounts []mimic.Mount
}

// State is what a Set is made of, for the next server to take on.
type State struct {
	Dirs    map[string]string `json:"dirs"`
	Parents []string          `json:"parents"`
	V2      string            `json:"v2"`
	V2Mount string            `json:"v2_mount"`
}

// State is the set's State.
func (cg *Set) State() State {
	return State{Dirs: cg.Dirs, Parents: cg.parents, V2: cg.V2, V2Mount: cg.V2Mount}
}

// FromState is the Set of s (an earlier server's, made by Make).
func FromState(s State) *Set {
	return &Set{Dirs: s.Dirs, parents: s.Parents, V2: s.V2, V2Mount: s.V2Mount}
}

// Make makes, in every hierarchy the host mounts, the cgroup parent/name
// below the hierarchy's root (never the root itself), and sets lim on
// the hierarchies that have the controllers.
func Make(procs *proc.Procs, parent, name string, lim Limits) (*Set, error) {
	l, err := layout.Discover(procs)
	if err != nil {
		return nil, err
	}
	cg := &Set{Dirs: map[string]string{}}
	for _, h := range l.Hierarchies {
		if h.Root != "/" {
			return nil, fmt.Errorf("the server sees %s from %s, not its root: run it in the host's cgroup namespace", h.MountPoint, h.Root)
		}
		p := filepath.Join(h.MountPoint, parent)
		// Every level of the parent, deepest first, is removed when no
		// container is left in it.
		for q := p; q != h.MountPoint; q = filepath.Dir(q) {
			cg.parents = append(cg.parents, q)
		}
		dir := filepath.Join(p, name)
		if err := mkdirIn(p, dir); err != nil {
			cg.Remove()
			if errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("a container named %s runs already (%s exists)", name, dir)
			}
			return nil, err
		}
		cg.Dirs[h.MountPoint] = dir
		cg.Mounts = append(cg.Mounts, mimic.MountOf(h))
		if !h.V1 {
			cg.V2, cg.V2Mount = dir, h.MountPoint
		}
		if _, err := os.Stat(filepath.Join(dir, "cpuset.cpus")); err == nil && h.V1 {
			// A v1 cpuset takes no task until it has cpus and mems.
			// Every level from the hierarchy's root down gets its parent's.
			var levels []string
			for q := dir; q != h.MountPoint; q = filepath.Dir(q) {
				levels = append([]string{q}, levels...)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				for _, d := range levels {
					if err := copyFile(filepath.Join(filepath.Dir(d), f), filepath.Join(d, f)); err != nil {
						cg.Remove()
						return nil, err
					}
				}
			}
		}
	}
	if err := cg.handOn(lim); err != nil {
		return nil, err
	}
	return cg, nil
}

// handOn enables every controller the set's top offers from there down
// to its v2 cgroup's parent (the container may hand them all on), and
// sets lim; on failure the set is removed.
func (cg *Set) handOn(lim Limits) error {
	if cg.V2 != "" {
		top := cg.enableTop()
		b, _ := os.ReadFile(filepath.Join(top, "cgroup.controllers"))
		for _, c := range strings.Fields(string(b)) {
			if err := enableDown(top, cg.V2, c); err != nil {
				cg.Remove()
				return err
			}
		}
	}
	if err := cg.Limit(lim); err != nil {
		cg.Remove()
		return err
	}
	return nil
}

// MakeParent makes the cgroup parent below every hierarchy's root (each
// level made marked, as Make's) and sets lim on it, and on cgroup v2 at
// most descendants cgroups below it (0: no bound). Its containers are
// made below it with Make.
func MakeParent(procs *proc.Procs, parent string, lim Limits, descendants int) error {
	l, err := layout.Discover(procs)
	if err != nil {
		return err
	}
	cg := &Set{Dirs: map[string]string{}}
	for _, h := range l.Hierarchies {
		if h.Root != "/" {
			return fmt.Errorf("the server sees %s from %s, not its root: run it in the host's cgroup namespace", h.MountPoint, h.Root)
		}
		dir := filepath.Join(h.MountPoint, parent)
		if err := mkdirMarked(dir); err != nil {
			return err
		}
		cg.Dirs[h.MountPoint] = dir
		if !h.V1 {
			cg.V2, cg.V2Mount = dir, h.MountPoint
		}
		if _, err := os.Stat(filepath.Join(dir, "cpuset.cpus")); err == nil && h.V1 {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				var levels []string
				for q := dir; q != h.MountPoint; q = filepath.Dir(q) {
					levels = append([]string{q}, levels...)
				}
				for _, d := range levels {
					if err := copyFile(filepath.Join(filepath.Dir(d), f), filepath.Join(d, f)); err != nil {
						return err
					}
				}
			}
		}
	}
	if cg.V2 != "" && descendants > 0 {
		if err := os.WriteFile(filepath.Join(cg.V2, "cgroup.max.descendants"), []byte(strconv.Itoa(descendants)), 0); err != nil {
			return err
		}
	}
	return cg.Limit(lim)
}

// Kill kills every process in the container's cgroups (cgroup v2's
// cgroup.kill; where a v1 hierarchy holds one the v2 tree does not, by
// pidfd, each checked to be in the cgroup after it was opened, so that a
// reused pid is never signalled).
func (cg *Set) Kill() error {
	if cg.V2 != "" {
		if err := os.WriteFile(filepath.Join(cg.V2, "cgroup.kill"), []byte("1"), 0); err != nil {
			return err
		}
	}
	for _, d := range cg.Dirs {
		if d == cg.V2 {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 0 {
				continue
			}
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				continue
			}
			if inCgroup(pid, d) {
				_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
			}
			unix.Close(fd)
		}
	}
	return nil
}

// inCgroup reports whether host process pid is in the v1 cgroup dir (or
// below it), as its /proc/PID/cgroup says.
func inCgroup(pid int, dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		if f == strconv.Itoa(pid) {
			return true
		}
	}
	return false
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	return os.WriteFile(to, b, 0)
}

// Limit sets the limits on the hierarchy that has each controller: a v1
// hierarchy of its own, else cgroup v2 (enabling the controller from
// the root down).
func (cg *Set) Limit(lim Limits) error {
	type limit struct {
		ctrl       string
		v1, v2     map[string]string
		configured bool
	}
	var todo []limit
	if lim.Memory > 0 {
		n := strconv.FormatInt(lim.Memory, 10)
		todo = append(todo, limit{"memory", map[string]string{"memory.limit_in_bytes": n}, map[string]string{"memory.max": n}, true})
	}
	if lim.Pids > 0 {
		if err := CheckPids(lim.Pids); err != nil {
			return fmt.Errorf("%d tasks: %w", lim.Pids, err)
		}
		n := strconv.FormatInt(lim.Pids, 10)
		todo = append(todo, limit{"pids", map[string]string{"pids.max": n}, map[string]string{"pids.max": n}, true})
	}
	if lim.CPUs > 0 {
		q, err := CPUQuota(lim.CPUs)
		if err != nil {
			return fmt.Errorf("%g CPUs: %w", lim.CPUs, err)
		}
		quota, period := strconv.FormatInt(q, 10), strconv.Itoa(CPUPeriod)
		todo = append(todo, limit{"cpu", map[string]string{"cpu.cfs_period_us": period, "cpu.cfs_quota_us": quota},
			map[string]string{"cpu.max": quota + " " + period}, true})
	}
	for _, t := range todo {
		dir, v1 := cg.withController(t.ctrl)
		if dir == "" {
			return fmt.Errorf("the host has no %s controller to limit the container with", t.ctrl)
		}
		files := t.v2
		if v1 {
			files = t.v1
		} else if err := enableDown(cg.enableTop(), dir, t.ctrl); err != nil {
			return err
		}
		for f, val := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(val), 0); err != nil {
				return fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
			}
		}
	}
	return nil
}

// V1ByController is the set's v1 cgroups by the controllers whose use
// cgfs reads (memory, pids, cpuacct, freezer), each found by a file of
// its own.
func (cg *Set) V1ByController() map[string]string {
	files := map[string]string{"memory": "memory.usage_in_bytes", "pids": "pids.current",
		"cpuacct": "cpuacct.usage", "freezer": "freezer.state"}
	out := map[string]string{}
	for _, d := range cg.Dirs {
		if d == cg.V2 {
			continue
		}
		for ctrl, f := range files {
			if _, err := os.Stat(filepath.Join(d, f)); err == nil {
				out[ctrl] = d
			}
		}
	}
	return out
}

// A Hit is a limit the kernel counted as hit in a set's cgroups: the
// event file and key it counts in, and how often.
type Hit struct {
	File, Key string
	N         int64
	What      string // what it means, as a person says it
}

func (h Hit) String() string { return fmt.Sprintf("%s (%s %s %d)", h.What, h.File, h.Key, h.N) }

// Memory reports whether h is a memory limit's.
func (h Hit) Memory() bool { return strings.HasPrefix(h.File, "memory.") }

// hitFiles are the event counters of a set's limits: OOM kills on
// cgroup v2 (memory.events, counted over the subtree) and v1
// (memory.oom_control, each cgroup its own), forks refused at pids.max
// (pids.events, v1 and v2).
var hitFiles = []struct {
	file, key, what string
	subtree         bool // summed over the cgroups below too
}{
	{"memory.events", "oom_kill", "out of memory", false},
	{"memory.oom_control", "oom_kill", "out of memory", true},
	{"pids.events", "max", "a fork refused at the task limit", false},
}

// Hits are the limits the kernel counted as hit in the set's cgroups
// (none where it counted nothing), memory first.
func (cg *Set) Hits() []Hit {
	var out []Hit
	for _, hf := range hitFiles {
		var n int64
		for _, d := range cg.Dirs {
			n += countIn(d, hf.file, hf.key, hf.subtree)
		}
		if n > 0 {
			out = append(out, Hit{File: hf.file, Key: hf.key, N: n, What: hf.what})
		}
	}
	return out
}

// countIn is key's count in the flat keyed file of cgroup dir (and, with
// subtree, of every cgroup below it); 0 where there is none.
func countIn(dir, file, key string, subtree bool) int64 {
	read := func(d string) int64 {
		b, err := os.ReadFile(filepath.Join(d, file))
		if err != nil {
			return 0
		}
		return host.Keyed(b)[key]
	}
	if !subtree {
		return read(dir)
	}
	var n int64
	_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			n += read(p)
		}
		return nil
	})
	return n
}

// withController is the container's cgroup in the hierarchy that has
// controller ctrl: a v1 hierarchy of its own, or cgroup v2 if its root
// offers it.
func (cg *Set) withController(ctrl string) (dir string, v1 bool) {
	for mnt, d := range cg.Dirs {
		if d == cg.V2 {
			continue
		}
		var st unix.Statfs_t
		if unix.Statfs(mnt, &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC {
			if _, err := os.Stat(filepath.Join(d, ctrl+".stat")); err == nil {
				return d, true
			}
			if _, err := os.Stat(filepath.Join(d, ctrl+".max")); err == nil {
				return d, true
			}
			if _, err := os.Stat(filepath.Join(d, ctrl+".limit_in_bytes")); err == nil {
				return d, true
			}
			if _, err := os.Stat(filepath.Join(d, ctrl+".shares")); err == nil {
				return d, true
			}
		}
	}
	if cg.V2 != "" {
		b, _ := os.ReadFile(filepath.Join(cg.V2Mount, "cgroup.controllers"))
		for _, c := range strings.Fields(string(b)) {
			if c == ctrl {
				return cg.V2, false
			}
		}
	}
	return "", false
}

// enableTop is where enableDown starts for the set.
func (cg *Set) enableTop() string {
	if cg.top != "" {
		return cg.top
	}
	return cg.V2Mount
}

// MakeDelegated makes the cgroup parent/name on cgroup v2 (mounted at
// mount), where parent is a cgroup delegated to the caller (an ordinary
// user, who owns its cgroup.procs and cgroup.subtree_control): the
// controllers parent offers are enabled in it (never above), and lim
// set. Nothing but the container's cgroup is made, nor removed after.
func MakeDelegated(mount, parent, name string, lim Limits) (*Set, error) {
	dir := filepath.Join(parent, name)
	if err := unix.Mkdir(dir, 0o755); err != nil {
		if err == unix.EEXIST {
			return nil, fmt.Errorf("a container named %s runs already (%s exists)", name, dir)
		}
		return nil, &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	cg := &Set{Dirs: map[string]string{mount: dir}, V2: dir, V2Mount: mount, top: parent,
		Mounts: []mimic.Mount{{FSType: "cgroup2"}}}
	if err := cg.handOn(lim); err != nil {
		return nil, err
	}
	return cg, nil
}

// enableDown enables controller ctrl in cgroup.subtree_control from the
// hierarchy root down to dir's parent, where it is not enabled yet.
func enableDown(root, dir, ctrl string) error {
	rel, err := filepath.Rel(root, filepath.Dir(dir))
	if err != nil {
		return err
	}
	at := root
	parts := []string{""}
	if rel != "." {
		parts = append(parts, strings.Split(rel, "/")...)
	}
	for _, part := range parts {
		at = filepath.Join(at, part)
		b, err := os.ReadFile(filepath.Join(at, "cgroup.subtree_control"))
		if err == nil && slices.Contains(strings.Fields(string(b)), ctrl) {
			continue
		}
		if err := os.WriteFile(filepath.Join(at, "cgroup.subtree_control"), []byte("+"+ctrl), 0); err != nil {
			return fmt.Errorf("enabling %s in %s: %w", ctrl, at, err)
		}
	}
	return nil
}

// JoinV1 moves host process pid into the container's v1 cgroups (cgroup
// v2 placed it at clone time).
func (cg *Set) JoinV1(pid int) error {
	for _, d := range cg.Dirs {
		if d == cg.V2 {
			continue
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
	}
	return nil
}

// Remove kills what is left in the container's cgroups and removes them,
// deepest first, hidden leaves and all.
func (cg *Set) Remove() error {
	var errs []error
	for _, d := range cg.Dirs {
		if err := RemoveTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range cg.parents {
		// Only what a cgfs run made, unless another container is in it
		// now: a parent the host had already is the host's.
		if _, err := unix.Getxattr(p, madeXattr, nil); err == nil {
			_ = unix.Rmdir(p)
		}
	}
	return errors.Join(errs...)
}

// madeXattr marks a parent cgroup that a cgfs run made (trusted.*
// xattrs are kept by cgroupfs, v1 and v2, and only host root sets them).
const madeXattr = "trusted.cgfs.made"

// mkdirIn makes parent (every missing level, each marked as made by
// cgfs) and dir in it. Another container's cgfs run removes the parent
// when it leaves it empty, which may happen between the two: then the
// parent is made again.
func mkdirIn(parent, dir string) error {
	for try := 0; ; try++ {
		if err := mkdirMarked(parent); err != nil {
			return err
		}
		err := os.Mkdir(dir, 0o755)
		if !errors.Is(err, os.ErrNotExist) || try == 10 {
			return err
		}
	}
}

// mkdirMarked makes dir and the levels above it that are missing, and
// marks the ones it made with madeXattr.
func mkdirMarked(dir string) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	if err := mkdirMarked(filepath.Dir(dir)); err != nil {
		return err
	}
	err := unix.Mkdir(dir, 0o755)
	if err == unix.EEXIST {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	if err := unix.Setxattr(dir, madeXattr, []byte("1"), 0); err != nil {
		_ = unix.Rmdir(dir)
		return &os.PathError{Op: "marking", Path: dir, Err: err}
	}
	return nil
}

// RemoveTree empties and removes the cgroup dir and everything below it,
// killing what is left inside (within 10 s).
func RemoveTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := RemoveTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			return fmt.Errorf("removing %s: %w", dir, err)
		}
		killAll(dir)
		time.Sleep(10 * time.Millisecond)
	}
}

// killAll kills every process left in the cgroup dir.
func killAll(dir string) {
	if os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) == nil {
		return
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}
