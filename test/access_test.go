package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	containerBase = 100000 // host uid of the container's root
	otherBase     = 200000 // host uid of a second container's root
	cg            = "/sys/fs/cgroup"
)

// hostSnapshot records what an attack must not change on the host: the
// tree, every file's owner and mode, the limits and which processes are
// where (cgroup.procs; not v1's tasks, whose threads come and go with the
// Go runtime of the test's own processes).
type hostSnapshot struct {
	tree   []string
	owners map[string]string
	files  map[string]string
}

func snapshot(t *testing.T, host string) hostSnapshot {
	t.Helper()
	s := hostSnapshot{files: map[string]string{}, owners: map[string]string{}}
	_ = filepath.WalkDir(host, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(host, p)
		s.tree = append(s.tree, rel)
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil {
			s.owners[rel] = fmt.Sprintf("%d:%d %o", st.Uid, st.Gid, st.Mode&0o7777)
		}
		if !d.IsDir() {
			switch filepath.Base(p) {
			case "cgroup.max.descendants", "cgroup.max.depth", "cgroup.freeze", "cgroup.procs",
				"cgroup.subtree_control", "memory.max", "pids.max", "notify_on_release",
				"memory.limit_in_bytes", "cpu.shares", "cpu.cfs_quota_us", "freezer.state", "devices.list":
				b, _ := os.ReadFile(p)
				s.files[rel] = string(b)
			}
		}
		return nil
	})
	return s
}

func (s hostSnapshot) check(t *testing.T, host, what string) {
	t.Helper()
	now := snapshot(t, host)
	if !reflect.DeepEqual(now.tree, s.tree) {
		t.Errorf("%s changed the host tree:\n before %v\n after  %v", what, s.tree, now.tree)
	}
	for k, v := range s.files {
		if now.files[k] != v {
			t.Errorf("%s changed host %s: %q -> %q", what, k, v, now.files[k])
		}
	}
	for k, v := range s.owners {
		if now.owners[k] != v {
			t.Errorf("%s changed the owner or mode of host %s: %s -> %s", what, k, v, now.owners[k])
		}
	}
}

