package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The attacks of the second outside audit (cgfs issue 23), each
// asserting the errno the attacker gets, that the host is unchanged, and
// that another container is still served afterwards.

// nestedAttack is shell, run as a container's root, in which the
// container's uid 1000 tries to become its container's cgroup admin
// through a cgroupfs mount of its own: first in a user namespace of its
// own (unshare -Urm), whose mount the kernel refuses (the container's
// cgroup namespace belongs to the container's user namespace, where uid
// 1000 has no capability), then with a cgroup namespace of its own too
// (unshare -UrmC), where the kernel allows the mount but its files stay
// host root's, so nothing of root's is writable. A cgroup the container's
// root delegated to uid 1000 stays uid 1000's. d1 and d2 are empty
// directories for the mounts; on a hybrid host the v1 freezer is tried
// as well.
func nestedAttack(d1, d2 string) string {
	return fmt.Sprintf(`export H="env %[1]s=1 %[2]s"
`+laneScript+`
sleep 1000 & export victim=$!
mkdir $V2/jail $V2/sub && chown -R 1000:1000 $V2/sub && echo prepared
$H as 1000 unshare -Urm sh -c 'busybox mount -t cgroup2 none %[3]s; echo userns-only $?'
$H as 1000 unshare -UrmC sh -c '
busybox mount -t cgroup2 none %[3]s; echo cgroupns $?
awk "\$5 == \"%[3]s\" { for (i = 7; \$i != \"-\"; i++) {}; print \"fstype\", \$(i+1) }" /proc/self/mountinfo
echo mkdir $($H mkdir %[3]s/mine)
echo move $($H write %[3]s/jail/cgroup.procs $victim)
echo freeze $($H write %[3]s/jail/cgroup.freeze 1)
echo kill $($H write %[3]s/jail/cgroup.kill 1)
echo limit $($H write %[3]s/jail/cgroup.max.descendants 1)
echo rootprocs $($H write %[3]s/cgroup.procs $victim)
echo delegated $($H mkdir %[3]s/sub/mine)
echo self $($H write %[3]s/sub/mine/cgroup.procs 0)
'
if [ -d /sys/fs/cgroup/freezer ]; then
mkdir /sys/fs/cgroup/freezer/jail
$H as 1000 unshare -UrmC sh -c '
busybox mount -t cgroup -o freezer none %[4]s; echo v1 $?
echo v1freeze $($H write %[4]s/jail/freezer.state FROZEN)
echo v1move $($H write %[4]s/jail/tasks $victim)
echo v1mkdir $($H mkdir %[4]s/mine)
'
echo v1state $(cat /sys/fs/cgroup/freezer/jail/freezer.state) v1tasks $(cat /sys/fs/cgroup/freezer/jail/tasks | wc -l)
fi
echo victim $(grep 0:: /proc/$victim/cgroup) $(grep State: /proc/$victim/status | cut -f2 | cut -c1)
echo jail $(grep frozen $V2/jail/cgroup.events) $(grep populated $V2/jail/cgroup.events)
echo made $(ls -d $V2/mine $V2/jail/mine $V2/sub/mine 2>/dev/null)
kill $victim
`, helperEnv, helperBin, d1, d2)
}

// checkNestedAttack checks what nestedAttack printed: every change of
// root's refused with the kernel's errno, the victim where it was and
// not frozen, the only cgroup made the one in the delegated cgroup.
func checkNestedAttack(t *testing.T, out string, v1 bool) {
	t.Helper()
	v2, _, _ := lanePaths(t)
	wants := []string{"prepared\n",
		"cgroupns 0\n", "fstype fuse.cgfs\n",
		"mkdir EACCES\n", "move EACCES\n", "freeze EACCES\n", "kill EACCES\n", "limit EACCES\n", "rootprocs EACCES\n",
		"delegated OK\n", "self EACCES\n",
		"victim 0::/ S\n", "jail frozen 0 populated 0\n", "made " + v2 + "/sub/mine\n"}
	if v1 {
		wants = append(wants, "v1 0\n", "v1freeze EACCES\n", "v1move EACCES\n", "v1mkdir EACCES\n", "v1state THAWED v1tasks 0\n")
	}
	wantSaid(t, out, "the attacker", wants...)
	if strings.Contains(out, "userns-only 0\n") {
		t.Errorf("a cgroupfs mount in a user namespace of uid 1000's own (the container's cgroup namespace) succeeded")
	}
}

// TestNestedMountOfAContainerUser: uid 1000 of a cgfs run container
// mounts cgroupfs from user namespaces of its own, against cgfs run's
// agent: it gets what the kernel would give it and no more.
func TestNestedMountOfAContainerUser(t *testing.T) {
	requireRoot(t)
	requireTool(t, "busybox")
	requireTool(t, "unshare")
	l := detectLane(t)
	parent := runParent(t)
	d1, d2 := publicDir(t), publicDir(t)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", nestedAttack(d1, d2))
	t.Logf("in the container:\n%s", r.out)
	checkNestedAttack(t, r.out, len(l.v1) > 0)
	// Another container is served as before.
	r = cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", laneScript+`mkdir $V2/after && echo served`)
	wantSaid(t, r.out, "a second container", "served\n")
}

