package test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The attacks an outside audit found (cgfs issue 11), each asserting the
// errno the container gets, that the host is unchanged, and that the
// server still serves afterwards. The earlier catalogue is
// TestAttackCatalogue and TestV1Refusals.

// TestLogFloodIsBounded: a container refused in a loop gets every
// refusal counted, but the host log only a bounded number of lines, the
// next of which says how many were suppressed.
func TestLogFloodIsBounded(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, s := containerWithView(t, l, containerBase, "--metrics", "127.0.0.1:0")
	c.expect(t, "OK", "mkdir", cg+"/child")
	before := snapshot(t, host)
	const n = 3000
	start := time.Now()
	c.expect(t, fmt.Sprintf("EINVAL %d", n), "writeloop", cg+"/child/cgroup.procs", "x", fmt.Sprint(n))
	elapsed := time.Since(start)
	before.check(t, host, "the flood")
	if got := metricValue(s.scrape(t), "cgfs_refusals_total", `rule="bad-value"`); got != n {
		t.Errorf("cgfs_refusals_total{rule=bad-value} = %v after %d refused writes, want exactly %d", got, n, n)
	}
	// The budget: a burst of 100 lines, then 2 a second.
	lines := strings.Count(s.log.String(), "msg=refused")
	if bound := 100 + int(elapsed.Seconds()*2) + 2; lines > bound {
		t.Errorf("%d refusals in %v wrote %d log lines, want at most %d", n, elapsed.Round(time.Millisecond), lines, bound)
	}
	// Tokens come back with time (2 a second): refused again until a
	// line is written, it says how many were left out.
	leftOut := regexp.MustCompile(`msg=refused .*suppressed=[1-9]`)
	for deadline := time.Now().Add(10 * time.Second); !leftOut.MatchString(s.log.String()); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line says how many refusals were left out, 10 s after the flood:\n%s", s.log.String())
		}
		c.expect(t, "EINVAL", "write", cg+"/child/cgroup.procs", "y")
	}
	c.expect(t, "OK", "mkdir", cg+"/still-served")
}

// TestOpenModeThreeIsJudged: an open with access mode 3
// (O_WRONLY|O_RDWR, "neither, but needs both permissions") is judged as a
// read and as a write, so another container reaching the mount cannot
// pin the server's files with it.
func TestOpenModeThreeIsJudged(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	other := newCgroup(t, l)
	host, c, s := containerWithView(t, l, containerBase)
	b := startContainer(t, other, otherBase)
	if got := b.do(t, "attach", s.mnt); got != "OK" {
		t.Fatalf("attach in the second container: %s", got)
	}
	c.expect(t, "OK", "mkdir", cg+"/child")
	before := snapshot(t, host)
	for _, f := range []string{"cgroup.procs", "cgroup.events", "child/cgroup.events"} {
		// The owner's lookup leaves the name in the kernel's dentry
		// cache, shared by every user of the mount: the other
		// container's open then comes without a lookup.
		if got := c.do(t, "read", cg+"/"+f); !strings.HasPrefix(got, "OK") {
			t.Fatalf("read %s in the owner: %s", f, got)
		}
		b.expect(t, "EACCES 0", "openhold", cg+"/"+f, "3", "1")
		b.expect(t, "EACCES 0", "openhold", cg+"/"+f, "0", "1")
	}
	c.expect(t, "OK", "as", "1000", "open", cg+"/child/cgroup.events", "0")
	c.expect(t, "EACCES", "as", "1000", "open", cg+"/child/cgroup.events", "3") // a user may read it, not write
	c.expect(t, "OK 1", "openhold", cg+"/cgroup.procs", "3", "1")               // the owner's root may both
	c.expect(t, "OK", "closeheld")
	s.waitLog(t, "rule=outside-owner-userns")
	before.check(t, host, "the opens")
	c.expect(t, "OK", "mkdir", cg+"/still-served")
}