// TestContainerRootManagesItsSubtree is the positive path: the root of
// a user-namespaced container creates a child, limits it, moves its own
// process there, freezes and thaws it, and removes it.
func TestContainerRootManagesItsSubtree(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, s := containerWithView(t, l, containerBase)

	// ls -l inside shows root, not nobody.
	c.expect(t, "0:0 644", "stat", cg+"/cgroup.procs")
	c.expect(t, "OK", "mkdir", cg+"/child")
	c.expect(t, "0:0 755", "stat", cg+"/child")
	if fi, err := os.Stat(filepath.Join(host, "child")); err != nil || !fi.IsDir() {
		t.Fatalf("no host cgroup for the container's mkdir: %v", err)
	}
	// The view's owner is cgfs's: host files stay host root's, so a
	// cgroupfs the container mounts itself lets it write nothing.
	if owner := hostOwner(t, filepath.Join(host, "child/cgroup.procs")); owner != 0 {
		t.Errorf("host owner of child/cgroup.procs = %d, want host root (the view shows the container's root)", owner)
	}
	c.expect(t, "OK", "write", cg+"/child/cgroup.max.descendants", "2")
	// The host keeps room for hidden leaves: 2N+1.
	if got := readFile(t, filepath.Join(host, "child/cgroup.max.descendants")); got != "5\n" {
		t.Errorf("host child/cgroup.max.descendants = %q, want 5 for the container's 2", got)
	}

	// A controller for the child needs an empty root: the classic leaf.
	c.expect(t, "OK", "mkdir", cg+"/leaf")
	c.expect(t, "OK", "write", cg+"/leaf/cgroup.procs", "0")
	// Runtimes open with O_TRUNC (opencontainers/cgroups WriteFile), at
	// the root too: the truncation is no write of its own.
	c.expect(t, "OK", "truncwrite", cg+"/cgroup.procs", "0")
	c.expect(t, "OK", "truncwrite", cg+"/leaf/cgroup.procs", "0")
	c.expect(t, "EPERM", "truncwrite", cg+"/cgroup.max.depth", "3")
	if got := c.do(t, "cgroup"); got != "0::/leaf" {
		t.Errorf("container's /proc/self/cgroup after moving itself = %q, want 0::/leaf", got)
	}
	if got := readFile(t, filepath.Join(host, "leaf/cgroup.procs")); strings.TrimSpace(got) != strconv.Itoa(c.pid()) {
		t.Errorf("host leaf/cgroup.procs = %q, want the container init %d", got, c.pid())
	}
	for _, ctrl := range []string{"hugetlb", "memory", "pids"} {
		if !l.controllers[ctrl] {
			continue
		}
		enableOnHost(t, l, ctrl)
		c.expect(t, "OK", "write", cg+"/cgroup.subtree_control", "+"+ctrl)
	}
	if l.controllers["hugetlb"] {
		file := hugetlbMaxFile(t, filepath.Join(host, "child"))
		c.expect(t, "OK", "write", cg+"/child/"+file, "1073741824")
		if got := readFile(t, filepath.Join(host, "child", file)); got != "1073741824\n" {
			t.Errorf("host child/%s = %q", file, got)
		}
	}
	if l.controllers["pids"] {
		c.expect(t, "OK", "write", cg+"/child/pids.max", "10")
		if got := readFile(t, filepath.Join(host, "child/pids.max")); got != "10\n" {
			t.Errorf("host child/pids.max = %q", got)
		}
	}

	// Move a process of the container into the child, freeze, thaw.
	pid := c.do(t, "spawn")
	c.expect(t, "OK", "write", cg+"/child/cgroup.procs", pid)
	if got := keyedValue(readFile(t, filepath.Join(host, "child/cgroup.events")), "populated"); got != "1" {
		t.Errorf("host child populated = %q after the move", got)
	}
	c.expect(t, "OK", "write", cg+"/child/cgroup.freeze", "1")
	waitFor(t, "frozen 1 in the container's view", 30*time.Second, func() bool {
		return keyedValue(strings.TrimPrefix(c.do(t, "read", cg+"/child/cgroup.events"), "OK"), "frozen") == "1"
	})
	c.expect(t, "OK", "write", cg+"/child/cgroup.freeze", "0")
	waitFor(t, "frozen 0 in the container's view", 30*time.Second, func() bool {
		return keyedValue(strings.TrimPrefix(c.do(t, "read", cg+"/child/cgroup.events"), "OK"), "frozen") == "0"
	})

	// Remove: the process goes back to the leaf, then rmdir.
	c.expect(t, "OK", "write", cg+"/leaf/cgroup.procs", pid)
	c.expect(t, "OK", "rmdir", cg+"/child")
	if _, err := os.Stat(filepath.Join(host, "child")); !os.IsNotExist(err) {
		t.Errorf("host child still there after the container's rmdir: %v", err)
	}
	_ = s
}