// TestNestedMountOfAContainerUserThroughTheDaemon: the same attack in a
// container the daemon serves, made by a process cgfs exec started, whose
// seccomp listener the daemon's agent answers. The host's tree is the
// same before and after, and the daemon's other container is served.
func TestNestedMountOfAContainerUserThroughTheDaemon(t *testing.T) {
	requireRoot(t)
	requireTool(t, "busybox")
	requireTool(t, "unshare")
	l := detectLane(t)
	parent := runParent(t)
	env := startDaemon(t)
	startRun(t, env, "--parent", parent, "--name", "victim")
	startRun(t, env, "--parent", parent, "--name", "bystander")
	waitExec(t, env, "victim", "echo up", "up")
	waitExec(t, env, "bystander", "echo up", "up")
	host := filepath.Join(l.cgroup2, parent, "victim")
	d1, d2 := publicDir(t), publicDir(t)
	out, err := cgfsExec(t, env, "victim", nestedAttack(d1, d2))
	t.Logf("in the container (%v):\n%s", err, out)
	checkNestedAttack(t, out, len(l.v1) > 0)
	// Once more, the host's side checked from outside: the cgroups the
	// attack aims at (the container's root holds its init's loop, whose
	// processes come and go).
	jail, sub := snapshot(t, filepath.Join(host, "jail")), snapshot(t, filepath.Join(host, "sub"))
	out, _ = cgfsExec(t, env, "victim", `export H="env `+helperEnv+`=1 `+helperBin+`"
`+laneScript+`
sleep 1000 & export victim=$!
$H as 1000 unshare -UrmC sh -c 'busybox mount -t cgroup2 none `+d1+` && $H write `+d1+`/jail/cgroup.procs $victim; $H write `+d1+`/jail/cgroup.freeze 1; $H mkdir `+d1+`/jail/mine'
kill $victim; echo tried`)
	if !strings.Contains(out, "EACCES\nEACCES\nEACCES\ntried") {
		t.Errorf("the second round said %q, want three EACCES", out)
	}
	jail.check(t, filepath.Join(host, "jail"), "the attacker's second round")
	sub.check(t, filepath.Join(host, "sub"), "the attacker's second round")
	if _, err := os.Stat(filepath.Join(host, "mine")); err == nil {
		t.Errorf("the attacker made %s/mine", host)
	}
	waitExec(t, env, "bystander", laneScript+"mkdir $V2/after && echo served", "served")
}

// TestAttachLifetimes: a failed attach (a target that does not exist)
// leaves nothing served and its name free; 100 attaches and detaches of
// views of a container whose init lives on leave the daemon's goroutines
// and descriptors where they were (a dropped view held its owner's pidfd
// and a goroutine while the owner lived).
func TestAttachLifetimes(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	d := startStormDaemon(t, false)
	run := startRun(t, d.env, "--parent", parent, "--name", "owner")
	waitExec(t, d.env, "owner", "echo up", "up")
	init := strconv.Itoa(initOf(t, run))
	dir := publicDir(t) // in the container's mount namespace too: it shares the host's file system
	attach := func(name, target string) (string, error) {
		return cgfsCmd(t, d.env, "attach", "--name", name, "--owner", init, "--in", init, "--target", target)
	}
	list := func() string {
		out, err := cgfsCmd(t, d.env, "list")
		if err != nil {
			t.Fatalf("cgfs list: %v\n%s", err, out)
		}
		return out
	}

	out, err := attach("stray", filepath.Join(dir, "no/such/dir"))
	if err == nil || !strings.Contains(out, "no/such/dir") {
		t.Errorf("attach to a target that does not exist: %v, %q; want a failure naming the target", err, out)
	}
	if l := list(); strings.Contains(l, "stray") {
		t.Errorf("a failed attach left its view served:\n%s", l)
	}
	if out, err := attach("stray", dir); err != nil {
		t.Fatalf("attach with the name a failed attach had: %v\n%s", err, out)
	}
	if out, err := cgfsCmd(t, d.env, "detach", "stray"); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}

	cycle := func() {
		if out, err := attach("cycle", dir); err != nil {
			t.Fatalf("attach: %v\n%s", err, out)
		}
		if out, err := cgfsCmd(t, d.env, "detach", "cycle"); err != nil {
			t.Fatalf("detach: %v\n%s", err, out)
		}
		waitFor(t, "the detached view to go", 10*time.Second, func() bool { return !strings.Contains(list(), "cycle") })
	}
	cycle() // the first starts what every attach shares
	base := d.use(t)
	base.Fds = fdKinds(d.pid())
	for range 100 {
		cycle()
	}
	s := &storm{daemon: d}
	s.checkBackToBaseline(t, base, base)
	if l := list(); l != "owner\t"+init+"\n" {
		t.Errorf("cgfs list after the cycles:\n%s", l)
	}
}
