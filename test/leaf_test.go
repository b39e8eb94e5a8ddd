package test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const leafName = ".cgfs-leaf" // translate.LeafName, as the host sees it

// domainController picks a domain controller the lane offers (memory
// where it is on v2, else hugetlb), enabled at the cgroup2 root.
func domainController(t *testing.T, l lane) string {
	t.Helper()
	for _, c := range []string{"memory", "hugetlb", "io"} {
		if l.controllers[c] {
			enableOnHost(t, l, c)
			return c
		}
	}
	laneNeeds(t, vmLane, false, "no cgroup v2 domain controller on this machine (needs memory, hugetlb or io)")
	return ""
}

// hostCgroupOf is host pid's cgroup2 path, from the host side.
func hostCgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	t.Fatalf("pid %d has no cgroup2 line", pid)
	return ""
}

// cgroupPath is a host cgroup directory's path in the cgroup2 hierarchy.
func cgroupPath(l lane, dir string) string {
	rel, _ := filepath.Rel(l.cgroup2, dir)
	return "/" + rel
}

func dirsOf(t *testing.T, c *container, path string) []string {
	t.Helper()
	ans := c.do(t, "ls", path)
	if strings.HasPrefix(ans, "E") {
		t.Fatalf("ls %s: %s", path, ans)
	}
	return strings.Fields(ans)
}

