// Package layout discovers how the host mounts its cgroup hierarchies
// (cgroup v2 only, v1 or hybrid, from the server's mount table) and where
// a process sits in each of them.
package layout

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/prometheus/procfs"

	"github.com/cgfs/cgfs/proc"
)

// Hierarchy is one cgroup hierarchy the host has mounted.
type Hierarchy struct {
	// Name is its directory in the layout ("memory", "cpu,cpuacct",
	// "systemd", "unified"); "" when it is the whole layout (a cgroup v2
	// only host).
	Name       string
	MountPoint string
	// Root is the mount's root within the hierarchy ("/" normally).
	Root string
	V1   bool
	// Controllers is how /proc/PID/cgroup lines name the hierarchy.
	Controllers proc.Controllers
}

// Layout is how the host lays out its cgroup hierarchies.
type Layout struct {
	Dir         string // where they are mounted, /sys/fs/cgroup
	Hierarchies []Hierarchy
	// Symlinks are links in Dir between hierarchy names (cpu ->
	// cpu,cpuacct).
	Symlinks map[string]string
}

// Discover reads the server's mount table and its own cgroups, from the
// proc filesystem procs reads (/proc/PID/mountinfo and cgroup, PID the
// server's): every cgroup mount whose hierarchy the server is in.
func Discover(procs *proc.Procs) (Layout, error) {
	pfs, err := procfs.NewFS(procs.Root())
	if err != nil {
		return Layout{}, err
	}
	mounts, err := pfs.GetProcMounts(os.Getpid())
	if err != nil {
		return Layout{}, err
	}
	own, err := procs.SelfCgroups()
	if err != nil {
		return Layout{}, err
	}
	var l Layout
	seen := map[string]bool{}
	for _, line := range own {
		for _, m := range mounts {
			if seen[m.MountPoint] || !mountIs(m, line) {
				continue
			}
			seen[m.MountPoint] = true
			l.Hierarchies = append(l.Hierarchies, Hierarchy{
				Name:        filepath.Base(m.MountPoint),
				MountPoint:  m.MountPoint,
				Root:        m.Root,
				V1:          m.FSType == "cgroup",
				Controllers: proc.Controllers(strings.Join(line.Controllers, ",")),
			})
			break
		}
	}
	if len(l.Hierarchies) == 0 {
		return l, fmt.Errorf("no cgroup hierarchy is mounted")
	}
	if len(l.Hierarchies) == 1 && !l.Hierarchies[0].V1 {
		l.Dir = l.Hierarchies[0].MountPoint
		l.Hierarchies[0].Name = ""
		return l, nil
	}
	l.Dir = filepath.Dir(l.Hierarchies[0].MountPoint)
	slices.SortFunc(l.Hierarchies, func(a, b Hierarchy) int { return strings.Compare(a.Name, b.Name) })
	l.Symlinks = map[string]string{}
	entries, _ := os.ReadDir(l.Dir)
	for _, e := range entries {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		target, err := os.Readlink(filepath.Join(l.Dir, e.Name()))
		if err != nil {
			continue
		}
		for _, h := range l.Hierarchies {
			if target == h.Name {
				l.Symlinks[e.Name()] = target
			}
		}
	}
	return l, nil
}

// mountIs reports whether mount m holds the hierarchy of a
// /proc/self/cgroup line.
func mountIs(m *procfs.MountInfo, line procfs.Cgroup) bool {
	if len(line.Controllers) == 0 {
		return line.HierarchyID == 0 && m.FSType == "cgroup2"
	}
	if m.FSType != "cgroup" {
		return false
	}
	for _, c := range line.Controllers {
		if name, ok := strings.CutPrefix(c, "name="); ok {
			if m.SuperOptions["name"] != name {
				return false
			}
		} else if _, ok := m.SuperOptions[c]; !ok {
			return false
		}
	}
	return true
}

// DirOf returns the host directory of process pid's cgroup in h, and
// that cgroup's path in the hierarchy.
func (h Hierarchy) DirOf(procs *proc.Procs, pid int) (dir, cgroupPath string, err error) {
	cgroupPath, err = procs.CgroupIn(pid, h.Controllers)
	if err != nil {
		return "", "", fmt.Errorf("process %d is in no cgroup of hierarchy %q: %w", pid, h.Controllers, err)
	}
	rel, err := filepath.Rel(h.Root, cgroupPath)
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", "", fmt.Errorf("process %d's cgroup %s is outside the server's mount of %s", pid, cgroupPath, h.MountPoint)
	}
	return filepath.Join(h.MountPoint, rel), cgroupPath, nil
}

// Locate finds the cgroup2 mount holding directory dir and returns dir's
// path within the hierarchy ("/a/b") and the mount.
func Locate(dir string) (cgroupPath string, mount Hierarchy, err error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", Hierarchy{}, err
	}
	mounts, err := procfs.GetMounts()
	if err != nil {
		return "", Hierarchy{}, err
	}
	best, bestRoot := "", ""
	for _, m := range mounts {
		if m.FSType != "cgroup2" {
			continue
		}
		if real == m.MountPoint || strings.HasPrefix(real, strings.TrimSuffix(m.MountPoint, "/")+"/") {
			if len(m.MountPoint) > len(best) {
				best, bestRoot = m.MountPoint, m.Root
			}
		}
	}
	if best == "" {
		return "", Hierarchy{}, fmt.Errorf("%s: no cgroup2 mount holds it", dir)
	}
	rel, err := filepath.Rel(best, real)
	if err != nil {
		return "", Hierarchy{}, err
	}
	return filepath.Join(bestRoot, rel), Hierarchy{MountPoint: best, Root: bestRoot}, nil
}
