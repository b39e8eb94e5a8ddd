package test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// v1Container starts a container whose cgroups are test cgroups of its
// own in every hierarchy of the host (v1 ones and cgroup2), mounts its
// view with --owner alone (the layout view) and attaches it. It returns
// the host dirs by hierarchy name.
func v1Container(t *testing.T, l lane) (map[string]string, *container, *server) {
	t.Helper()
	dirs, c := v1Cgroups(t, l, "")
	s := mountView(t, "", "--owner", strconv.Itoa(c.pid()))
	if got := c.do(t, "attach", s.mnt); got != "OK" {
		t.Fatalf("attach: %s", got)
	}
	return dirs, c, s
}

// v1Cgroups makes a test cgroup in every v1 hierarchy of the host but
// skip, and in cgroup2, and starts a container in all of them. It returns
// the host dirs by hierarchy name. The cgroups come first, so that they
// are removed after the container is gone.
func v1Cgroups(t *testing.T, l lane, skip string) (map[string]string, *container) {
	t.Helper()
	laneOnly(t, hostLane, len(l.v1) > 0, "no cgroup v1 hierarchies on this machine")
	dirs := map[string]string{}
	for name, root := range l.v1 {
		if name == skip {
			continue
		}
		dir := newCgroupIn(t, root)
		if name == "cpuset" {
			// A task can only join a v1 cpuset that has cpus and mems.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				mustWrite(t, filepath.Join(dir, f), readFile(t, filepath.Join(root, f)))
			}
		}
		dirs[name] = dir
	}
	unified := newCgroup(t, l)
	dirs[filepath.Base(l.cgroup2)] = unified
	c := startContainer(t, unified, containerBase)
	for name, dir := range dirs {
		if name != filepath.Base(l.cgroup2) {
			mustWrite(t, filepath.Join(dir, "cgroup.procs"), strconv.Itoa(c.pid()))
		}
	}
	return dirs, c
}

func TestV1LayoutMirrorsTheHost(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	dirs, c, s := v1Container(t, l)
	var want []string
	for name := range dirs {
		want = append(want, name)
	}
	sort.Strings(want)
	if got := dirsOf(t, c, cg); !slices.Equal(got, want) {
		t.Errorf("the container's /sys/fs/cgroup lists %v, the host mounts %v", got, want)
	}
	// Each hierarchy is rooted at the container's own cgroup there.
	for name, dir := range dirs {
		if got, want := names(t, s.path(name)), names(t, dir); !slices.Equal(got, want) {
			t.Errorf("%s lists %v through cgfs, host %v", name, got, want)
		}
	}
	// The layout itself is the host's.
	c.expect(t, "EACCES", "mkdir", cg+"/newhierarchy")
	c.expect(t, "EACCES", "rmdir", cg+"/memory")
	// No hidden leaf ever appears on v1, and tasks are the container's.
	c.expect(t, "OK", "mkdir", cg+"/memory/child")
	if got := pidList(t, c.do(t, "read", cg+"/memory/cgroup.procs")); !slices.Contains(got, "1") {
		t.Errorf("memory/cgroup.procs in the container = %v, want its init (1)", got)
	}
	if got := pidList(t, c.do(t, "read", cg+"/memory/tasks")); !slices.Contains(got, "1") {
		t.Errorf("memory/tasks in the container = %v, want its init (1)", got)
	}
	if _, err := os.Stat(filepath.Join(dirs["memory"], leafName)); !os.IsNotExist(err) {
		t.Errorf("a hidden leaf appeared on v1: %v", err)
	}
}

