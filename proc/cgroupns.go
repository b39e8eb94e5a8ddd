package proc

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// CgroupNSRoots returns the root of task tid's cgroup namespace in each
// hierarchy, as host paths in the form of its /proc/TID/cgroup lines:
// where the kernel roots a cgroupfs mount the task makes (what it sees
// as / in its own /proc/self/cgroup), which need not be its cgroup. The
// task's lines are read from inside its namespace, where they are
// relative to that root, and subtracted from the host's. A hierarchy
// whose root cannot be told (the task is outside its namespace's root
// there, "/.." in its own line, or it moved between the two reads) has
// no line. The read happens on a thread of its own that never runs
// anything again.
func (p *Procs) CgroupNSRoots(tid int) ([]procfs.Cgroup, error) {
	ns, err := unix.Open(p.root+"/"+strconv.Itoa(tid)+"/ns/cgroup", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(ns)
	var in []procfs.Cgroup
	err = InNamespace(ns, unix.CLONE_NEWCGROUP, func() (err error) {
		in, err = p.Cgroups(tid)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the cgroups of %d in its cgroup namespace: %w", tid, err)
	}
	out, err := p.Cgroups(tid)
	if err != nil {
		return nil, err
	}
	var roots []procfs.Cgroup
	for _, o := range out {
		for _, i := range in {
			if i.HierarchyID != o.HierarchyID {
				continue
			}
			if root, ok := nsRoot(o.Path, i.Path); ok {
				o.Path = root
				roots = append(roots, o)
			}
		}
	}
	return roots, nil
}

// nsRoot is the root of a cgroup namespace in which a task at host path
// outer is at inner.
func nsRoot(outer, inner string) (string, bool) {
	if inner == "/" {
		return outer, true
	}
	if inner == "/.." || strings.HasPrefix(inner, "/../") || !strings.HasPrefix(inner, "/") {
		return "", false
	}
	root, ok := strings.CutSuffix(outer, inner)
	if !ok {
		return "", false
	}
	if root == "" {
		root = "/"
	}
	return root, true
}

// nsFiles names a namespace kind's file in /proc/TID/ns, as setns joins
// it for the thread itself (a pid namespace is its children's).
var nsFiles = map[int]string{unix.CLONE_NEWNS: "mnt", unix.CLONE_NEWCGROUP: "cgroup", unix.CLONE_NEWPID: "pid_for_children"}

// InNamespace runs fn on a thread of its own that enters the namespace
// ns of kind nstype (CLONE_NEWNS, CLONE_NEWCGROUP or CLONE_NEWPID),
// leaving the file system attributes it shares first for a mount
// namespace. The thread is never used again: it ends with its goroutine,
// unless it is Go's main thread, which Go parks for good instead; that
// one goes back to its own namespace first, or it would keep ns alive
// (for a mount namespace, with a container's mounts in it).
func InNamespace(ns, nstype int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		own, err := unix.Open("/proc/thread-self/ns/"+nsFiles[nstype], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(own)
		if nstype == unix.CLONE_NEWNS {
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				done <- fmt.Errorf("unshare(CLONE_FS): %w", err)
				return
			}
		}
		if err := unix.Setns(ns, nstype); err != nil {
			done <- fmt.Errorf("setns: %w", err)
			return
		}
		defer func() {
			if unix.Gettid() == unix.Getpid() {
				_ = unix.Setns(own, nstype)
			}
		}()
		done <- fn()
	}()
	return <-done
}
