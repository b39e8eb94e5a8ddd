package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// Tests of real clients, unmodified, inside a container cgfs run starts:
// what they find at /sys/fs/cgroup must look like a host's cgroupfs.

// statfs types as stat -f -c %t prints them (hex): busybox's stat knows
// no name for cgroup2.
const (
	tmpfsMagic   = "1021994"
	cgroupMagic  = "27e0eb"
	cgroup2Magic = "63677270"
)

// lanePaths are where a container finds its cgroup v2 tree, and the
// statfs types a host shows for /sys/fs/cgroup and that tree.
func lanePaths(t *testing.T) (v2, rootType, v2Type string) {
	if len(detectLane(t).v1) > 0 {
		return "/sys/fs/cgroup/unified", tmpfsMagic, cgroup2Magic
	}
	return "/sys/fs/cgroup", cgroup2Magic, cgroup2Magic
}

// TestTheViewIsACgroupFilesystem: statfs (coreutils' or busybox's stat
// -f) reports the host's file system types on the view, and the mount
// table (mountinfo, /proc/mounts) names kernel cgroup mounts at each of
// its mount points, as on a host.
func TestTheViewIsACgroupFilesystem(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	parent := runParent(t)
	v2, rootType, v2Type := lanePaths(t)
	script := fmt.Sprintf(`stat -f -c 'root %%t' /sys/fs/cgroup; stat -f -c 'v2 %%t' %s; stat -f -c 'v2file %%t' %s/cgroup.procs
cd %s && stat -f -c 'relative %%t' .
stat -f -c 'proc %%t' /proc
[ ! -d /sys/fs/cgroup/memory ] || stat -f -c 'v1 %%t' /sys/fs/cgroup/memory
awk '$5 ~ "^/sys/fs/cgroup" {print "mountinfo", $5, $(NF-2), $NF}' /proc/self/mountinfo
awk '$2 ~ "^/sys/fs/cgroup" {print "mounts", $2, $3}' /proc/mounts
`, v2, v2, v2)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	want := []string{"root " + rootType, "v2 " + v2Type, "v2file " + v2Type, "relative " + v2Type, "proc 9fa0",
		"mountinfo " + v2 + " cgroup2", "mounts " + v2 + " cgroup2"}
	if len(l.v1) > 0 {
		want = append(want, "v1 "+cgroupMagic, "mountinfo /sys/fs/cgroup/memory cgroup", "mounts /sys/fs/cgroup/memory cgroup",
			"mountinfo /sys/fs/cgroup tmpfs")
	}
	for _, w := range want {
		if !strings.Contains(r.out, w) {
			t.Errorf("the container did not see %q", w)
		}
	}
	if r.code != 0 {
		t.Errorf("exit status %d", r.code)
	}
}

// TestTheKernelMountsBeneathGiveNothing: the kernel cgroup mounts under
// the view are read-only, and even made writable they let the
// container's root change nothing: the kernel judges them by host
// ownership, host root's throughout. (The view is taken away lazily:
// cgfs's event relay holds it open.)
func TestTheKernelMountsBeneathGiveNothing(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	v2, _, _ := lanePaths(t)
	script := fmt.Sprintf(`umount -l %[1]s || exit 3
grep -q cgroup2 /proc/self/mountinfo || exit 4
mkdir %[1]s/x 2>/dev/null && echo MKDIR-RO
mount -o remount,bind,rw %[1]s && echo remounted
mkdir %[1]s/x 2>/dev/null && echo MKDIR-RW
(echo $$ > %[1]s/cgroup.procs) 2>/dev/null && echo MOVED
(echo 1 > %[1]s/cgroup.freeze) 2>/dev/null && echo FROZE
echo done
`, v2)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	if !strings.Contains(r.out, "done") {
		t.Fatalf("the script did not run through (exit %d)", r.code)
	}
	for _, bad := range []string{"MKDIR-RO", "MKDIR-RW", "MOVED", "FROZE"} {
		if strings.Contains(r.out, bad) {
			t.Errorf("the kernel mount under the view let the container's root do %s", bad)
		}
	}
}

