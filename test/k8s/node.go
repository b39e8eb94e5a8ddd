package k8s

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// nodeDirs are the node paths backed by directories of the test's own:
// what containerd, the kubelet and a DaemonSet's hostPath volumes use.
var nodeDirs = []string{
	"/etc/containerd", // with conf.d/, which the configuration imports
	"/etc/cni/net.d",
	"/etc/nri",
	"/opt/cgfs",
	"/opt/cni/bin",
	"/opt/nri",
	"/run/cgfs",
	"/run/containerd",
	"/var/run/nri", // containerd's NRI socket, nri.sock
	"/var/lib/containerd",
	"/var/lib/kubelet",
	"/var/log/pods",
	"/var/log/containers",
}

// kubeletSysctls are the files the kubelet writes at start
// (setupKernelTunables in pkg/kubelet/cm/container_manager_linux.go). In
// the kubelet's own mount namespace each is a file of the test's holding
// the host's value: the host keeps its own.
var kubeletSysctls = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// nodeMount is one mount(2) nodeinit makes, in order; Mkdir creates the
// target first. The JSON is nodeinit's $CGFS_NODE_MOUNTS.
type nodeMount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	Mkdir                  bool
}

// layout is where the node's paths live on the host.
type layout struct {
	binds    map[string]string // node directory -> the test's directory
	overlays map[string]string // node directory -> its overlay's upper directory
	mounts   []nodeMount
}

// planNode lays the node's directories out under root and lists the
// mounts that put them in place: everything private, a procfs of the
// node's pid namespace, overlays over the deepest existing ancestors of
// the node directories the host lacks, the binds, and /var/lib/kubelet
// shared (the kubelet's volumes reach containerd's namespace).
func planNode(root string) (layout, error) {
	l := layout{binds: map[string]string{}, overlays: map[string]string{}}
	mounts := []nodeMount{
		{Target: "/", Flags: syscall.MS_REC | syscall.MS_PRIVATE},
		// containerd reads /proc/<pid>/ns/* of the pids its shims report,
		// which are pids of this namespace. Nothing is mounted over this
		// procfs: the kernel allows proc mounts in user-namespaced pods
		// only next to a fully visible one (mount_too_revealing).
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC},
	}
	var binds []nodeMount
	for _, d := range nodeDirs {
		target := canonical(d)
		host := filepath.Join(root, "node", target)
		if err := os.MkdirAll(host, 0o755); err != nil {
			return l, err
		}
		l.binds[target] = host
		switch fi, err := os.Stat(target); {
		case err == nil && !fi.IsDir():
			return l, fmt.Errorf("%s is not a directory on the host", target)
		case err == nil:
		case errors.Is(err, fs.ErrNotExist):
			// Creating the mount point on the host is not ours to do: it
			// is created in an overlay whose upper directory is the test's.
			a := existingAncestor(target)
			if a == "/" {
				return l, fmt.Errorf("%s: would need an overlay over /", target)
			}
			if _, ok := l.overlays[a]; !ok {
				upper := filepath.Join(root, "overlay", a, "upper")
				work := filepath.Join(root, "overlay", a, "work")
				for _, p := range []string{upper, work} {
					if err := os.MkdirAll(p, 0o755); err != nil {
						return l, err
					}
				}
				if strings.ContainsAny(a+upper+work, ",:") {
					return l, fmt.Errorf("overlay paths %q %q %q hold ',' or ':'", a, upper, work)
				}
				l.overlays[a] = upper
			}
		default:
			return l, err
		}
		binds = append(binds, nodeMount{Source: host, Target: target, Flags: syscall.MS_BIND, Mkdir: true})
	}
	var ancestors []string
	for a := range l.overlays {
		ancestors = append(ancestors, a)
	}
	sort.Strings(ancestors) // a parent before its children
	for _, a := range ancestors {
		upper := l.overlays[a]
		mounts = append(mounts, nodeMount{
			Source: "overlay", Target: a, FSType: "overlay",
			Data: fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", a, upper, filepath.Join(filepath.Dir(upper), "work")),
		})
	}
	sort.Slice(binds, func(i, j int) bool { return binds[i].Target < binds[j].Target })
	mounts = append(mounts, binds...)
	mounts = append(mounts, nodeMount{Target: "/var/lib/kubelet", Flags: syscall.MS_SHARED})
	l.mounts = mounts
	return l, nil
}

// hostPath is where node path p lives on the host: in a directory of
// the test's, in an overlay's upper directory if the node wrote it
// there, or else at p itself.
func (l layout) hostPath(p string) string {
	p = canonical(p)
	if dir, rest, ok := longestPrefix(l.binds, p); ok {
		return filepath.Join(dir, rest)
	}
	if upper, rest, ok := longestPrefix(l.overlays, p); ok {
		if q := filepath.Join(upper, rest); exists(q) {
			return q
		}
	}
	return p
}

// longestPrefix finds the longest key of m that is p or a parent of p.
func longestPrefix(m map[string]string, p string) (value, rest string, ok bool) {
	best := ""
	for k := range m {
		if (p == k || strings.HasPrefix(p, k+"/")) && len(k) > len(best) {
			best = k
		}
	}
	if best == "" {
		return "", "", false
	}
	return m[best], strings.TrimPrefix(p, best), true
}

// canonical resolves the symbolic links in the part of p that exists on
// the host (/var/run is /run).
func canonical(p string) string {
	p = filepath.Clean("/" + p)
	a := existingAncestor(p)
	r, err := filepath.EvalSymlinks(a)
	if err != nil {
		return p
	}
	return filepath.Join(r, strings.TrimPrefix(p, a))
}

// existingAncestor is p, or its nearest ancestor, that exists.
func existingAncestor(p string) string {
	for !exists(p) && p != "/" {
		p = filepath.Dir(p)
	}
	return p
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// cgroupHierarchies lists the mount points of the host's cgroup
// hierarchies, v1 and v2, one per hierarchy.
func cgroupHierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seen := map[string]bool{}
	var dirs []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
		pre, post, ok := strings.Cut(s.Text(), " - ")
		fields, postFields := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(postFields) < 1 {
			continue
		}
		if t := postFields[0]; (t != "cgroup" && t != "cgroup2") || fields[3] != "/" || seen[fields[2]] {
			continue
		}
		seen[fields[2]] = true
		dirs = append(dirs, fields[4])
	}
	return dirs, s.Err()
}

// makeCgroupRoot creates root in every hierarchy (the kubelet refuses a
// cgroupRoot missing from one) and returns the directories made. A new
// cpuset gets its parent's cpus and mems.
func makeCgroupRoot(root string) ([]string, error) {
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	var made []string
	for _, h := range hierarchies {
		dir := filepath.Join(h, root)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return made, err
		}
		made = append(made, dir)
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return made, fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
				}
			}
		}
	}
	return made, nil
}

// removeCgroupTree removes dir and every cgroup below it, children
// first, retrying while the kernel still holds tasks that are dying.
func removeCgroupTree(dir string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var dirs []string
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if !exists(dir) {
			return nil
		}
		// A cgroup that went during the walk: walk again. WalkDir lists
		// parents first: remove in reverse.
		last := err
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				last = fmt.Errorf("rmdir %s: %w", dirs[i], err)
			}
		}
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
}