// TestNoInternalProcessConstraintDisappears: a populated cgroup enables a
// domain controller through the view, natively refused with EBUSY.
func TestNoInternalProcessConstraintDisappears(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	ctrl := domainController(t, l)

	// Natively: a populated cgroup cannot enable it.
	native := newCgroup(t, l)
	startSleeper(t, native)
	if err := os.Mkdir(filepath.Join(native, "c"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(filepath.Join(native, "cgroup.subtree_control"), "+"+ctrl); errnoOf(err) != unix.EBUSY {
		t.Fatalf("natively, +%s on a populated cgroup: %v, want EBUSY", ctrl, err)
	}

	host, c, s := containerWithView(t, l, containerBase, "--metrics", "127.0.0.1:0")
	pid := c.do(t, "spawn")
	// The root case: the view root holds the container's processes.
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+"+ctrl)
	c.expect(t, "OK", "mkdir", cg+"/v")
	c.expect(t, "OK", "mkdir", cg+"/v/c")
	c.expect(t, "OK", "write", cg+"/v/cgroup.procs", pid)
	c.expect(t, "OK", "write", cg+"/v/cgroup.subtree_control", "+"+ctrl)
	if got := c.do(t, "read", cg+"/v/cgroup.subtree_control"); strings.TrimSpace(strings.TrimPrefix(got, "OK")) != ctrl {
		t.Errorf("v/cgroup.subtree_control = %q, want %s", got, ctrl)
	}
	if got := dirsOf(t, c, cg); !slices.Equal(got, []string{"v"}) {
		t.Errorf("the container's root lists cgroups %v, want [v]", got)
	}
	if got := dirsOf(t, c, cg+"/v"); !slices.Equal(got, []string{"c"}) {
		t.Errorf("v lists cgroups %v, want [c]", got)
	}
	// The processes are in the leaves on the host, and still in their
	// cgroups' cgroup.procs for the container.
	hostPid := hostPidOf(t, c, pid)
	if got, want := hostCgroupOf(t, hostPid), cgroupPath(l, host)+"/v/"+leafName; got != want {
		t.Errorf("host cgroup of the moved process = %s, want %s", got, want)
	}
	if got, want := hostCgroupOf(t, c.pid()), cgroupPath(l, host)+"/"+leafName; got != want {
		t.Errorf("host cgroup of the container init = %s, want %s", got, want)
	}
	if got := pidList(t, c.do(t, "read", cg+"/v/cgroup.procs")); !slices.Equal(got, []string{pid}) {
		t.Errorf("v/cgroup.procs = %v, want [%s]", got, pid)
	}
	if got := pidList(t, c.do(t, "read", cg+"/cgroup.procs")); !slices.Contains(got, "1") {
		t.Errorf("root cgroup.procs = %v, want the init (1) in it", got)
	}
	// A process written to v while it enables the controller lands in
	// v's leaf too.
	pid2 := c.do(t, "spawn")
	c.expect(t, "OK", "write", cg+"/v/cgroup.procs", pid2)
	if got, want := hostCgroupOf(t, hostPidOf(t, c, pid2)), cgroupPath(l, host)+"/v/"+leafName; got != want {
		t.Errorf("host cgroup of a process written later = %s, want %s", got, want)
	}
	// The child really has the controller.
	if got := c.do(t, "read", cg+"/v/c/cgroup.controllers"); !strings.Contains(got, ctrl) {
		t.Errorf("v/c/cgroup.controllers = %q, want %s", got, ctrl)
	}

	// The reserved name: never listed, never made or removed, but the
	// path /proc/self/cgroup shows a process in v's leaf resolves,
	// read-only, to what v shows.
	if got := c.do(t, "read", "/proc/"+pid+"/cgroup"); !strings.Contains(got, "0::/v/"+leafName) {
		t.Errorf("/proc/%s/cgroup = %q, want it in /v/%s", pid, got, leafName)
	}
	if got, want := pidList(t, c.do(t, "read", cg+"/v/"+leafName+"/cgroup.procs")), pidList(t, c.do(t, "read", cg+"/v/cgroup.procs")); !slices.Equal(got, want) || !slices.Contains(got, pid) {
		t.Errorf("v/%s/cgroup.procs = %v, want v's %v, with %s", leafName, got, want, pid)
	}
	c.expect(t, "EEXIST", "mkdir", cg+"/v/"+leafName)
	c.expect(t, "EINVAL", "mkdir", cg+"/v/c/"+leafName)
	c.expect(t, "ENOENT", "read", cg+"/v/c/"+leafName+"/cgroup.procs")
	c.expect(t, "EPERM", "rmdir", cg+"/v/"+leafName)
	c.expect(t, "EPERM", "mkdir", cg+"/v/"+leafName+"/x")
	c.expect(t, "EPERM", "write", cg+"/v/"+leafName+"/cgroup.procs", pid)
	c.expect(t, "ENOENT", "read", cg+"/v/"+leafName+"/c/cgroup.procs")

	// cgroup.stat counts what the container sees.
	stat := strings.TrimPrefix(c.do(t, "read", cg+"/cgroup.stat"), "OK")
	if got := keyedValue(stat, "nr_descendants"); got != "2" {
		t.Errorf("nr_descendants seen by the container = %s, want 2 (v, v/c)\n%s", got, stat)
	}
	if got := keyedValue(readFile(t, filepath.Join(host, "cgroup.stat")), "nr_descendants"); got != "4" {
		t.Errorf("host nr_descendants = %s, want 4 (two leaves)", got)
	}

	// Folding back: without the controller v needs no leaf.
	c.expect(t, "OK", "write", cg+"/v/cgroup.subtree_control", "-"+ctrl)
	if _, err := os.Stat(filepath.Join(host, "v", leafName)); !os.IsNotExist(err) {
		t.Errorf("v's leaf is still on the host after -%s: %v", ctrl, err)
	}
	if got, want := hostCgroupOf(t, hostPid), cgroupPath(l, host)+"/v"; got != want {
		t.Errorf("after folding, the process is in %s, want %s", got, want)
	}
	if got := pidList(t, c.do(t, "read", cg+"/v/cgroup.procs")); len(got) != 2 {
		t.Errorf("v/cgroup.procs after folding = %v, want both processes", got)
	}
	// The metrics tell the same story: two leaves made, one folded, one
	// (the root's) left.
	text := s.scrape(t)
	for _, m := range []struct {
		name string
		part string
		want float64
	}{
		{"cgfs_hidden_leaves_total", `event="created"`, 2},
		{"cgfs_hidden_leaves_total", `event="folded"`, 1},
		{"cgfs_hidden_leaves", `container="view"`, 1},
	} {
		if got := metricValue(text, m.name, m.part); got != m.want {
			t.Errorf("%s{%s} = %v, want %v", m.name, m.part, got, m.want)
		}
	}
}

// TestRmdirWithLeaf: an emptied cgroup goes, leaf and all.
func TestRmdirWithLeaf(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	ctrl := domainController(t, l)
	host, c, _ := containerWithView(t, l, containerBase)
	pid := c.do(t, "spawn")
	c.expect(t, "OK", "mkdir", cg+"/v")
	c.expect(t, "OK", "mkdir", cg+"/v/c")
	c.expect(t, "OK", "write", cg+"/v/cgroup.procs", pid)
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+"+ctrl)
	c.expect(t, "OK", "write", cg+"/v/cgroup.subtree_control", "+"+ctrl)
	c.expect(t, "OK", "rmdir", cg+"/v/c")
	c.expect(t, "EBUSY", "rmdir", cg+"/v") // its leaf holds the process
	c.expect(t, "OK", "write", cg+"/cgroup.procs", pid)
	c.expect(t, "OK", "rmdir", cg+"/v")
	if _, err := os.Stat(filepath.Join(host, "v")); !os.IsNotExist(err) {
		t.Errorf("host v still there: %v", err)
	}
}

// TestMaxDescendantsAsTheContainerSetsThem: leaves never use the
// container's allowance, and the allowance holds.
func TestMaxDescendantsAsTheContainerSetsThem(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	ctrl := domainController(t, l)
	_, c, _ := containerWithView(t, l, containerBase)
	pid := c.do(t, "spawn")
	c.expect(t, "OK", "mkdir", cg+"/v")
	c.expect(t, "OK", "write", cg+"/v/cgroup.max.descendants", "2")
	c.expect(t, "OK", "write", cg+"/v/cgroup.max.depth", "1")
	c.expect(t, "OK", "write", cg+"/v/cgroup.procs", pid)
	c.expect(t, "OK", "mkdir", cg+"/v/a")
	c.expect(t, "EAGAIN", "mkdir", cg+"/v/a/deep") // depth 2 > 1
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+"+ctrl)
	c.expect(t, "OK", "write", cg+"/v/cgroup.subtree_control", "+"+ctrl) // makes v's leaf
	c.expect(t, "OK", "mkdir", cg+"/v/b")
	c.expect(t, "EAGAIN", "mkdir", cg+"/v/c") // 2 visible descendants is the limit
	c.expect(t, "OK2\n", "read", cg+"/v/cgroup.max.descendants")
	c.expect(t, "OK1\n", "read", cg+"/v/cgroup.max.depth")
	stat := strings.TrimPrefix(c.do(t, "read", cg+"/v/cgroup.stat"), "OK")
	if got := keyedValue(stat, "nr_descendants"); got != "2" {
		t.Errorf("v nr_descendants = %s, want 2", got)
	}
}

// TestLeafConcurrency: writers to cgroup.procs of several cgroups race a
// writer toggling the controller; every process ends in exactly one
// expected place and no leaf is left.
func TestLeafConcurrency(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	ctrl := domainController(t, l)
	host, c, s := containerWithView(t, l, containerBase)
	const nproc, ncg = 24, 3
	var pids []int
	for range nproc {
		p, _ := strconv.Atoi(c.do(t, "spawn"))
		pids = append(pids, hostPidOf(t, c, strconv.Itoa(p)))
	}
	for i := range ncg {
		c.expect(t, "OK", "mkdir", fmt.Sprintf("%s/v%d", cg, i))
		c.expect(t, "OK", "mkdir", fmt.Sprintf("%s/v%d/c", cg, i))
	}
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+"+ctrl)

	// Host root writes through the view from many goroutines (the
	// container helper serves one request at a time).
	var wg sync.WaitGroup
	errs := make(chan error, nproc*4+100)
	for i, pid := range pids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 4 {
				dst := fmt.Sprintf("v%d/cgroup.procs", (i+round)%ncg)
				if err := writeFile(s.path(dst), strconv.Itoa(pid)); err != nil {
					errs <- fmt.Errorf("move %d to %s: %w", pid, dst, err)
				}
			}
		}()
	}
	for i := range ncg {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 6 {
				op := "+"
				if round%2 == 1 {
					op = "-"
				}
				if err := writeFile(s.path(fmt.Sprintf("v%d/cgroup.subtree_control", i)), op+ctrl); err != nil {
					errs <- fmt.Errorf("%s%s on v%d: %w", op, ctrl, i, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every process is where its last write put it: v((i+3)%ncg), in the
	// cgroup itself since the last toggle disabled the controller.
	base := cgroupPath(l, host)
	for i, pid := range pids {
		want := fmt.Sprintf("%s/v%d", base, (i+3)%ncg)
		if got := hostCgroupOf(t, pid); got != want {
			t.Errorf("process %d is in %s, want %s", pid, got, want)
		}
	}
	for i := range ncg {
		if _, err := os.Stat(filepath.Join(host, fmt.Sprintf("v%d", i), leafName)); !os.IsNotExist(err) {
			t.Errorf("v%d's leaf was leaked: %v", i, err)
		}
	}
}

// TestLeavesSurviveAServerCrash: kill -9 mid-sequence and a restart
// give a consistent view; a leaf left half-way is folded back.
func TestLeavesSurviveAServerCrash(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	ctrl := domainController(t, l)
	host, c, s := containerWithView(t, l, containerBase)
	pid := c.do(t, "spawn")
	hostPid := hostPidOf(t, c, pid)
	c.expect(t, "OK", "mkdir", cg+"/v")
	c.expect(t, "OK", "mkdir", cg+"/v/c")
	c.expect(t, "OK", "mkdir", cg+"/w")
	c.expect(t, "OK", "write", cg+"/v/cgroup.procs", pid)
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+"+ctrl)
	c.expect(t, "OK", "write", cg+"/v/cgroup.subtree_control", "+"+ctrl)

	// A crash half-way through enabling on w: its processes were moved
	// into a leaf, the controller never enabled.
	w2 := c.do(t, "spawn")
	c.expect(t, "OK", "write", cg+"/w/cgroup.procs", w2)
	if err := os.Mkdir(filepath.Join(host, "w", leafName), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(host, "w", leafName, "cgroup.procs"), strconv.Itoa(hostPidOf(t, c, w2)))

	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.done
	_ = unix.Unmount(s.mnt, unix.MNT_DETACH)

	s2 := mountView(t, host, "--owner", strconv.Itoa(c.pid()))
	view := func(p string) string { return readFile(t, s2.path(p)) }
	// v keeps its leaf (the controller is on), w's is folded back.
	if got, want := hostCgroupOf(t, hostPid), cgroupPath(l, host)+"/v/"+leafName; got != want {
		t.Errorf("after restart the process is in %s, want %s", got, want)
	}
	if _, err := os.Stat(filepath.Join(host, "w", leafName)); !os.IsNotExist(err) {
		t.Errorf("w's half-made leaf is still there after restart: %v", err)
	}
	if got, want := hostCgroupOf(t, hostPidOf(t, c, w2)), cgroupPath(l, host)+"/w"; got != want {
		t.Errorf("w's process is in %s after restart, want %s", got, want)
	}
	if got := strings.Fields(view("v/cgroup.procs")); !slices.Equal(got, []string{strconv.Itoa(hostPid)}) {
		t.Errorf("v/cgroup.procs after restart = %v, want [%d]", got, hostPid)
	}
	if names := names(t, s2.path("v")); slices.Contains(names, leafName) {
		t.Errorf("the leaf shows after restart: %v", names)
	}
	waitFor(t, "the restarted view to serve writes", 10*time.Second, func() bool {
		return writeFile(s2.path("v/cgroup.subtree_control"), "-"+ctrl) == nil
	})
	if got, want := hostCgroupOf(t, hostPid), cgroupPath(l, host)+"/v"; got != want {
		t.Errorf("after -%s the process is in %s, want %s", ctrl, got, want)
	}
}

// requireController skips a test on a machine whose cgroup v2 hierarchy
// lacks a controller (the host lane: only hugetlb is on v2 there); in
// the VM lane every controller is on v2, and under CI a skip there
// fails.
func requireController(t *testing.T, l lane, ctrl string) {
	t.Helper()
	laneNeeds(t, vmLane, l.controllers[ctrl], "the "+ctrl+" controller is not on cgroup v2 on this machine")
	enableOnHost(t, l, ctrl)
}

// TestOOMInALeafIsReportedOnItsCgroup: a process in v's hidden leaf is
// OOM-killed under v's memory.max; v's memory.events.local shows it
// (sysbox lost exactly these reports).
func TestOOMInALeafIsReportedOnItsCgroup(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	requireController(t, l, "memory")
	host, c, _ := containerWithView(t, l, containerBase)
	pid := c.do(t, "spawn")
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+memory")
	c.expect(t, "OK", "mkdir", cg+"/v")
	c.expect(t, "OK", "mkdir", cg+"/v/c")
	c.expect(t, "OK", "write", cg+"/v/cgroup.procs", pid)
	c.expect(t, "OK", "write", cg+"/v/cgroup.subtree_control", "+memory")
	c.expect(t, "OK", "write", cg+"/v/memory.max", "33554432")
	c.expect(t, "OK", "write", cg+"/v/memory.swap.max", "0")
	if got := c.do(t, "alloc", cg+"/v/cgroup.procs", "128"); !strings.Contains(got, "killed") {
		t.Fatalf("allocating 128 MiB under a 32 MiB memory.max: %q, want an OOM kill", got)
	}
	local := strings.TrimPrefix(c.do(t, "read", cg+"/v/memory.events.local"), "OK")
	if got := keyedValue(local, "oom_kill"); got == "" || got == "0" {
		t.Errorf("v/memory.events.local seen by the container has oom_kill %q, want at least 1:\n%s", got, local)
	}
	hostLocal := readFile(t, filepath.Join(host, "v/memory.events.local"))
	t.Logf("host v/memory.events.local (the leaf's kills are not here):\n%s", hostLocal)
}

// TestPidsMaxEnforcedBelowTheRoot: the view root's pids.max is the
// parent's; a limit the container sets below is enforced for real.
// pids is a threaded controller, and threaded controllers keep the
// kernel's rules (leaves are only for domain controllers): the root
// enables memory first, as systemd does in one write, and its processes
// go to its leaf; v stays a plain domain that takes processes.
func TestPidsMaxEnforcedBelowTheRoot(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	requireController(t, l, "pids")
	requireController(t, l, "memory")
	host, c, _ := containerWithView(t, l, containerBase)
	c.expect(t, "EPERM", "write", cg+"/pids.max", "5")
	c.expect(t, "OK", "mkdir", cg+"/v")
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+memory +pids")
	if got, want := hostCgroupOf(t, c.pid()), cgroupPath(l, host)+"/"+leafName; got != want {
		t.Errorf("after +memory +pids the container init is in %s, want %s", got, want)
	}
	c.expect(t, "OKdomain\n", "read", cg+"/v/cgroup.type")
	got := c.do(t, "forklimit", cg+"/v")
	if !strings.HasPrefix(got, "forked") || !strings.HasSuffix(got, "EAGAIN") {
		t.Fatalf("forking under pids.max = current+3: %q, want a refusal with EAGAIN", got)
	}
	var n int
	fmt.Sscanf(got, "forked %d", &n)
	if n < 1 || n > 3 {
		t.Errorf("forked %d children under pids.max current+3, want 1..3", n)
	}
}

// TestThreadedChildrenNeedNoProcessesBeside: a cgroup with processes
// that enables only a threaded controller keeps them in its leaf (it
// stays a domain and its children valid domains, as at a host's root).
// When a child is made threaded, the leaf gives the processes back and
// the cgroup becomes a thread root holding them, as natively (the
// kernel answers EOPNOTSUPP while a domain child holds processes), but
// only where that loses nothing: not while a child has a setting of the
// controller (turning it off for a moment would reset it), not with a
// domain controller enabled (no cgroup below the root can be a thread
// root then).
func TestThreadedChildrenNeedNoProcessesBeside(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	requireController(t, l, "pids")
	requireController(t, l, "memory")
	host, c, _ := containerWithView(t, l, containerBase)
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+pids")
	leaf := cgroupPath(l, host) + "/" + leafName
	if got := hostCgroupOf(t, c.pid()); got != leaf {
		t.Errorf("after +pids alone the container init is in %s, want %s", got, leaf)
	}
	c.expect(t, "OKdomain\n", "read", cg+"/cgroup.type")
	c.expect(t, "OK", "mkdir", cg+"/t")
	c.expect(t, "OK", "mkdir", cg+"/set")
	c.expect(t, "OKdomain\n", "read", cg+"/t/cgroup.type")
	// A sibling's pids.max would be reset: the kernel's answer stands.
	c.expect(t, "OK", "write", cg+"/set/pids.max", "10")
	c.expect(t, "ENOTSUP", "write", cg+"/t/cgroup.type", "threaded")
	c.expect(t, "OK10\n", "read", cg+"/set/pids.max")
	if got := hostCgroupOf(t, c.pid()); got != leaf {
		t.Errorf("after a refused threaded write the container init is in %s, want it still in %s", got, leaf)
	}
	// A domain controller enabled: no thread root possible below the
	// real root, leaf or not.
	c.expect(t, "OK", "write", cg+"/set/pids.max", "max")
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+memory")
	c.expect(t, "ENOTSUP", "write", cg+"/t/cgroup.type", "threaded")
	c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "-memory")
	c.expect(t, "OKpids\n", "read", cg+"/cgroup.subtree_control")
	// Threaded controllers only, nothing set below: the processes come
	// back and the child is threaded.
	c.expect(t, "OK", "write", cg+"/t/cgroup.type", "threaded")
	if got, want := hostCgroupOf(t, c.pid()), cgroupPath(l, host); got != want {
		t.Errorf("after the threaded write the container init is in %s, want %s (the leaf folded)", got, want)
	}
	c.expect(t, "OKthreaded\n", "read", cg+"/t/cgroup.type")
	c.expect(t, "OKdomain threaded\n", "read", cg+"/cgroup.type")
	c.expect(t, "OKpids\n", "read", cg+"/cgroup.subtree_control")
	c.expect(t, "OK", "write", cg+"/t/pids.max", "100")
	// The thread root keeps the kernel's rules: its other domain child
	// is invalid now, and a domain controller cannot be enabled.
	c.expect(t, "OKdomain invalid\n", "read", cg+"/set/cgroup.type")
	c.expect(t, "ENOTSUP", "write", cg+"/cgroup.subtree_control", "+memory")
}
