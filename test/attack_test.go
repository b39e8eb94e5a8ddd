package test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	time.Sleep(time.Second) // a token comes back
	c.expect(t, "EINVAL", "write", cg+"/child/cgroup.procs", "y")
	s.waitLog(t, "suppressed=")
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
	host, c, s := containerWithView(t, l, containerBase, "--max-open-files", "16")
	before := snapshot(t, host)
	c.expect(t, "OK 16", "openhold", cg+"/cgroup.events", "0", "16")
	c.expect(t, "ENFILE 0", "openhold", cg+"/cgroup.events", "0", "1")
	c.expect(t, "ENFILE 0", "openhold", cg+"/cgroup.procs", "1", "1")
	s.waitLog(t, "rule=open-files")
	c.expect(t, "OK", "closeheld")
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