func TestV1LimitsEnforced(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	dirs, c, _ := v1Container(t, l)

	// memory: a child whose limit an allocation passes.
	c.expect(t, "OK", "mkdir", cg+"/memory/child")
	c.expect(t, "OK", "write", cg+"/memory/child/memory.limit_in_bytes", "33554432")
	got := c.do(t, "alloc", cg+"/memory/child/cgroup.procs", "96")
	failcnt := strings.TrimSpace(readFile(t, filepath.Join(dirs["memory"], "child/memory.failcnt")))
	if !strings.Contains(got, "killed") && failcnt == "0" {
		t.Errorf("allocating 96 MiB under a 32 MiB limit: %q and memory.failcnt %s; want an OOM kill or failures", got, failcnt)
	}

	// pids: a fork past pids.max fails.
	c.expect(t, "OK", "mkdir", cg+"/pids/child")
	if got := c.do(t, "forklimit", cg+"/pids/child"); !strings.HasPrefix(got, "forked") || !strings.HasSuffix(got, "EAGAIN") {
		t.Errorf("forking past pids.max: %q, want a refusal with EAGAIN", got)
	}

	// freezer: FROZEN and THAWED on a child.
	c.expect(t, "OK", "mkdir", cg+"/freezer/child")
	pid := c.do(t, "spawn")
	c.expect(t, "OK", "write", cg+"/freezer/child/cgroup.procs", pid)
	c.expect(t, "OK", "write", cg+"/freezer/child/freezer.state", "FROZEN")
	waitFor(t, "FROZEN", 30*time.Second, func() bool {
		return c.do(t, "read", cg+"/freezer/child/freezer.state") == "OKFROZEN\n"
	})
	c.expect(t, "OK", "write", cg+"/freezer/child/freezer.state", "THAWED")
	waitFor(t, "THAWED", 30*time.Second, func() bool {
		return c.do(t, "read", cg+"/freezer/child/freezer.state") == "OKTHAWED\n"
	})

	// cpuset: a new child takes tasks at once.
	c.expect(t, "OK", "mkdir", cg+"/cpuset/child")
	if got := c.do(t, "read", cg+"/cpuset/child/cpuset.cpus"); got == "OK\n" || got == "OK" {
		t.Errorf("a new cpuset child has no cpus: %q", got)
	}
	c.expect(t, "OK", "write", cg+"/cpuset/child/cgroup.procs", pid)

	// devices: a child may narrow its access, to nothing.
	c.expect(t, "OK", "mkdir", cg+"/devices/child")
	if got := readFile(t, filepath.Join(dirs["devices"], "child/devices.list")); got != "a *:* rwm\n" {
		t.Fatalf("a new devices child lists %q, want all allowed", got)
	}
	c.expect(t, "OK", "write", cg+"/devices/child/devices.deny", "a")
	if got := readFile(t, filepath.Join(dirs["devices"], "child/devices.list")); got != "" {
		t.Errorf("devices.list after denying all = %q, want nothing", got)
	}
}