// TestOpenFilesAreBounded: the owner holds at most its limit of open
// files (ENFILE beyond), and is served again once it closes them.
func TestOpenFilesAreBounded(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, s := containerWithView(t, l, containerBase, "--max-open-files", "16", "--metrics", "127.0.0.1:0")
	before := snapshot(t, host)
	// A file is the container's until its release reaches the server,
	// which the kernel sends after close(2) returns: each full round
	// starts when the server holds none.
	noneHeld := func() {
		waitFor(t, "the server to hold none of the container's files", 10*time.Second*laneSlowdown(), func() bool {
			return metricValue(s.scrape(t), "cgfs_container_held", `resource="open_files"`) == 0
		})
	}
	noneHeld()
	c.expect(t, "OK 16", "openhold", cg+"/cgroup.events", "0", "16")
	if held := metricValue(s.scrape(t), "cgfs_container_held", `resource="open_files"`); held != 16 {
		t.Errorf("cgfs_container_held{resource=open_files} = %v while the container holds 16", held)
	}
	c.expect(t, "ENFILE 0", "openhold", cg+"/cgroup.events", "0", "1")
	c.expect(t, "ENFILE 0", "openhold", cg+"/cgroup.procs", "1", "1")
	s.waitLog(t, "rule=open-files")
	c.expect(t, "OK", "closeheld")
	noneHeld()
	c.expect(t, "OK 16", "openhold", cg+"/cgroup.events", "0", "16")
	c.expect(t, "OK", "closeheld")
	before.check(t, host, "the opens")
	c.expect(t, "OK", "mkdir", cg+"/still-served")
}

// TestOwnCgroupfsMountGivesNothing: the container's root can mount
// cgroupfs itself (its cgroup namespace is its own), but the host files
// of the cgroups it made and delegated through cgfs stay host root's, so
// there it can write none of them; through cgfs the same writes are
// judged as always.
func TestOwnCgroupfsMountGivesNothing(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, _ := containerWithView(t, l, containerBase)
	c.expect(t, "OK", "mkdir", cg+"/child")
	c.expect(t, "OK", "mkdir", cg+"/sub")
	c.expect(t, "OK", "chownR", cg+"/sub", "1000", "1000")
	c.expect(t, "1000:1000 755", "stat", cg+"/sub")
	native := publicDir(t)
	c.expect(t, "OK", "nativemount", "cgroup2", "", native)
	before := snapshot(t, host)
	for _, f := range []string{"child/cgroup.max.descendants", "child/cgroup.max.depth", "child/cgroup.freeze",
		"sub/cgroup.procs", "sub/cgroup.max.descendants", "cgroup.max.descendants", "cgroup.subtree_control"} {
		c.expect(t, "EACCES", "write", native+"/"+f, "1")
	}
	c.expect(t, "EACCES", "mkdir", native+"/child/natively")
	c.expect(t, "EACCES", "as", "1000", "mkdir", native+"/sub/natively")
	before.check(t, host, "writes through the container's own cgroupfs")
	// Through cgfs they are judged as always.
	c.expect(t, "OK", "write", cg+"/child/cgroup.max.descendants", "1")
	c.expect(t, "OK", "as", "1000", "mkdir", cg+"/sub/mine")
	c.expect(t, "1000:1000 755", "stat", cg+"/sub/mine")
	if owner := hostOwner(t, filepath.Join(host, "sub/mine/cgroup.procs")); owner != 0 {
		t.Errorf("host owner of a cgroup user 1000 made = %d, want host root", owner)
	}
}

// TestOwnV1MountGivesNothing: the same on cgroup v1, where the kernel
// itself contains nothing: notify_on_release (CVE-2022-0492) and raw
// limits of a cgroup the container made stay out of its reach.
func TestOwnV1MountGivesNothing(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	dirs, c, _ := v1Container(t, l)
	c.expect(t, "OK", "mkdir", cg+"/memory/child")
	c.expect(t, "OK", "newcgroupns")
	native := publicDir(t)
	c.expect(t, "OK", "nativemount", "cgroup", "memory", native)
	if got := c.do(t, "ls", native); got != "child" {
		t.Fatalf("the container's own memory cgroupfs lists %q, want its cgroup with child", got)
	}
	before := snapshot(t, dirs["memory"])
	for _, f := range []string{"child/notify_on_release", "child/memory.limit_in_bytes", "child/tasks", "child/cgroup.procs"} {
		c.expect(t, "EACCES", "write", native+"/"+f, "1")
	}
	c.expect(t, "EACCES", "mkdir", native+"/child/natively")
	before.check(t, dirs["memory"], "writes through the container's own v1 cgroupfs")
	c.expect(t, "OK", "write", cg+"/memory/child/memory.limit_in_bytes", "67108864")
}

// mountFails runs `cgfs mount ARGS... MNT` and expects it to refuse with
// exit status 2 and a message holding every one of want.
func mountFails(t *testing.T, want []string, args ...string) {
	t.Helper()
	mnt := publicDir(t)
	var out lockedBuffer
	cmd := exec.Command(cgfsBin, append(append([]string{"mount"}, args...), mnt)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		// It serves: the refusal did not come.
		_ = cmd.Process.Kill()
		<-done
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
		t.Fatalf("cgfs mount %v served; want it refused", args)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Errorf("cgfs mount %v: %v, want exit status 2\n%s", args, err, out.String())
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("cgfs mount %v said %q, want it to name %q", args, out.String(), w)
		}
	}
}