// TestAttackCatalogue: everything a container might try against its own
// view and the host, each with the errno and an unchanged host.
func TestAttackCatalogue(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	// Somewhere outside the view that the test can move things to, and a
	// second container; made first so they are removed last.
	outside := newCgroup(t, l)
	other := newCgroup(t, l)
	host, c, s := containerWithView(t, l, containerBase, "--metrics", "127.0.0.1:0")
	c.expect(t, "OK", "mkdir", cg+"/child")
	c.expect(t, "OK", "mkdir", cg+"/leaf")
	b := startContainer(t, other, otherBase)
	hostSleeper := startSleeper(t, "")

	inView := c.do(t, "spawn") // a container process, in the view
	movedOut := c.do(t, "spawn")
	movedOutHost := hostPidOf(t, c, movedOut)
	mustWrite(t, filepath.Join(outside, "cgroup.procs"), strconv.Itoa(movedOutHost))

	long := strings.Repeat("x", 300)
	rootFiles := []string{"cgroup.max.descendants", "cgroup.max.depth", "cgroup.freeze", "cgroup.kill"}
	for _, f := range []string{"memory.max", "pids.max"} {
		if _, err := os.Stat(filepath.Join(host, f)); err == nil {
			rootFiles = append(rootFiles, f)
		}
	}
	if l.controllers["hugetlb"] {
		enableOnHost(t, l, "hugetlb")
		rootFiles = append(rootFiles, hugetlbMaxFile(t, host))
	}

	before := snapshot(t, host)
	cases := []struct {
		name string
		want string
		op   []string
	}{
		{"name with newline", "EINVAL", []string{"mkdir", cg + "/a\nb"}},
		{"very long name", "ENAMETOOLONG", []string{"mkdir", cg + "/" + long}},
		{"symlink in the view", "EPERM", []string{"symlink", "/", cg + "/escape"}},
		{"dot-dot stays in the container", "ENOENT", []string{"read", cg + "/../../../etc/cgfs-nothing"}},
		{"host pid into cgroup.procs", "ESRCH", []string{"write", cg + "/child/cgroup.procs", strconv.Itoa(hostSleeper.Process.Pid)}},
		{"other container's pid", "ESRCH", []string{"write", cg + "/child/cgroup.procs", strconv.Itoa(b.pid())}},
		{"own process outside the view", "ENOENT", []string{"write", cg + "/child/cgroup.procs", movedOut}},
		{"pid into cgroup.threads", "ESRCH", []string{"write", cg + "/child/cgroup.threads", strconv.Itoa(hostSleeper.Process.Pid)}},
		{"garbage into cgroup.procs", "EINVAL", []string{"write", cg + "/child/cgroup.procs", "1; rm -rf /"}},
		{"chown to an unmapped uid", "EINVAL", []string{"chown", cg + "/child", "70000", "70000"}},
		{"chown the view root", "EPERM", []string{"chown", cg, "5", "5"}},
		{"chmod a root file", "EPERM", []string{"chmod", cg + "/cgroup.procs", "666"}},
		{"non-root user writes a limit", "EACCES", []string{"as", "1000", "write", cg + "/child/cgroup.max.descendants", "1"}},
		{"non-root user makes a cgroup", "EACCES", []string{"as", "1000", "mkdir", cg + "/child/sub"}},
		{"non-root user moves a process", "EACCES", []string{"as", "1000", "write", cg + "/child/cgroup.procs", inView}},
		{"nested namespace root writes a limit", "EACCES", []string{"nested", "1000", "write", cg + "/child/cgroup.max.descendants", "1"}},
		{"nested namespace root makes a cgroup", "EACCES", []string{"nested", "1000", "mkdir", cg + "/child/sub"}},
	}
	for _, f := range rootFiles {
		cases = append(cases, struct {
			name string
			want string
			op   []string
		}{"root's own " + f, "EPERM", []string{"write", cg + "/" + f, "1"}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.expect(t, tc.want, tc.op...)
		})
	}
	before.check(t, host, "the attacks")
	if got := strings.TrimSpace(readFile(t, filepath.Join(outside, "cgroup.procs"))); got != strconv.Itoa(movedOutHost) {
		t.Errorf("the process outside the view moved: outside has %q", got)
	}
	if got := readFile(t, "/proc/"+strconv.Itoa(hostSleeper.Process.Pid)+"/cgroup"); strings.Contains(got, filepath.Base(host)) {
		t.Errorf("host process moved into the view: %s", got)
	}
	s.waitLog(t, "rule=root-locked")
	s.waitLog(t, "rule=mode")

	// A second container given the first one's mount sees nothing.
	if got := b.do(t, "attach", s.mnt); got != "OK" {
		t.Fatalf("attach in the second container: %s", got)
	}
	b.expect(t, "EACCES", "read", cg+"/child/cgroup.max.descendants")
	b.expect(t, "EACCES", "mkdir", cg+"/intruder")
	b.expect(t, "EACCES", "write", cg+"/child/cgroup.max.descendants", "1")
	b.expect(t, "EACCES", "write", cg+"/child/cgroup.procs", "1")
	before.check(t, host, "the second container")
	s.waitLog(t, "rule=outside-owner-userns")

	// Each rule is counted under its own name.
	text := s.scrape(t)
	for rule, least := range map[string]float64{"root-locked": float64(len(rootFiles)) + 2, "mode": 4, "outside-owner-userns": 4} {
		if got := metricValue(text, "cgfs_refusals_total", `rule="`+rule+`"`); got < least {
			t.Errorf("cgfs_refusals_total{rule=%q} = %v, want at least %v\n%s", rule, got, least, text)
		}
	}
	// Every request by operation and result, with its latency; the
	// view and what its container uses; the Go runtime and the process.
	for _, c := range []struct {
		name  string
		parts []string
		least float64
		exact bool
	}{
		{"cgfs_requests_total", []string{`container="view"`, `op="mkdir"`, `result="ok"`}, 2, true},
		{"cgfs_requests_total", []string{`op="lookup"`, `result="ENAMETOOLONG"`}, 1, false}, // the kernel looks a name up before mkdir
		{"cgfs_requests_total", []string{`op="open"`, `result="EPERM"`}, float64(len(rootFiles)), false},
		{"cgfs_requests_total", []string{`op="lookup"`, `result="ok"`}, 1, false},
		{"cgfs_request_duration_seconds_count", []string{`op="open"`}, 1, false},
		{"cgfs_views", nil, 1, true},
		{"cgfs_view_up", []string{`container="view"`}, 1, true},
		{"cgfs_container_cpu_seconds_total", []string{`container="view"`}, 1e-9, false},
		{"go_goroutines", nil, 1, false},
		{"process_resident_memory_bytes", nil, 1, false},
	} {
		got := metricValue(text, c.name, c.parts...)
		if got < c.least || (c.exact && got != c.least) {
			t.Errorf("%s%v = %v, want %v (exactly: %v)", c.name, c.parts, got, c.least, c.exact)
		}
	}
	if code, body := s.get(t, "/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q while the view answers, want 200 ok", code, body)
	}
	checkMetricsText(t, text)
}