func TestV1Refusals(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	dirs, c, s := v1Container(t, l)
	for _, h := range []string{"memory", "devices", "pids", "freezer"} {
		c.expect(t, "OK", "mkdir", fmt.Sprintf("%s/%s/child", cg, h))
	}
	hostSleeper := startSleeper(t, "")
	before := map[string]hostSnapshot{}
	for name, dir := range dirs {
		before[name] = snapshot(t, dir)
	}
	rootFiles := map[string][]string{
		"memory":  {"memory.limit_in_bytes", "memory.soft_limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness"},
		"pids":    {"pids.max"},
		"cpu":     {"cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"},
		"cpuset":  {"cpuset.cpus", "cpuset.mems"},
		"freezer": {"freezer.state"},
		"devices": {"devices.allow", "devices.deny"},
		"blkio":   {"blkio.weight"},
	}
	type attack struct {
		name, want string
		op         []string
	}
	var cases []attack
	for h, files := range rootFiles {
		if _, ok := dirs[h]; !ok {
			continue
		}
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(dirs[h], f)); err != nil {
				continue // this kernel lacks it
			}
			cases = append(cases, attack{"root's " + h + "/" + f, "EPERM", []string{"write", cg + "/" + h + "/" + f, "1"}})
		}
	}
	cases = append(cases,
		attack{"notify_on_release at the root", "EPERM", []string{"write", cg + "/memory/notify_on_release", "1"}},
		attack{"notify_on_release below", "EPERM", []string{"write", cg + "/memory/child/notify_on_release", "1"}},
		attack{"devices.allow below the root", "EPERM", []string{"write", cg + "/devices/child/devices.allow", "a"}},
		// The numbers are the writer's, never the server's: ones it has
		// not, or that are no eventfd and control file, are refused.
		attack{"cgroup.event_control: descriptors the writer has not", "EBADF", []string{"write", cg + "/memory/child/cgroup.event_control", "1000 1001"}},
		attack{"cgroup.event_control: no eventfd", "EINVAL", []string{"write", cg + "/memory/child/cgroup.event_control", "0 1"}},
		attack{"cgroup.event_control: not its form", "EINVAL", []string{"write", cg + "/memory/child/cgroup.event_control", "3,4"}},
		attack{"a host pid into tasks", "ESRCH", []string{"write", cg + "/memory/child/tasks", strconv.Itoa(hostSleeper.Process.Pid)}},
		attack{"a host pid into cgroup.procs", "ESRCH", []string{"write", cg + "/pids/child/cgroup.procs", strconv.Itoa(hostSleeper.Process.Pid)}},
		attack{"a non-root user makes a cgroup", "EACCES", []string{"as", "1000", "mkdir", cg + "/memory/child/sub"}},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { c.expect(t, tc.want, tc.op...) })
	}
	// release_agent exists only at a hierarchy's real root: host root
	// sees it there; a container view never reaches it.
	c.expect(t, "ENOENT", "read", cg+"/memory/release_agent")
	for name, dir := range dirs {
		before[name].check(t, dir, "the v1 attacks on "+name)
	}
	s.waitLog(t, "rule=v1-release-agent")
	s.waitLog(t, "rule=v1-devices-allow")
}

// TestOwnerAloneOnAV2Host: on a cgroup v2 only host, --owner without
// --cgroup serves the owner's v2 cgroup at the mount root.
func TestOwnerAloneOnAV2Host(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	laneOnly(t, vmLane, len(l.v1) == 0, "this host has cgroup v1 hierarchies: --owner alone gives the layout view (TestV1LayoutMirrorsTheHost)")
	host := newCgroup(t, l)
	c := startContainer(t, host, containerBase)
	s := mountView(t, "", "--owner", strconv.Itoa(c.pid()))
	if got, want := names(t, s.mnt), names(t, host); !slices.Equal(got, want) {
		t.Errorf("the mount root lists %v, the owner's cgroup %v", got, want)
	}
	if got := c.do(t, "attach", s.mnt); got != "OK" {
		t.Fatalf("attach: %s", got)
	}
	if got := pidList(t, c.do(t, "read", cg+"/cgroup.procs")); !slices.Contains(got, "1") {
		t.Errorf("cgroup.procs at the root = %v, want the container's init", got)
	}
	c.expect(t, "OK", "mkdir", cg+"/child")
	if _, err := os.Stat(filepath.Join(host, "child")); err != nil {
		t.Errorf("mkdir through the owner's view made no host cgroup: %v", err)
	}
}

// TestEventControlCarriesTheWritersOwnDescriptors: cgroup v1 memory
// notifications through the view (containerd's and conmon's OOM
// monitors use them): a process of the container registers its own
// eventfd for memory.oom_control of a cgroup it made, and the kernel
// signals that eventfd when it OOM-kills a task there; a control file of
// another cgroup is EINVAL, as the kernel answers.
func TestEventControlCarriesTheWritersOwnDescriptors(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	_, ok := l.v1["memory"]
	laneOnly(t, hostLane, ok, "cgroup.event_control is cgroup v1's: this host has no v1 memory hierarchy")
	parent := runParent(t)
	helper := "env " + helperEnv + "=1 " + helperBin
	script := fmt.Sprintf(`m=/sys/fs/cgroup/memory
mkdir $m/oom $m/other
echo 33554432 > $m/oom/memory.limit_in_bytes
%[1]s oomwatch $m/oom $m/other
%[1]s oomwatch $m/oom $m/oom
`, helper)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	wantSaid(t, r.out, "the container", "register EINVAL\n", "register OK\n", "signal: killed", "oom events 1\n")
}