// TestSharedCgroupIsRefused: a view whose root holds a host process, or
// is a hierarchy's root, would let the container reconfigure, freeze and
// join host processes. cgfs refuses it, naming the hierarchy; --shared
// serves it read-only.
func TestSharedCgroupIsRefused(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	shared := newCgroup(t, l)
	c := startContainer(t, shared, containerBase)
	hostSleeper := startSleeper(t, shared)
	owner := strconv.Itoa(c.pid())
	mountFails(t, []string{"hierarchy .", strconv.Itoa(hostSleeper.Process.Pid), "--shared ."}, "--cgroup", shared, "--owner", owner)

	// With --shared the host says it wants exactly that: read-only.
	s := mountView(t, shared, "--owner", owner, "--shared", ".")
	if got := c.do(t, "attach", s.mnt); got != "OK" {
		t.Fatalf("attach: %s", got)
	}
	before := snapshot(t, shared)
	c.expect(t, "EROFS", "mkdir", cg+"/child")
	c.expect(t, "EROFS", "write", cg+"/cgroup.procs", "0")
	c.expect(t, "EROFS", "write", cg+"/cgroup.subtree_control", "+pids")
	c.expect(t, "EROFS", "chmod", cg+"/cgroup.procs", "666")
	if got := c.do(t, "read", cg+"/cgroup.procs"); !strings.HasPrefix(got, "OK") {
		t.Errorf("reading the shared cgroup: %s", got)
	}
	before.check(t, shared, "the container on a read-only shared cgroup")
	if got := hostCgroupOf(t, hostSleeper.Process.Pid); got != cgroupPath(l, shared) {
		t.Errorf("the host process moved to %s", got)
	}
	s.waitLog(t, "rule=read-only")

	// The hierarchy's root as the owner's cgroup (on a hybrid host the
	// refusal names the first hierarchy found without a cgroup of the
	// owner's own, which may be a v1 one).
	atRoot := startContainer(t, l.cgroup2, containerBase)
	mountFails(t, []string{"hierarchy", "--shared"}, "--owner", strconv.Itoa(atRoot.pid()))
}

// TestV1HierarchyWithoutOwnCgroupIsRefused: on a v1 host a runtime
// often leaves a container in the host's cgroup of some hierarchies
// (cpu, blkio, name=systemd): cgfs refuses to serve it there unless
// --shared names that hierarchy, which is then read-only.
func TestV1HierarchyWithoutOwnCgroupIsRefused(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	_, ok := l.v1["cpu"]
	laneOnly(t, hostLane, ok, "no cgroup v1 cpu hierarchy on this machine")
	_, c := v1Cgroups(t, l, "cpu") // cpu is left where the test runs, with host processes
	owner := strconv.Itoa(c.pid())
	mountFails(t, []string{"hierarchy cpu", "--shared cpu"}, "--owner", owner)

	s := mountView(t, "", "--owner", owner, "--shared", "cpu")
	if got := c.do(t, "attach", s.mnt); got != "OK" {
		t.Fatalf("attach: %s", got)
	}
	// What the container could reach there: the host's cpu cgroup it
	// sits in (the test's, among host processes, which fork and exit
	// meanwhile: the hierarchy as a whole is no measure), and where its
	// own and the host's first process sit.
	cpuDir := filepath.Join(l.v1["cpu"], v1CgroupOf(t, c.pid(), "cpu"))
	shares := readFile(t, filepath.Join(cpuDir, "cpu.shares"))
	procs := func() string { return readFile(t, "/proc/1/cgroup") + readFile(t, "/proc/"+owner+"/cgroup") }
	placed := procs()
	c.expect(t, "EROFS", "mkdir", cg+"/cpu/child")
	c.expect(t, "EROFS", "write", cg+"/cpu/cpu.shares", "2")
	c.expect(t, "EROFS", "write", cg+"/cpu/cgroup.procs", "1")
	c.expect(t, "OK", "mkdir", cg+"/memory/child") // its own hierarchies are its own
	if _, err := os.Stat(filepath.Join(cpuDir, "child")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the container's mkdir on the shared cpu hierarchy: host %s/child is there (%v)", cpuDir, err)
	}
	if now := readFile(t, filepath.Join(cpuDir, "cpu.shares")); now != shares {
		t.Errorf("the container's write changed host %s/cpu.shares: %q -> %q", cpuDir, shares, now)
	}
	if now := procs(); now != placed {
		t.Errorf("the container's write of 1 into cgroup.procs moved a process:\n before %s\n after  %s", placed, now)
	}
}