// checkMetricsText runs Prometheus's own check of exposition text
// (promtool check metrics: names, units, help) over a scrape.
func checkMetricsText(t *testing.T, text string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CGFS_LANE") == "vm" {
			t.Log("promtool is not in the VM's initramfs: checked in the host lane")
			return
		}
		skip(t, "no promtool (Debian's prometheus package; .ci/run installs it)")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// The README's alert rules, on these metrics.
	rules := filepath.Join(exampleDir(), "cgfs-alerts.yml")
	if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules %s: %v\n%s", rules, err, out)
	}
	// (the memory ones show only where the memory controller is on v2)
	for _, name := range []string{"cgfs_refusals_total", "cgfs_view_up"} {
		if !strings.Contains(readFile(t, rules), name) || !strings.Contains(text, "# TYPE "+name+" ") {
			t.Errorf("the alert rules' %s is not what cgfs exposes", name)
		}
	}
}

// TestDelegationByChown: the container root hands a child to user 1000,
// who may then manage it, and only it.
func TestDelegationByChown(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, _ := containerWithView(t, l, containerBase)
	c.expect(t, "OK", "mkdir", cg+"/sub")
	c.expect(t, "EACCES", "as", "1000", "mkdir", cg+"/sub/mine")
	c.expect(t, "OK", "chownR", cg+"/sub", "1000", "1000")
	if owner := hostOwner(t, filepath.Join(host, "sub/cgroup.procs")); owner != 0 {
		t.Errorf("host owner after the container's chown 1000 = %d, want host root still", owner)
	}
	c.expect(t, "1000:1000 755", "stat", cg+"/sub")
	c.expect(t, "OK", "as", "1000", "mkdir", cg+"/sub/mine")
	c.expect(t, "1000:1000 755", "stat", cg+"/sub/mine")
	c.expect(t, "OK", "as", "1000", "write", cg+"/sub/mine/cgroup.max.descendants", "3")
	if got := readFile(t, filepath.Join(host, "sub/mine/cgroup.max.descendants")); got != "7\n" {
		t.Errorf("host sub/mine/cgroup.max.descendants = %q", got)
	}
	c.expect(t, "EACCES", "as", "1000", "write", cg+"/cgroup.subtree_control", "+pids")
	c.expect(t, "EACCES", "as", "1001", "mkdir", cg+"/sub/theirs")
	c.expect(t, "OK", "as", "1000", "rmdir", cg+"/sub/mine")
}

// TestHostRootThroughOwnedView: host root keeps full access, but cannot
// give a file to an id the container does not map.
func TestHostRootThroughOwnedView(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, s := containerWithView(t, l, containerBase)
	c.expect(t, "OK", "mkdir", cg+"/child")
	mustWrite(t, s.path("cgroup.max.descendants"), "50")
	if got := readFile(t, filepath.Join(host, "cgroup.max.descendants")); got != "50\n" {
		t.Errorf("host root's write through the view: %q", got)
	}
	if err := os.Lchown(s.path("child"), 5, 5); errnoOf(err) != 22 {
		t.Errorf("chown to unmapped 5:5 through the view: %v, want EINVAL", err)
	}
	if err := os.Lchown(s.path("child"), containerBase+7, containerBase+7); err != nil {
		t.Errorf("chown to a mapped id: %v", err)
	}
}

