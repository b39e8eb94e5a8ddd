package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
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
// root delegated to uid 1000 stays uid 1000's. With a pid namespace of
// its own too (unshare -UrmCp) its view would be rooted over the
// container's tasks outside that namespace: EPERM. d1 and d2 are empty
// directories for the mounts; on a hybrid host the v1 freezer is tried
// as well.
func nestedAttack(d1, d2 string) string {
	return fmt.Sprintf(`export H="env %[1]s=1 %[2]s"
`+laneScript+`
sleep 1000 & export victim=$!
mkdir $V2/jail $V2/sub && chown -R 1000:1000 $V2/sub && echo prepared
$H as 1000 $H unshare m sh -c 'busybox mount -t cgroup2 none %[3]s; echo userns-only $?'
$H as 1000 $H unshare mC sh -c '
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
$H as 1000 $H unshare mCp sh -c 'busybox mount -t cgroup2 none %[3]s; echo pidns $?'
if [ -d /sys/fs/cgroup/freezer ]; then
mkdir /sys/fs/cgroup/freezer/jail
$H as 1000 $H unshare mC sh -c '
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
		"cgroupns 0\n", "fstype fuse.cgfs\n", "pidns 1\n",
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
$H as 1000 $H unshare mC sh -c 'busybox mount -t cgroup2 none `+d1+` && $H write `+d1+`/jail/cgroup.procs $victim; $H write `+d1+`/jail/cgroup.freeze 1; $H mkdir `+d1+`/jail/mine'
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

// startExec starts `cgfs exec NAME -- sh -c SCRIPT` and returns its
// output, line by line, and its input, which the script may wait on; it
// is ended when the test ends.
func startExec(t *testing.T, env []string, name, script string) (*bufio.Scanner, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(cgfsBin, "exec", name, "--", "sh", "-c", script)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, out := startPiped(t, cmd)
	stopAtEnd(t, cmd, 0)
	t.Cleanup(func() { in.Close() }) // before the wait: cleanups run last first
	return bufio.NewScanner(out), in
}

// expectLine reads lines of sc until one starts with prefix, and returns
// it; the lines before it are logged.
func expectLine(t *testing.T, sc *bufio.Scanner, prefix string) string {
	t.Helper()
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			return sc.Text()
		}
		t.Logf("| %s", sc.Text())
	}
	t.Fatalf("the script ended without a line %q (%v)", prefix, sc.Err())
	return ""
}

// TestOneContainerAtItsBoundsLeavesOthersServed: every resource the
// daemon spends for nested views is charged to the container that mounts
// them. One container's processes that each mount cgroupfs and hold files
// open get ENFILE once the container holds its bound (4,096) across them
// all (each nested owner had a budget of its own: five held 5,000); its
// 257th nested mount is ENOSPC (the bound of 256 was the daemon's: the
// next container's first mount failed); another container meanwhile reads
// its view and mounts and reads nested views as before.
func TestOneContainerAtItsBoundsLeavesOthersServed(t *testing.T) {
	requireRoot(t)
	requireTool(t, "busybox")
	requireTool(t, "unshare")
	// The audit's numbers on the host; the VM lane (tens of times slower)
	// makes the same case with bounds of a tenth.
	files, nested, per := translate.DefaultOpenFiles, 256, 1000 // serve.DefaultNestedViews
	var flags []string
	if laneSlowdown() > 1 {
		files, nested, per = 400, 25, 90
		flags = []string{"--max-open-files", strconv.Itoa(files), "--max-nested-views", strconv.Itoa(nested)}
	}
	parent := runParent(t)
	d := startStormDaemon(t, false, flags...)
	startRun(t, d.env, "--parent", parent, "--name", "hog")
	startRun(t, d.env, "--parent", parent, "--name", "other")
	waitExec(t, d.env, "hog", "echo up", "up")
	waitExec(t, d.env, "other", "echo up", "up")
	tmp := publicDir(t)
	if err := os.Chown(tmp, 100000, 100000); err != nil { // cgfs run's container root
		t.Fatal(err)
	}
	h := "env " + helperEnv + "=1 " + helperBin

	// Open files, across five nested owners and the container's own view.
	sc, in := startExec(t, d.env, "hog", fmt.Sprintf(`H="%[1]s"; T=%[2]s
`+laneScript+`
for i in 1 2 3 4 5; do
	mkdir $T/f$i; mkfifo $T/r$i
	unshare -m sh -c "busybox mount -t cgroup2 none $T/f$i && exec $H holdopen $T/f$i/cgroup.events %[3]d" > $T/r$i &
	pids="$pids $!"
	read r < $T/r$i; echo holder $i $r
done
echo own view $($H read $V2/cgroup.procs | head -c6)
echo holding; read go
kill $pids; wait; echo released
`, h, tmp, per))
	for i := 1; i <= 4; i++ {
		if got := expectLine(t, sc, "holder "); got != fmt.Sprintf("holder %d OK %d", i, per) {
			t.Errorf("%s, want holder %d OK %d", got, i, per)
		}
	}
	// The container's own processes hold a few of its files too (Go's
	// runtime reads its CPU limit).
	if got := expectLine(t, sc, "holder "); !strings.HasPrefix(got, "holder 5 ENFILE ") {
		t.Errorf("%s: want the fifth holder refused ENFILE past the container's %d", got, files)
	}
	if got := expectLine(t, sc, "own view"); got != "own view ENFILE" {
		t.Errorf("%s: want the container's own view at its bound too", got)
	}
	expectLine(t, sc, "holding")
	if held := metricValue(d.scrape(t), "cgfs_container_held", `container="hog"`, `resource="open_files"`); held != float64(files) {
		t.Errorf("cgfs_container_held{container=hog,resource=open_files} = %v, want %d", held, files)
	}
	other := fmt.Sprintf(`H="%[1]s"; T=%[2]s
`+laneScript+`
echo read $($H read $V2/cgroup.procs | head -c2)
mkdir -p $T/o && mkfifo $T/ro
unshare -m sh -c "busybox mount -t cgroup2 none $T/o && exec $H holdopen $T/o/cgroup.events %[3]d" > $T/ro &
read r < $T/ro; echo $r; kill $!
`, h, tmp, per/2)
	out, err := cgfsExec(t, d.env, "other", other)
	t.Logf("the other container:\n%s", out)
	wantSaid(t, out, fmt.Sprintf("the other container (%v)", err), "read OK\n", fmt.Sprintf("OK %d\n", per/2))
	fmt.Fprintln(in, "go")
	expectLine(t, sc, "released")
	// The holders' mount namespaces are gone: their views go with them.
	waitFor(t, "the holders' nested views to go", 30*time.Second*laneSlowdown(), func() bool {
		return metricValue(d.scrape(t), "cgfs_container_held", `container="hog"`, `resource="nested_views"`) == 0
	})

	// Nested views: one past the bound, held with the others.
	sc, in = startExec(t, d.env, "hog", fmt.Sprintf(`export T=%[1]s
unshare -m sh -c 'n=0; for i in $(seq %[2]d); do mkdir -p $T/n$i; busybox mount -t cgroup2 none $T/n$i 2>/dev/null && n=$((n+1)) || echo refused $i $(busybox mount -t cgroup2 none $T/n$i 2>&1 | grep -o "No space left on device"); done; echo mounted $n; read go'
`, tmp, nested+1))
	if got := expectLine(t, sc, "refused"); got != fmt.Sprintf("refused %d No space left on device", nested+1) {
		t.Errorf("%s: want nested mount %d ENOSPC", got, nested+1)
	}
	if got := expectLine(t, sc, "mounted"); got != fmt.Sprintf("mounted %d", nested) {
		t.Errorf("%s, want %d", got, nested)
	}
	out, err = cgfsExec(t, d.env, "other", fmt.Sprintf(`mkdir -p %[1]s/o2 && unshare -m sh -c "busybox mount -t cgroup2 none %[1]s/o2 && echo nested mount OK"`, tmp))
	wantSaid(t, out, fmt.Sprintf("the other container (%v)", err), "nested mount OK\n")
	fmt.Fprintln(in, "go")
}

// TestMetricsAreOutOfContainersReach: a cgfs run container has a network
// namespace of its own, where nothing of the host's listens: the
// daemon's metrics (which name every container, its limits and its
// tasks) are out of its reach (--net host keeps the host's network, and
// with it the reach). 2,000 idle connections to the metrics address
// hold at most 32 of the daemon's descriptors, its containers are served
// meanwhile, and a scrape is answered once they are gone.
func TestMetricsAreOutOfContainersReach(t *testing.T) {
	requireRoot(t)
	requireTool(t, "busybox")
	parent := runParent(t)
	d := startStormDaemon(t, false)
	addr := d.metricsAddr()
	host, port, _ := net.SplitHostPort(addr)
	get := fmt.Sprintf(`printf 'GET /metrics HTTP/1.0\r\n\r\n' | busybox nc %s %s 2>&1 | head -1`, host, port)
	r := cgfsRun(t, d.env, "--parent", parent, "--", "sh", "-c", get)
	wantSaid(t, r.out, "a container of its own network", "Connection refused")
	r = cgfsRun(t, d.env, "--parent", parent, "--net", "host", "--", "sh", "-c", get)
	wantSaid(t, r.out, "a container of the host's network", " 200 OK")

	startRun(t, d.env, "--parent", parent, "--name", "served")
	waitExec(t, d.env, "served", "echo up", "up")
	// What an exec holds after (a helper in its pid namespace) is in the
	// baseline.
	waitExec(t, d.env, "served", laneScript+"mkdir $V2/before && echo served", "served")
	fds := func() int {
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.pid()))
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	base := fds()
	var conns []net.Conn
	for range 2000 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// The most it holds while it goes through them: sampled.
	most := 0
	for range 20 {
		most = max(most, fds())
		time.Sleep(50 * time.Millisecond * laneSlowdown())
	}
	if most > base+32+4 {
		t.Errorf("the daemon holds %d descriptors with 2,000 idle metrics connections, %d before: more than the 32 connections it may hold", most, base)
	}
	out, err := cgfsExec(t, d.env, "served", laneScript+"mkdir $V2/during && echo served")
	wantSaid(t, out, fmt.Sprintf("a container during the flood (%v)", err), "served\n")
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitFor(t, "a scrape after the flood", 20*time.Second, func() bool {
		code, _, err := getFrom(addr, "/metrics")
		return err == nil && code == 200
	})
}

// TestOCIHookStaysInsideTheRootfs: an image whose /sys is a symbolic
// link to a host path (absolute: the hook runs before pivot_root, in the
// container's copy of the host's tree) gets its view inside its own root
// file system, where the link leads once the root is the container's,
// never at the host path, also in a rootful container with
// rootfsPropagation shared (where the mount at the host path reached the
// host's namespace). Where the link leads
// nowhere inside, the hook fails, saying so, and runc with it.
func TestOCIHookStaysInsideTheRootfs(t *testing.T) {
	requireRoot(t)
	requireTool(t, "runc")
	l := detectLane(t)
	env := startDaemon(t)
	bundle := publicDir(t)
	rootfs := filepath.Join(bundle, "rootfs")
	busyboxRootfsAt(t, rootfs, containerBase)
	escape := publicDir(t) // on the host, where the link points
	if err := os.MkdirAll(filepath.Join(escape, "fs/cgroup"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A shared mount there, as systemd makes every mount of a host: what
	// is mounted below it in the container's copy of the host's tree
	// reaches the host's mount namespace.
	if err := unix.Mount(escape, escape, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(escape, unix.MNT_DETACH) })
	if err := unix.Mount("", escape, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(rootfs, "sys")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(escape, filepath.Join(rootfs, "sys")); err != nil {
		t.Fatal(err)
	}
	cgroups := fmt.Sprintf("/cgfs-test-runc-escape-%d", os.Getpid())
	t.Cleanup(func() { checkNothingLeft(t, strings.TrimPrefix(cgroups, "/")) })
	v2 := "/sys/fs/cgroup"
	if len(l.v1) > 0 {
		v2 = "/sys/fs/cgroup/unified"
	}
	runcConfig(t, bundle, cgroups, "grep fuse.cgfs /proc/self/mountinfo | cut -d' ' -f5; mkdir "+v2+"/sub && echo made sub", env)
	// The image brings its own /sys: runc mounts no sysfs (it refuses
	// one onto a link) and no cgroupfs there.
	p := filepath.Join(bundle, "config.json")
	var c map[string]any
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	var mounts []any
	for _, m := range c["mounts"].([]any) {
		if d := m.(map[string]any)["destination"].(string); d != "/sys" && d != "/sys/fs/cgroup" {
			mounts = append(mounts, m)
		}
	}
	c["mounts"] = mounts
	linux := c["linux"].(map[string]any)
	linux["rootfsPropagation"] = "shared"
	// Without a user namespace of its own, as rootful runc runs most
	// containers: its mount namespace is no less privileged than the
	// host's, so a copy of a shared mount there is a peer of the host's
	// (one made in a new user namespace is a slave of it).
	var nss []any
	for _, ns := range linux["namespaces"].([]any) {
		if ns.(map[string]any)["type"] != "user" {
			nss = append(nss, ns)
		}
	}
	linux["namespaces"] = nss
	delete(linux, "uidMappings")
	delete(linux, "gidMappings")
	b, _ = json.Marshal(c)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(name string) string {
		state := t.TempDir()
		out, err := exec.Command("runc", "--root", state, "run", "-b", bundle, name).CombinedOutput()
		_ = exec.Command("runc", "--root", state, "delete", "-f", name).Run()
		t.Logf("runc %s (%v):\n%s", name, err, out)
		if mountinfo := readFile(t, "/proc/self/mountinfo"); strings.Contains(mountinfo, escape+"/fs/cgroup") {
			t.Errorf("the host's mount table has a mount at the host path the image's /sys points to:\n%s", mountinfo)
			_ = unix.Unmount(filepath.Join(escape, "fs/cgroup"), unix.MNT_DETACH)
		}
		if entries, _ := os.ReadDir(filepath.Join(escape, "fs/cgroup")); len(entries) != 0 {
			t.Errorf("the host's %s/fs/cgroup shows %d entries: the view was put there", escape, len(entries))
		}
		waitDropped(t, env, name)
		return string(out)
	}
	// Nothing at the link's target inside the root file system.
	out := run(fmt.Sprintf("cgfs-test-runc-escape-%d-a", os.Getpid()))
	wantSaid(t, out, "runc", "putting the view at /sys/fs/cgroup inside "+rootfs, "no such file or directory")
	if strings.Contains(out, "made sub") {
		t.Error("the container ran without its view")
	}
	// The image has that path: the view is put there, and the container
	// finds it at /sys/fs/cgroup through its link.
	if err := os.MkdirAll(filepath.Join(rootfs, escape, "fs/cgroup"), 0o755); err != nil {
		t.Fatal(err)
	}
	out = run(fmt.Sprintf("cgfs-test-runc-escape-%d-b", os.Getpid()))
	wantSaid(t, out, "the container", escape+"/fs/cgroup\n", "made sub\n")
}

// TestRunRootfsHasADevOfItsOwn: a cgfs run --rootfs container gets a
// /dev of its own, as runc and LXC give: the devices a program needs,
// bound from the host's, and a devpts, shm and mqueue of its own. It
// neither reads nor plants files in the host's /dev/shm, nor fills it
// (its own holds 64 MiB, charged to it), nor sees the host's terminals.
func TestRunRootfsHasADevOfItsOwn(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	rootfs := busyboxRootfs(t, containerBase)
	secret := fmt.Sprintf("/dev/shm/cgfs-test-secret-%d", os.Getpid())
	planted := fmt.Sprintf("/dev/shm/cgfs-test-planted-%d", os.Getpid())
	fill := fmt.Sprintf("/dev/shm/cgfs-test-fill-%d", os.Getpid())
	if err := os.WriteFile(secret, []byte("host secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(secret); os.Remove(planted); os.Remove(fill) })
	var host unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &host); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`cat %[1]s 2>&1 | grep -o 'No such file'; echo read $?
echo x > %[2]s && echo planted
dd if=/dev/zero of=%[3]s bs=1M count=70 2>&1 | grep -o 'No space left on device'
echo devices $(ls /dev | tr '\n' ' ')
echo null $(echo x > /dev/null && echo ok) zero $(head -c 3 /dev/zero | wc -c) urandom $(head -c 4 /dev/urandom | wc -c) full $(echo x 2>&1 > /dev/full | grep -o 'No space')
echo pts $(ls /dev/pts | tr '\n' ' ') dev $(stat -c %%d /dev/pts)
grep -E ' /dev(/pts|/shm|/mqueue)? ' /proc/self/mountinfo | cut -d' ' -f5,9 | sort | tr '\n' ';'; echo
`, secret, planted, fill)
	r := cgfsRun(t, nil, "--parent", parent, "--rootfs", rootfs, "--", "sh", "-c", script)
	t.Logf("in the container (exit %d):\n%s", r.code, r.out)
	hostDev := unix.Stat_t{}
	_ = unix.Stat("/dev/pts", &hostDev)
	wantSaid(t, r.out, "the container", "No such file\n", "planted\n", "No space left on device\n",
		"devices core fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero\n",
		"null ok zero 3 urandom 4 full No space\n", "pts ptmx dev ",
		"/dev tmpfs;/dev/mqueue mqueue;/dev/pts devpts;/dev/shm tmpfs;")
	if strings.Contains(r.out, fmt.Sprintf("dev %d\n", hostDev.Dev)) {
		t.Errorf("the container's /dev/pts is the host's (device %d)", hostDev.Dev)
	}
	if _, err := os.Stat(planted); err == nil {
		t.Errorf("the container planted %s in the host's /dev/shm", planted)
	}
	var after unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &after); err != nil {
		t.Fatal(err)
	}
	if used := int64(host.Bfree-after.Bfree) * host.Bsize; used > 8<<20 {
		t.Errorf("the host's /dev/shm has %d MiB less free after the container", used>>20)
	}
	// Another container has its own, empty /dev/shm.
	r = cgfsRun(t, nil, "--parent", parent, "--rootfs", rootfs, "--", "sh", "-c", "echo shm $(ls /dev/shm | wc -l)")
	wantSaid(t, r.out, "a second container", "shm 0\n")
}

// TestExecNeverRunsOutsideTheContainer: what cgfs exec starts in a
// container is in the container's cgroups before it is the container's
// in any other way. The server's write that puts it there is held: by
// then no process of the container's user namespace (which its root may
// ptrace, and so make fork outside every limit) may be outside the
// container's cgroup. (The joined process used to be made in the
// caller's cgroups and put into the container's after.)
func TestExecNeverRunsOutsideTheContainer(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	parent := runParent(t)
	run := startRun(t, nil, "--parent", parent, "--name", "execme")
	waitExec(t, nil, "execme", "echo up", "up")
	init := initOf(t, run)
	userns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", init))
	if err != nil {
		t.Fatal(err)
	}
	v2 := "/" + parent + "/execme"
	hold := holdFileWrite(t, run.Process.Pid, filepath.Join(l.cgroup2, parent, "execme", "cgroup.procs"))
	cmd := exec.Command(cgfsBin, "exec", "execme", "--", "sh", "-c", "grep 0:: /proc/self/cgroup")
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hold.Held(t, 20*time.Second)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid)); err != nil || ns != userns {
			continue
		}
		if cg := hostCgroupOf(t, pid); cg != v2 && !strings.HasPrefix(cg, v2+"/") {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("process %d (%q) is in the container's user namespace and in cgroup %s, outside the container's %s",
				pid, strings.ReplaceAll(string(cmdline), "\x00", " "), cg, v2)
		}
	}
	hold.Release(t)
	if err := cmd.Wait(); err != nil {
		t.Errorf("cgfs exec: %v\n%s", err, out.String())
	}
	if got := out.String(); got != "0::/\n" {
		t.Errorf("the command ran in %q, want 0::/", got)
	}
	// Once the command runs, nsenter (a host process that waits for it)
	// is back in cgfs exec's cgroups: the container's hold only its own.
	pidns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		t.Fatal(err)
	}
	sc, in := startExec(t, nil, "execme", "echo ready; read x")
	expectLine(t, sc, "ready")
	var strangers []string
	ok := poll(10*time.Second, 10*time.Millisecond, func() bool {
		strangers = nil
		for _, f := range strings.Fields(readFile(t, filepath.Join(l.cgroup2, parent, "execme", "cgroup.procs"))) {
			if ns, err := os.Readlink("/proc/" + f + "/ns/pid"); err == nil && ns != pidns {
				cmdline, _ := os.ReadFile("/proc/" + f + "/cmdline")
				strangers = append(strangers, f+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
			}
		}
		return len(strangers) == 0
	})
	if !ok {
		t.Errorf("the container's cgroup holds processes of another pid namespace while cgfs exec's command runs: %q", strangers)
	}
	in.Close()
}