// v1CgroupOf is host pid's cgroup in the v1 hierarchy of controller.
func v1CgroupOf(t *testing.T, pid int, controller string) string {
	t.Helper()
	for _, line := range strings.Split(readFile(t, "/proc/"+strconv.Itoa(pid)+"/cgroup"), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && slices.Contains(strings.Split(f[1], ","), controller) {
			return f[2]
		}
	}
	t.Fatalf("pid %d is in no v1 %s hierarchy", pid, controller)
	return ""
}

// TestV1DescendantsAreBounded: v1 has no cgroup.max.descendants, and
// every memory cgroup takes one of the kernel's 65,535 memcg ids: cgfs
// keeps a limit of its own on v1 (500 by default), so one container
// cannot stop memory cgroup creation on the whole host.
func TestV1DescendantsAreBounded(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	dirs, c, s := v1Container(t, l)
	c.expect(t, "OK", "mkdir", cg+"/memory/a")
	c.expect(t, "EAGAIN 499", "mkdirmany", cg+"/memory/a", "600")
	c.expect(t, "EAGAIN", "mkdir", cg+"/memory/more")
	s.waitLog(t, "rule=v1-descendants")
	entries, err := os.ReadDir(filepath.Join(dirs["memory"], "a"))
	if err != nil {
		t.Fatal(err)
	}
	made := 0
	for _, e := range entries {
		if e.IsDir() {
			made++
		}
	}
	if made != 499 {
		t.Errorf("the host has %d cgroups below memory/a, want 499 (500 with a)", made)
	}
	// Room comes back with an rmdir; other hierarchies have their own.
	c.expect(t, "OK", "rmdir", cg+"/memory/a/c0")
	c.expect(t, "OK", "mkdir", cg+"/memory/more")
	c.expect(t, "OK", "mkdir", cg+"/pids/own-count")
}

// forkHostAt starts a host process (sleep) with host pid want, through
// testdata/forkat.c built at bin (clone3's set_tid: the pid is taken
// exactly, or the test fails saying why); it is killed when the test
// ends.
func forkHostAt(t *testing.T, bin string, want int) int {
	t.Helper()
	cmd := exec.Command(bin, strconv.Itoa(want), "sleep", "1000")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != fmt.Sprintf("started %d", want) {
		t.Fatalf("forkat %d: %q", want, line)
	}
	// forkat waits for it: the pid is its child's until then.
	fd, err := unix.PidfdOpen(want, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); unix.Close(fd) })
	return want
}

// TestReusedIDNeverMovesAHostProcess holds the server's write of a
// migration (a ptrace hold at the write's entry, after every check) while
// the task the container named dies, a host process takes its host pid
// and a container process its container id. The host process must stay
// where it is; the container process that took the id is put back
// where it was born, and the container is told ESRCH.
func TestReusedIDNeverMovesAHostProcess(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	forkat := testTool(t, "forkat")
	host, c, s := containerWithView(t, l, containerBase)
	c.expect(t, "OK", "mkdir", cg+"/c1")
	warm := c.do(t, "spawn") // the first move starts what migrations need
	c.expect(t, "OK", "write", cg+"/c1/cgroup.procs", warm)
	victim := c.do(t, "spawn")
	victimHost := hostPidOf(t, c, victim)
	dest := filepath.Join(host, "c1/cgroup.procs")
	before := strings.Fields(readFile(t, dest))

	hold := holdWrite(t, s.cmd.Process.Pid, dest)
	c.expect(t, "OK", "bgwrite", cg+"/c1/cgroup.procs", victim)
	hold.Held(t, 20*time.Second)
	// The window, held open: the named task dies and both its ids are
	// taken again.
	c.expect(t, "OK", "killreap", victim)
	hostProc := forkHostAt(t, forkat, victimHost)
	hostHome := hostCgroupOf(t, hostProc)
	stranger := c.do(t, "forkat", victim, forkat)
	if stranger != victim {
		t.Fatalf("the container's new process got id %s, want %s", stranger, victim)
	}
	strangerHost := hostPidOf(t, c, stranger)
	strangerHome := hostCgroupOf(t, strangerHost)
	hold.Release(t)

	if got := c.do(t, "bgwait"); got != "ESRCH" {
		t.Errorf("the container's write of a task that died = %q, want ESRCH", got)
	}
	if got := hostCgroupOf(t, hostProc); got != hostHome {
		t.Errorf("a host process that took a dead task's pid was moved from %s to %s", hostHome, got)
	}
	if got := hostCgroupOf(t, strangerHost); got != strangerHome {
		t.Errorf("the container process that took the id is in %s, want it back in %s", got, strangerHome)
	}
	if got := strings.Fields(readFile(t, dest)); !slices.Equal(got, before) {
		t.Errorf("c1/cgroup.procs on the host = %v, want %v as before", got, before)
	}
	s.waitLog(t, "rule=task-reused")
	c.expect(t, "OK", "write", cg+"/c1/cgroup.procs", "0") // still served
}