func hostOwner(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

// hostPidOf maps a container pid to the host pid through /proc/PID/status.
func hostPidOf(t *testing.T, c *container, containerPid string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if f, ok := strings.CutPrefix(line, "NSpid:"); ok {
				ids := strings.Fields(f)
				if len(ids) == 2 && ids[1] == containerPid && isDescendant(pid, c.pid()) {
					return pid
				}
			}
		}
	}
	t.Fatalf("no host pid for container pid %s", containerPid)
	return 0
}

func isDescendant(pid, ancestor int) bool {
	for pid > 1 {
		if pid == ancestor {
			return true
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		pid, _ = strconv.Atoi(f[1])
	}
	return false
}

// enableOnHost enables a controller for the cgroup2 root's children.
func enableOnHost(t *testing.T, l lane, ctrl string) {
	t.Helper()
	if err := writeFile(filepath.Join(l.cgroup2, "cgroup.subtree_control"), "+"+ctrl); err != nil {
		t.Fatalf("enable %s at the cgroup2 root: %v", ctrl, err)
	}
}

// hugetlbMaxFile names a hugetlb limit file of dir (hugetlb.2MB.max).
func hugetlbMaxFile(t *testing.T, dir string) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "hugetlb.2MB.max")); err == nil {
		return "hugetlb.2MB.max"
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "hugetlb.*.max"))
	if len(matches) == 0 {
		t.Fatalf("no hugetlb.*.max in %s", dir)
	}
	return filepath.Base(matches[0])
}

// TestTaskWritesKeepTheOpenersCgroupNamespace is the kernel selftest
// test_core's lesser_ns_open: a process opens cgroup.procs of b from a
// cgroup namespace rooted at b, is moved to a, and writes "0" to what it
// opened: the kernel checks the task and the destination against the
// namespace it saved at open, and answers ENOENT (the task is outside
// it). A move inside the namespace it opened from goes through.
func TestTaskWritesKeepTheOpenersCgroupNamespace(t *testing.T) {
	requireRoot(t)
	// util-linux's unshare: busybox's (the VM's) has no -C.
	laneNeeds(t, hostLane, exec.Command("unshare", "-C", "true").Run() == nil, "no unshare -C (util-linux's) to make a cgroup namespace")
	parent := runParent(t)
	d := publicDir(t)
	for _, fifo := range []string{"opened", "go"} {
		if err := syscall.Mkfifo(filepath.Join(d, fifo), 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(d, fifo), 0o666); err != nil { // past the umask: the container's root is no one here
			t.Fatal(err)
		}
	}
	// The child holds "opened" open from the start, so that the parent's
	// read ends (EOF) if it dies early; "go" is opened read-write by the
	// parent, so its write never waits for a reader that is gone.
	script := laneScript + fmt.Sprintf(`d=%s
mkdir $V2/a $V2/b $V2/b/c
(exec 4> $d/opened; echo 0 > $V2/b/cgroup.procs; exec unshare -C sh -c '/bin/echo 0 > '$V2'/b/c/cgroup.procs && echo inner moved; /bin/echo 0 > '$V2'/b/cgroup.procs
  exec 3> '$V2'/b/cgroup.procs; echo >&4; exec 4>&-; read x < '$d'/go
  if /bin/echo 0 >&3; then echo outer moved; else echo outer refused; fi') &
child=$!
exec 5< $d/opened 6<> $d/go
read x <&5
echo $child > $V2/a/cgroup.procs
echo go >&6
wait $child
rmdir $V2/a $V2/b/c $V2/b
echo done`, d)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("cgfs run (%d):\n%s", r.code, r.out)
	if !strings.Contains(r.out, "inner moved") {
		t.Errorf("a move inside the namespace the file was opened from was refused")
	}
	if !strings.Contains(r.out, "outer refused") || !strings.Contains(r.out, "No such file or directory") {
		t.Errorf("a task moved out of the namespace its cgroup.procs was opened from moved back through it; want ENOENT, as the kernel")
	}
	if !strings.Contains(r.out, "\ndone") {
		t.Errorf("the script did not finish")
	}
}
