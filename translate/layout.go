package translate

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
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
	// Controllers is the hierarchy's field in /proc/PID/cgroup lines:
	// "" for v2, "memory", "cpu,cpuacct", "name=systemd" for v1.
	Controllers string
}

// Layout is how the host lays out its cgroup hierarchies.
type Layout struct {
	Dir         string // where they are mounted, /sys/fs/cgroup
	Hierarchies []Hierarchy
	// Symlinks are links in Dir between hierarchy names (cpu ->
	// cpu,cpuacct).
	Symlinks map[string]string
}

// DiscoverLayout reads the server's mount table and its own
// /proc/self/cgroup: every cgroup mount whose hierarchy the server is
// in.
func DiscoverLayout() (Layout, error) {
	mounts, err := procfs.GetMounts()
	if err != nil {
		return Layout{}, err
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return Layout{}, err
	}
	var l Layout
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(own)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, m := range mounts {
			if seen[m.MountPoint] || !mountIs(m, f[0], f[1]) {
				continue
			}
			seen[m.MountPoint] = true
			l.Hierarchies = append(l.Hierarchies, Hierarchy{
				Name:        filepath.Base(m.MountPoint),
				MountPoint:  m.MountPoint,
				Root:        m.Root,
				V1:          m.FSType == "cgroup",
				Controllers: f[1],
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
// /proc/self/cgroup line with id and controllers field.
func mountIs(m *procfs.MountInfo, id, controllers string) bool {
	if controllers == "" {
		return id == "0" && m.FSType == "cgroup2"
	}
	if m.FSType != "cgroup" {
		return false
	}
	for _, c := range strings.Split(controllers, ",") {
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

// DirOf returns the host directory of process pid's cgroup in h.
func (h Hierarchy) DirOf(pid int) (dir, cgroupPath string, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || f[1] != h.Controllers || (h.Controllers == "" && f[0] != "0") {
			continue
		}
		rel, err := filepath.Rel(h.Root, f[2])
		if err != nil || strings.HasPrefix(rel, "..") {
			return "", "", fmt.Errorf("process %d's cgroup %s is outside the server's mount of %s", pid, f[2], h.MountPoint)
		}
		return filepath.Join(h.MountPoint, rel), f[2], nil
	}
	return "", "", fmt.Errorf("process %d is in no cgroup of hierarchy %q", pid, h.Controllers)
}

// OpenHierarchy opens the host directory dir of hierarchy h, whose path
// in the hierarchy is cgroupPath, as the root of a view.
func OpenHierarchy(h Hierarchy, dir, cgroupPath string) (*Host, error) {
	host, err := OpenHost(dir)
	if err != nil {
		return nil, err
	}
	host.cgroupPath = cgroupPath
	host.controllers = h.Controllers
	return host, nil
}
