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
	type result struct {
		lines []procfs.Cgroup
		err   error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		own, err := unix.Open("/proc/thread-self/ns/cgroup", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer unix.Close(own)
		if err := unix.Setns(ns, unix.CLONE_NEWCGROUP); err != nil {
			done <- result{err: fmt.Errorf("entering the cgroup namespace of %d: %w", tid, err)}
			return
		}
		// Go never ends the main thread (it parks it for good): that one
		// goes back, or it would keep the task's namespace alive.
		defer func() {
			if unix.Gettid() == unix.Getpid() {
				_ = unix.Setns(own, unix.CLONE_NEWCGROUP)
			}
		}()
		lines, err := p.Cgroups(tid)
		done <- result{lines, err}
	}()
	in := <-done
	if in.err != nil {
		return nil, in.err
	}
	out, err := p.Cgroups(tid)
	if err != nil {
		return nil, err
	}
	var roots []procfs.Cgroup
	for _, o := range out {
		for _, i := range in.lines {
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