// TestInotifyOnEventsFiles: inotifywait (inotify-tools) watching
// cgroup.events in the container wakes when the kernel freezes the
// cgroup (frozen 1) and when cgroup.kill empties it (populated 0).
func TestInotifyOnEventsFiles(t *testing.T) {
	requireRoot(t)
	requireTool(t, "inotifywait")
	parent := runParent(t)
	v2, _, _ := lanePaths(t)
	script := fmt.Sprintf(`set -e
J=%s/j
mkdir $J
sleep 100 & kid=$!
echo $kid > $J/cgroup.procs
# inotifywait says "Watches established." once it watches: only then
# does the cgroup change.
inotifywait -m -e modify $J/cgroup.events > /tmp/cgfs-inw.$$ 2>&1 &
w=$!
until grep -q established /tmp/cgfs-inw.$$; do sleep 0.05; done
wait_event() {
	n=$1
	for i in $(seq 100); do
		[ $(grep -c MODIFY /tmp/cgfs-inw.$$) -ge $n ] && return 0
		sleep 0.05
	done
	return 1
}
echo 1 > $J/cgroup.freeze
wait_event 1 && echo "woke on: $(grep frozen $J/cgroup.events)"
echo 1 > $J/cgroup.kill
wait $kid || true
before=$(grep -c MODIFY /tmp/cgfs-inw.$$)
until grep -q 'populated 0' $J/cgroup.events; do sleep 0.05; done
wait_event $((before > 1 ? before : 2)) && echo "woke on: $(grep populated $J/cgroup.events)"
kill $w
rm -f /tmp/cgfs-inw.$$
rmdir $J
`, v2)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	wantSaid(t, r.out, "inotifywait", "woke on: frozen 1", "woke on: populated 0")
}

// clone3Client is the static C client of clone3(CLONE_INTO_CGROUP) in
// testdata.
func clone3Client(t *testing.T) string { return testTool(t, "clone3") }

// testTool is testdata/NAME.c, a static C tool built for the test (the
// VM lane gets it built).
func testTool(t *testing.T, name string) string {
	t.Helper()
	if dir := os.Getenv("CGFS_TOOLS"); dir != "" {
		return filepath.Join(dir, name)
	}
	requireTool(t, "gcc")
	bin := filepath.Join(publicDir(t), name)
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", bin, "testdata/"+name+".c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return bin
}

// TestClone3FallsBack: clone3 is ENOSYS for what cgfs starts, so a
// client spawning straight into a cgroup (as the kernel's selftests and
// systemd do) falls back to fork and cgroup.procs, and its child lands
// in the cgroup it named.
func TestClone3FallsBack(t *testing.T) {
	requireRoot(t)
	bin := clone3Client(t)
	parent := runParent(t)
	v2, _, _ := lanePaths(t)
	script := fmt.Sprintf("mkdir %[1]s/spawned && %[2]s %[1]s/spawned; echo status $?", v2, bin)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	wantSaid(t, r.out, "the clone3 client", "clone3: ENOSYS, falling back", "0::/spawned\n", "status 0")
}

// TestCgroupTools: libcgroup's tools find the view through the mount
// table and manage cgroups in it: cgcreate, cgset, cgget, cgexec,
// lscgroup, cgdelete.
func TestCgroupTools(t *testing.T) {
	requireRoot(t)
	requireTool(t, "cgcreate")
	l := detectLane(t)
	parent := runParent(t)
	ctrl, file, value := "pids", "pids.max", "42"
	if len(l.v1) == 0 && !l.controllers["pids"] {
		skip(t, "no pids controller on this machine")
	}
	script := fmt.Sprintf(`set -e
cgcreate -g %[1]s:/tools
cgset -r %[2]s=%[3]s tools
cgget -n -v -r %[2]s tools | sed 's/^/cgget /'
cgexec -g %[1]s:tools cat /proc/self/cgroup 2>&1 | sed 's/^/cgexec /'
lscgroup 2>&1 | sed 's/^/lscgroup /'
cgdelete -g %[1]s:/tools 2>&1 && echo deleted
`, ctrl, file, value)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	cgexec := "cgexec 0::/tools"
	if len(l.v1) > 0 {
		cgexec = ":pids:/tools"
	}
	// lscgroup names a v2 group by all the controllers of its hierarchy.
	wantSaid(t, r.out, "cgroup-tools", "cgget "+value, cgexec, ":/tools\n", "deleted")
}