// TestV1TaskOwnership: on v1 the kernel lets a writer that is not root
// move only tasks whose uid or saved uid is its own. cgfs writes as host
// root, so it applies the rule itself: a container user given a
// delegated cgroup cannot move the container root's processes between
// its own cgroups (and freeze them there).
func TestV1TaskOwnership(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	dirs, c, s := v1Container(t, l)
	for _, h := range []string{"memory", "freezer"} {
		c.expect(t, "OK", "mkdir", cg+"/"+h+"/sub")
		c.expect(t, "OK", "chownR", cg+"/"+h+"/sub", "1000", "1000")
		c.expect(t, "OK", "as", "1000", "mkdir", cg+"/"+h+"/sub/a")
		c.expect(t, "OK", "as", "1000", "mkdir", cg+"/"+h+"/sub/b")
	}
	rootTask := c.do(t, "spawn") // the container's root's
	c.expect(t, "OK", "write", cg+"/memory/sub/a/cgroup.procs", rootTask)
	c.expect(t, "OK", "write", cg+"/freezer/sub/a/cgroup.procs", rootTask)
	before := snapshot(t, dirs["memory"])
	// Common ancestor sub is the user's: only the task's owner stops it.
	c.expect(t, "EACCES", "as", "1000", "write", cg+"/memory/sub/b/cgroup.procs", rootTask)
	c.expect(t, "EACCES", "as", "1000", "write", cg+"/freezer/sub/b/tasks", rootTask)
	before.check(t, dirs["memory"], "a container user moving root's task")
	s.waitLog(t, "rule=v1-task-owner")
	// The container's root may move any of its tasks.
	c.expect(t, "OK", "write", cg+"/memory/sub/b/cgroup.procs", rootTask)
}

// cpuTicks is the CPU time process pid has used, in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b := readFile(t, fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(b[strings.LastIndexByte(b, ')')+1:])
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}

// TestServerWorkDoesNotGrowWithTheTree: the server's CPU is not the
// container's. A write naming no task and a read of cgroup.stat cost
// the server the same with 300 cgroups in the view as with none (they
// walked the view, and then every process of the host).
func TestServerWorkDoesNotGrowWithTheTree(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	_, c, s := containerWithView(t, l, containerBase)
	c.expect(t, "OK", "mkdir", cg+"/big")
	const n = 1000
	cost := func(op ...string) int {
		before := cpuTicks(t, s.cmd.Process.Pid)
		if got := c.do(t, op...); !strings.HasPrefix(got, "ESRCH") && got != "OK" {
			t.Fatalf("%v: %s", op, got)
		}
		return cpuTicks(t, s.cmd.Process.Pid) - before
	}
	write := []string{"writeloop", cg + "/cgroup.procs", "99999", fmt.Sprint(n)}
	stat := []string{"readloopall", cg + "/cgroup.stat", fmt.Sprint(n)}
	flatWrite, flatStat := cost(write...), cost(stat...)
	c.expect(t, "OK 300", "mkdirmany", cg+"/big", "300")
	bigWrite, bigStat := cost(write...), cost(stat...)
	t.Logf("server CPU for %d ops, in ticks: pid writes %d flat, %d with 300 cgroups; cgroup.stat reads %d flat, %d with 300",
		n, flatWrite, bigWrite, flatStat, bigStat)
	if bigWrite > 3*flatWrite+20 {
		t.Errorf("%d refused pid writes cost the server %d ticks with 300 cgroups, %d with none: it grows with the tree", n, bigWrite, flatWrite)
	}
	if bigStat > 3*flatStat+20 {
		t.Errorf("%d cgroup.stat reads cost the server %d ticks with 300 cgroups, %d with none: it grows with the tree", n, bigStat, flatStat)
	}
}