// TestSystemdCgls: systemd-cgls accepts the view as a cgroup file system
// and lists the container's tree.
func TestSystemdCgls(t *testing.T) {
	requireRoot(t)
	requireTool(t, "systemd-cgls")
	parent := runParent(t)
	v2, _, _ := lanePaths(t)
	script := fmt.Sprintf(`mkdir %[1]s/listed
sleep 100 &
echo $! > %[1]s/listed/cgroup.procs
SYSTEMD_COLORS=0 systemd-cgls --no-pager
echo status $?
kill $!
`, v2)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container (exit %d):\n%s", r.code, r.out)
	wantSaid(t, r.out, "systemd-cgls", "listed", "sleep 100", "status 0")
}

// TestGoFindsItsCPULimit: Go's runtime (1.25+) sets GOMAXPROCS from the
// CPU limit it finds through /proc/self/cgroup and the mount table: in
// the container's root, in a child with a cpu.max of its own, and in the
// hidden leaf cgfs keeps the root's processes in once the root enables
// cpu (by the leaf path /proc/self/cgroup shows). Go rounds a limit
// below 2 up to 2, so a limit shows only on a machine with 3 or more
// CPUs: the VM lane has 3.
func TestGoFindsItsCPULimit(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	laneOnly(t, vmLane, len(l.v1) == 0 && l.controllers["cpu"] && l.controllers["memory"] && runtime.NumCPU() >= 3,
		fmt.Sprintf("needs the cpu and memory controllers on cgroup v2 and 3 or more CPUs (Go never sets GOMAXPROCS below 2), here %d", runtime.NumCPU()))
	parent := runParent(t)
	gomaxprocs := "env " + helperEnv + "=1 " + helperBin + " gomaxprocs x"
	// Enabling a controller at the root moves the root's processes
	// into its hidden leaf.
	limited := `echo root $(` + gomaxprocs + `)
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
echo "leaf $(grep 0:: /proc/self/cgroup) $(` + gomaxprocs + `)"
`
	r := cgfsRun(t, nil, "--parent", parent, "--cpus", "2", "--", "sh", "-c", limited)
	t.Logf("limited to 2 of %d CPUs:\n%s", runtime.NumCPU(), r.out)
	unlimited := `echo root $(` + gomaxprocs + `)
echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/two
echo "200000 100000" > /sys/fs/cgroup/two/cpu.max
sh -c 'echo $$ > /sys/fs/cgroup/two/cgroup.procs; echo child $(` + gomaxprocs + `)'
`
	r2 := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", unlimited)
	t.Logf("unlimited:\n%s", r2.out)
	for _, c := range []struct{ out, want string }{
		{r.out, "root 2"}, {r.out, "leaf 0::/.cgfs-leaf 2"},
		{r2.out, "root " + strconv.Itoa(runtime.NumCPU())}, {r2.out, "child 2"},
	} {
		if !strings.Contains(c.out, c.want+"\n") {
			t.Errorf("the Go program did not say %q", c.want)
		}
	}
}

// TestNestedRunc: runc 1.1.5, run by the root of a cgfs run container,
// starts a nested container (busybox, its own cgroup namespace) with
// memory and pids limits set through the view. runc's cgroupfs mounts
// for the nested container are answered by cgfs with views of the
// nested container's own cgroups (nesting keeps the rules): the nested
// root sees its limits, cannot raise them (EPERM), and manages its
// subtree.
func TestNestedRunc(t *testing.T) { testNested(t, "runc") }

// TestNestedCrun: the same with crun 1.8.1, on cgroup v2 (crun refuses
// a hybrid layout on a host as well: it supports v1 or v2, not both).
func TestNestedCrun(t *testing.T) {
	laneOnly(t, vmLane, len(detectLane(t).v1) == 0, "crun 1.8.1 refuses hybrid hosts (measured natively too)")
	testNested(t, "crun")
}

func testNested(t *testing.T, runtime string) {
	requireRoot(t)
	requireTool(t, runtime)
	l := detectLane(t)
	parent := runParent(t)
	bundle := publicDir(t)
	busyboxRootfsAt(t, filepath.Join(bundle, "rootfs"), containerBase)
	mem, pids, sub := "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/sub"
	if len(l.v1) > 0 {
		mem, pids, sub = "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids/sub"
	}
	script := fmt.Sprintf(`grep -c ' - fuse.cgfs ' /proc/self/mountinfo | sed 's/^/cgfs mounts /'
echo limits $(cat %[1]s) $(cat %[2]s)
(echo 1073741824 > %[1]s) 2>&1 | grep -o 'Operation not permitted' | sed 's/^/raise: /'
mkdir %[3]s && echo $$ > %[3]s/cgroup.procs && echo moved $(grep -c /sub /proc/self/cgroup)
`, mem, pids, sub)
	cmd := exec.Command(runtime, "spec")
	cmd.Dir = bundle
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s spec: %v\n%s", runtime, err, out)
	}
	var c map[string]any
	b, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	c["process"].(map[string]any)["terminal"] = false
	c["process"].(map[string]any)["args"] = []string{"sh", "-c", script}
	c["root"] = map[string]any{"path": "rootfs", "readonly": false}
	linux := c["linux"].(map[string]any)
	hasCgroupNS := false
	for _, ns := range linux["namespaces"].([]any) {
		hasCgroupNS = hasCgroupNS || ns.(map[string]any)["type"] == "cgroup"
	}
	if !hasCgroupNS { // runc spec adds it on a cgroup v2 only host
		linux["namespaces"] = append(linux["namespaces"].([]any), map[string]any{"type": "cgroup"})
	}
	linux["cgroupsPath"] = "/nested"
	linux["resources"] = map[string]any{"memory": map[string]any{"limit": 64 << 20}, "pids": map[string]any{"limit": 50}}
	// The nested root manages its cgroups: /sys/fs/cgroup read-write.
	for _, m := range c["mounts"].([]any) {
		mm := m.(map[string]any)
		if mm["destination"] == "/sys/fs/cgroup" {
			mm["options"] = []string{"nosuid", "noexec", "nodev", "relatime"}
		}
	}
	b, _ = json.MarshalIndent(c, "", " ")
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	_ = filepath.Walk(bundle, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, containerBase, containerBase) })
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c",
		"cd "+bundle+" && "+runtime+" --root "+bundle+"/state run nested 2>&1; echo runtime status $?")
	t.Logf("in the container:\n%s", r.out)
	wantSaid(t, r.out, "the nested container", "limits 67108864 50", "raise: Operation not permitted", "moved 1", "runtime status 0")
	if strings.Contains(r.out, "cgfs mounts 0") {
		t.Errorf("the nested container's /sys/fs/cgroup is not a cgfs view")
	}
}

// TestThreadedControllersKeepADomain: enabling a threaded controller
// (pids, cpu) in a cgroup that holds processes would make it a threaded
// domain and its children invalid ("domain invalid": libcgroup then
// refuses them); at a host's root it does not, and through the view it
// does not either: the processes move into the hidden leaf.
func TestThreadedControllersKeepADomain(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	laneOnly(t, vmLane, len(l.v1) == 0 && l.controllers["pids"], "needs the pids controller on cgroup v2")
	parent := runParent(t)
	script := `mkdir /sys/fs/cgroup/a
echo +pids > /sys/fs/cgroup/cgroup.subtree_control
echo root $(cat /sys/fs/cgroup/cgroup.type) child $(cat /sys/fs/cgroup/a/cgroup.type) in $(grep 0:: /proc/self/cgroup)
echo -pids > /sys/fs/cgroup/cgroup.subtree_control
echo back in $(grep 0:: /proc/self/cgroup)
`
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	wantSaid(t, r.out, "the container", "root domain child domain in 0::/.cgfs-leaf", "back in 0::/\n")
}

// TestNestedLXC: LXC 5.0.2, run by the root of a cgfs run container,
// starts a nested container (busybox, its own cgroup namespace) with
// memory and pids limits. LXC's clone3 into the cgroup falls back, and
// its cgroupfs mounts (lxc.mount.auto cgroup:rw:force: in a cgroup
// namespace LXC mounts none unless forced, leaving that to the init) are
// answered with cgfs views of the nested container's own cgroups: it
// sees its limits and cannot raise them. The host lane only: the VM's
// initramfs has no LXC.
func TestNestedLXC(t *testing.T) {
	requireRoot(t)
	requireTool(t, "lxc-start")
	l := detectLane(t)
	parent := runParent(t)
	dir := publicDir(t)
	ctr := filepath.Join(dir, "ctr")
	rootfs := filepath.Join(ctr, "rootfs")
	for _, d := range []string{ctr, filepath.Join(dir, "home")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busyboxRootfsAt(t, rootfs, containerBase)
	mem, pids, limits := "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max", "lxc.cgroup2.memory.max = 67108864\nlxc.cgroup2.pids.max = 50\n"
	if len(l.v1) > 0 {
		mem, pids = "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max"
		limits = "lxc.cgroup.memory.limit_in_bytes = 67108864\nlxc.cgroup.pids.max = 50\n"
	}
	initScript := fmt.Sprintf(`#!/bin/sh
exec > /tmp/result 2>&1
grep -c ' - fuse.cgfs ' /proc/self/mountinfo | sed 's/^/cgfs mounts /'
echo limits $(cat %[1]s) $(cat %[2]s)
(echo 1073741824 > %[1]s) 2>&1 | grep -o 'Operation not permitted' | sed 's/^/raise: /'
`, mem, pids)
	if err := os.WriteFile(filepath.Join(rootfs, "init.sh"), []byte(initScript), 0o755); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`lxc.uts.name = nested
lxc.rootfs.path = dir:%s
lxc.net.0.type = empty
lxc.init.cmd = /init.sh
lxc.mount.auto = proc:mixed sys:mixed cgroup:rw:force
`, rootfs) + limits
	if err := os.WriteFile(filepath.Join(ctr, "config"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, containerBase, containerBase) })
	script := fmt.Sprintf("export HOME=%[1]s/home; lxc-start -n ctr -P %[1]s -F -o %[1]s/lxc.log -l WARN; echo lxc status $?", dir)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	log, _ := os.ReadFile(filepath.Join(dir, "lxc.log"))
	result, _ := os.ReadFile(filepath.Join(rootfs, "tmp/result"))
	t.Logf("in the container:\n%s\nlxc log:\n%s\nthe nested container said:\n%s", r.out, log, result)
	wantSaid(t, string(result), "the nested LXC container", "limits 67108864 50", "raise: Operation not permitted")
	if strings.Contains(string(result), "cgfs mounts 0") || !strings.Contains(string(result), "cgfs mounts") {
		t.Errorf("the nested LXC container's /sys/fs/cgroup is not a cgfs view")
	}
	if !strings.Contains(r.out, "lxc status 0") {
		t.Errorf("lxc-start failed")
	}
}

// TestSystemdAsPID1: systemd 252 boots as the init of a cgfs run
// container (a root file system of the host's /usr, bound read-only in a
// private mount namespace, and a unit of the test's own as its default
// target): it takes the view for the host's cgroup file systems (statfs,
// one mount point per hierarchy), puts its service in
// system.slice, runs a scope with systemd-run whose unit goes inactive
// once its process exits (systemd learns that from inotify on
// cgroup.events, relayed), and its exit code (systemctl exit 42) comes
// out of cgfs run. The host lane only: the VM's initramfs has no
// systemd.
func TestSystemdAsPID1(t *testing.T) {
	requireRoot(t)
	const systemd = "/lib/systemd/systemd"
	_, err := os.Stat(systemd)
	laneNeeds(t, hostLane, err == nil, "no "+systemd+" (Debian's systemd package, which .ci/run installs; not in the VM's initramfs)")
	requireTool(t, "unshare")
	parent := runParent(t)
	root := publicDir(t)
	for _, d := range []string{"usr", "etc/systemd/system", "proc", "sys", "dev", "run", "tmp", "root", "var", "out"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/machine-id":                      "",
		"etc/systemd/system/cgfs-test.target": "[Unit]\nDescription=cgfs test\nRequires=cgfs-test.service\nAfter=cgfs-test.service\n",
		"etc/systemd/system/cgfs-test.service": "[Unit]\nDescription=cgfs probe\nDefaultDependencies=no\n\n" +
			"[Service]\nType=oneshot\nExecStart=/bin/sh -c '/bin/sh /probe.sh > /out/result 2>&1; systemctl exit 42'\n",
		"probe.sh": `echo pid1 $(cat /proc/1/comm)
grep '^0::' /proc/self/cgroup
systemd-run --scope --unit=cgfs-probe sleep 1
for i in $(seq 50); do [ "$(systemctl is-active cgfs-probe.scope)" != active ] && break; sleep 0.1; done
echo scope after $(systemctl is-active cgfs-probe.scope)
`,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"passwd", "group"} {
		b, err := os.ReadFile("/etc/" + f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc", f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../usr/lib/os-release", filepath.Join(root, "etc/os-release")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("cgfs-test.target", filepath.Join(root, "etc/systemd/system/default.target")); err != nil {
		t.Fatal(err)
	}
	_ = filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, containerBase, containerBase) })
	// /usr bound in a mount namespace of the run's own: nothing is
	// mounted where the host sees it.
	cmd := exec.Command("unshare", "-m", "sh", "-c", fmt.Sprintf(
		"mount --make-rprivate / && mount --bind -o ro /usr %s/usr && exec %s run --parent %s --rootfs %s -- %s",
		root, cgfsBin, parent, root, systemd))
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	result, _ := os.ReadFile(filepath.Join(root, "out/result"))
	t.Logf("cgfs run (exit %d):\n%s\nthe probe said:\n%s", code, out, result)
	if code != 42 {
		t.Errorf("cgfs run exited %d, want systemd's 42 (systemctl exit 42)", code)
	}
	wantSaid(t, string(result), "the probe under systemd", "pid1 systemd", "0::/system.slice/cgfs-test.service", "scope after inactive")
}

// wantSaid fails the test for each of wants that out, what who printed,
// does not contain.
func wantSaid(t *testing.T, out, who string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("%s did not say %q", who, want)
		}
	}
}

// TestNestedMountNeedsPrivilege: cgfs makes a nested view's mount as host
// root, so it makes one only for a caller the kernel would let mount: an
// unprivileged process of the container (uid 1000, no capabilities) gets
// EPERM and no mount, while the container's root gets its view.
func TestNestedMountNeedsPrivilege(t *testing.T) {
	requireRoot(t)
	requireTool(t, "busybox")
	parent := runParent(t)
	dir := publicDir(t)
	script := fmt.Sprintf(`env %[1]s=1 %[2]s as 1000 busybox mount -t cgroup2 none %[3]s; echo unprivileged $?
echo mounts $(grep -c " %[3]s " /proc/self/mountinfo)
busybox mount -t cgroup2 none %[3]s; echo root $?
awk '$5 == "%[3]s" { for (i = 7; $i != "-"; i++) {}; print "fstype", $(i+1) }' /proc/self/mountinfo
`, helperEnv, helperBin, dir)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	// busybox mount says EPERM as "permission denied (are you root?)".
	wantSaid(t, r.out, "the container", "permission denied", "unprivileged 1\n", "mounts 0\n", "root 0\n", "fstype fuse.cgfs\n")
}

// TestNestedMountIsRootedAtTheCgroupNamespace: the kernel roots a
// cgroupfs mount at the mounter's cgroup namespace root, not at its
// cgroup (systemd-nspawn mounts from its supervisor cgroup and expects
// the whole tree), and so does cgfs: a process cgfs keeps in a hidden
// leaf, or one in a sub-cgroup, mounts the container's whole view (no
// leaf in it); one that took a cgroup namespace of its own in the
// sub-cgroup mounts that cgroup; one whose namespace is rooted in a
// hidden leaf gets EPERM, not a view of the leaf (where it could make
// cgroups the leaf's own view takes for empty).
func TestNestedMountIsRootedAtTheCgroupNamespace(t *testing.T) {
	requireRoot(t)
	requireTool(t, "busybox")
	l := detectLane(t)
	ctrl := domainController(t, l)
	parent := runParent(t)
	v2, _, _ := lanePaths(t)
	dir := publicDir(t)
	for _, m := range []string{"leaf", "sub", "own", "ownleaf"} {
		if err := os.Mkdir(filepath.Join(dir, m), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	helper := "env " + helperEnv + "=1 " + helperBin
	scripts := map[string]string{
		// In the sub-cgroup, then in a cgroup namespace rooted there.
		"sub.sh": fmt.Sprintf(`echo $$ > %[1]s/sub/cgroup.procs
busybox mount -t cgroup2 none %[2]s/sub; echo sub mount $?
ls %[2]s/sub | grep -c '^sub$' | sed 's/^/sub sees: /'
%[3]s cgroupns sh %[2]s/own.sh
`, v2, dir, helper),
		"own.sh": fmt.Sprintf(`busybox mount -t cgroup2 none %[1]s/own; echo own mount $?
grep -c -x $$ %[1]s/own/cgroup.procs | sed 's/^/own holds itself: /'
ls %[1]s/own | grep -c '^sub$' | sed 's/^/own sees sub: /'
`, dir),
		"ownleaf.sh": fmt.Sprintf("busybox mount -t cgroup2 none %s/ownleaf; echo ownleaf mount $?\n", dir),
	}
	for name, text := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf(`echo +%[1]s > %[2]s/cgroup.subtree_control
grep 0:: /proc/self/cgroup
mkdir %[2]s/sub
busybox mount -t cgroup2 none %[3]s/leaf; echo leaf mount $?
ls -a %[3]s/leaf | grep -c -e '^sub$' -e '^.cgfs-leaf$' | sed 's/^/leaf sees: /'
%[4]s cgroupns sh %[3]s/ownleaf.sh
sh %[3]s/sub.sh
`, ctrl, v2, dir, helper)
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("in the container:\n%s", r.out)
	wantSaid(t, r.out, "the container", "0::/.cgfs-leaf\n", "leaf mount 0\n", "leaf sees: 1\n",
		"ownleaf mount 1\n", "sub mount 0\n", "sub sees: 1\n", "own mount 0\n", "own holds itself: 1\n", "own sees sub: 0\n")
}

// TestSendfileReadsWhatReadReads: busybox cat copies with sendfile(2),
// which since Linux 6.5 splices a FUSE file opened with FOPEN_DIRECT_IO
// from the page cache, up to the inode's size: cgfs's computed files
// (task lists) showed size 0 and read empty that way, in every busybox
// container (a Kubernetes pod's `cat cgroup.procs` printed nothing).
// Each file must read the same by sendfile as by read(2), also right
// after the file grew (no size kept from the read before), and stat
// must not make a reader stop short.
func TestSendfileReadsWhatReadReads(t *testing.T) {
	requireRoot(t)
	requireTool(t, "busybox")
	parent := runParent(t)
	script := laneScript + `
mkdir $P/sub $V2/sub
for i in 1 2 3; do sleep 100 & pids="$pids $!"; echo $! > $P/sub/cgroup.procs; echo $! > $V2/sub/cgroup.procs; done
for f in $P/sub/cgroup.procs $P/sub/tasks $V2/sub/cgroup.procs $V2/cgroup.controllers $V2/sub/cgroup.events $P/sub/pids.max; do
  [ -e $f ] || continue
  a=$(busybox cat $f | tr '\n' ' '); b=$(while read l; do printf '%s ' "$l"; done < $f)
  if [ "$a" = "$b" ] && [ -n "$a" ]; then echo "same $f"; else echo "DIFFER $f: sendfile [$a] read [$b]"; fi
done
n1=$(busybox cat $P/sub/cgroup.procs | wc -l)
for i in 1 2; do sleep 100 & pids="$pids $!"; echo $! > $P/sub/cgroup.procs; done
n2=$(busybox cat $P/sub/cgroup.procs | wc -l)
echo "grew $n1 $n2"
kill $pids; wait
rmdir $P/sub $V2/sub
echo done`
	r := cgfsRun(t, nil, "--parent", parent, "--", "sh", "-c", script)
	t.Logf("cgfs run:\n%s", r.out)
	if r.code != 0 || !strings.Contains(r.out, "\ndone") && !strings.HasPrefix(r.out, "done") {
		t.Fatalf("exit %d", r.code)
	}
	if strings.Contains(r.out, "DIFFER") || strings.Count(r.out, "same ") < 4 {
		t.Errorf("sendfile and read(2) disagree, or too few files compared")
	}
	var n1, n2 int
	if _, err := fmt.Sscanf(r.out[strings.Index(r.out, "grew "):], "grew %d %d", &n1, &n2); err != nil || n2 != n1+2 {
		t.Errorf("the task list by sendfile grew from %d to %d lines, want 2 more (%v)", n1, n2, err)
	}
}
