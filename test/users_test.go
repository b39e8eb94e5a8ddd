package test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Unprivileged host users and their containers, through the daemon's
// user socket: real users the tests make (useradd, or /etc/passwd in the
// VM lane), with subordinate id ranges of their own, running cgfs as
// users do.

// testUser is a host user a test made.
type testUser struct {
	name     string
	uid, gid int
	socket   string // the daemon's user socket it asks
	sub      int    // the first of its 65536 subordinate uids and gids
}

var userSeq atomic.Int32

// newTestUser makes host user cgfstestN with subordinate ids from
// 400000+N*65536 (65,536 of them), and removes it when the test ends.
func newTestUser(t testing.TB) *testUser {
	t.Helper()
	requireTool(t, "newuidmap")
	requireTool(t, "newgidmap")
	n := int(userSeq.Add(1))
	name := fmt.Sprintf("cgfstest%d%d", os.Getpid()%1000, n)
	if _, err := exec.LookPath("useradd"); err == nil {
		out, err := exec.Command("useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh",
			"-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd %s: %v\n%s", name, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("userdel", "-f", name).CombinedOutput(); err != nil {
				t.Errorf("userdel %s: %v\n%s", name, err, out)
			}
		})
	} else {
		// The VM lane's busybox userland: the files themselves.
		id := 2000 + os.Getpid()%1000*10 + n
		appendLine(t, "/etc/passwd", fmt.Sprintf("%s:x:%d:%d::/nonexistent:/bin/sh", name, id, id))
		appendLine(t, "/etc/group", fmt.Sprintf("%s:x:%d:", name, id))
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	tu := &testUser{name: name}
	tu.uid, _ = strconv.Atoi(u.Uid)
	tu.gid, _ = strconv.Atoi(u.Gid)
	tu.sub = 400000 + n*65536
	grantSubIDs(t, name, tu.sub, 65536)
	return tu
}

// appendLine adds line to file for the test.
func appendLine(t testing.TB, file, line string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeLine(t, file, line) })
}

// command is cmd args as the user, with the environment a login gives
// it and the daemon's user socket.
func (u *testUser) command(name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Dir = "/"
	c.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/nonexistent", "USER=" + u.name,
		"LOGNAME=" + u.name, "CGFS_USER_SOCKET=" + u.socket}
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}}
	return c
}

// cgfs runs `cgfs ARGS` as the user to its end.
func (u *testUser) cgfs(t *testing.T, args ...string) runOut {
	t.Helper()
	c := u.command(cgfsBin, args...)
	out, err := c.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cgfs %v as %s: %v", args, u.name, err)
	}
	return runOut{string(out), code}
}

// startUserRun starts `cgfs run --name NAME ARGS -- sh -c ...` as the
// user in the background: a command that waits until SIGTERM (forwarded
// to it) and exits 42 then; it is ended when the test ends.
func (u *testUser) startRun(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	all := append([]string{"run", "--name", name}, args...)
	all = append(all, "--", "sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done")
	c := u.command(cgfsBin, all...)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, c, syscall.SIGTERM)
	waitFor(t, "the user's container "+name, 30*time.Second*laneSlowdown(), func() bool {
		return u.cgfs(t, "exec", name, "--", "true").code == 0
	})
	return c
}

// userDaemon is a daemon serving users at a user socket of the test's
// own, with policy (a root-owned file) and the users' cgroups below a
// parent of the test's own, which is checked gone at the end.
func userDaemon(t *testing.T, policy string, users ...*testUser) (*stormDaemon, string) {
	t.Helper()
	dir := publicDir(t)
	pf := filepath.Join(dir, "users.conf")
	if err := os.WriteFile(pf, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	parent := runParent(t)
	sock := filepath.Join(dir, "user.sock")
	d := startStormDaemon(t, false, "--user-socket", sock, "--user-policy", pf, "--user-parent", parent)
	for _, u := range users {
		u.socket = sock
	}
	return d, parent
}

// userCgroup is host hierarchy root's cgroup of user u's container name
// ("" for the user's parent).
func userCgroup(root, parent string, u *testUser, name string) string {
	return filepath.Join(root, parent, fmt.Sprintf("user-%d", u.uid), name)
}

// TestUserRunEndToEnd: an ordinary user's cgfs run, through the daemon,
// on this host's layout: the container's limits (asked for, within the
// admin's policy) and the policy's on the user's parent are in force on
// the host and raisable neither from inside nor by the user; inside, the
// container's root makes cgroups, limits them, moves itself, freezes and
// kills its children; cgfs run exits with the command's status; nothing
// is left after.
func TestUserRunEndToEnd(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	a := newTestUser(t)
	_, parent := userDaemon(t, "* memory=512M pids=100 containers=2\n", a)
	script := strings.Replace(endToEndScript, "exit 7", "id -u\nexit 7", 1)
	r := a.cgfs(t, "run", "--name", "demo", "--memory", "64M", "--pids", "20", "--", "sh", "-c", script)
	t.Logf("cgfs run as %s (exit %d):\n%s", a.name, r.code, r.out)
	if r.code != 7 {
		t.Errorf("cgfs run as a user exited %d, want the command's 7", r.code)
	}
	wantSaid(t, r.out, "the user's container", "pids.max 20 memory 67108864\n", " after 40 forks\n", "moved 0::/kids\n",
		"frozen\n", "killed 137\n", "removed\n", "\n0\n")
	for _, line := range strings.Split(r.out, "\n") {
		if f := strings.Fields(line); len(f) == 5 && f[0] == "tasks" {
			if n, _ := strconv.Atoi(f[1]); n > 20 || n < 10 {
				t.Errorf("%d tasks after 40 forks with pids.max 20", n)
			}
		}
	}
	if strings.Contains(r.out, "RAISED") {
		t.Error("the container's root raised its pids.max")
	}
	// While one runs: the limits on the host, and the user's own reach.
	a.startRun(t, "web", "--memory", "64M")
	pids, mem := filepath.Join(l.cgroup2, parent), filepath.Join(l.cgroup2, parent)
	if p, ok := l.v1["pids"]; ok {
		pids, mem = filepath.Join(p, parent), filepath.Join(l.v1["memory"], parent)
	}
	memFile := "memory.max"
	if _, ok := l.v1["memory"]; ok {
		memFile = "memory.limit_in_bytes"
	}
	userDir := fmt.Sprintf("user-%d", a.uid)
	for _, c := range []struct{ file, want string }{
		{filepath.Join(pids, userDir, "pids.max"), "100"},
		{filepath.Join(mem, userDir, memFile), "536870912"},
		{filepath.Join(mem, userDir, "web", memFile), "67108864"},
	} {
		if got := strings.TrimSpace(readFile(t, c.file)); got != c.want {
			t.Errorf("%s = %s, want %s", c.file, got, c.want)
		}
	}
	// The user cannot write its cgroups on the host, and asks for more
	// than its policy in vain.
	r = a.cgfs(t, "update", "web", "--memory", "4G")
	if r.code != 0 {
		t.Errorf("cgfs update: %d %s", r.code, r.out)
	}
	if got := strings.TrimSpace(readFile(t, filepath.Join(mem, userDir, "web", memFile))); got != "536870912" {
		t.Errorf("after asking 4G the container's limit is %s, want the policy's 536870912", got)
	}
	out, _ := a.command("sh", "-c", "echo max > "+filepath.Join(mem, userDir, memFile)).CombinedOutput()
	if !strings.Contains(string(out), "Permission denied") {
		t.Errorf("the user wrote its parent's memory limit on the host: %q", out)
	}
}

// TestUsersAreKeptApart: user B sees none of user A's containers and
// acts on none of them by any operation; the daemon refuses a process of
// another user's, host root's, or one that died after its pidfd was
// opened, and the kernel refuses B A's namespaces.
func TestUsersAreKeptApart(t *testing.T) {
	requireRoot(t)
	a, b := newTestUser(t), newTestUser(t)
	d, parent := userDaemon(t, "* containers=4\n", a, b)
	run := a.startRun(t, "web")
	init := strconv.Itoa(initOf(t, run))
	b.startRun(t, "mine")
	if r := b.cgfs(t, "list"); strings.Contains(r.out, "web") {
		t.Errorf("user B lists A's containers: %q", r.out)
	}
	for _, op := range [][]string{{"exec", "web", "--", "true"}, {"freeze", "web"}, {"kill", "web"}, {"stop", "web"},
		{"update", "web", "--memory", "1M"}} {
		r := b.cgfs(t, op...)
		if r.code == 0 || !strings.Contains(r.out, "no container web of yours") {
			t.Errorf("cgfs %v as B: exit %d %q, want refused (no container web of yours)", op, r.code, r.out)
		}
	}
	helper := func(u *testUser, req string, specs ...string) string {
		c := u.command(helperBin, append([]string{"askuser", u.socket, req}, specs...)...)
		c.Env = append(c.Env, helperEnv+"=1")
		out, _ := c.CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	// The kernel lets B open none of A's init's namespaces.
	if got := helper(b, `{"op":"list"}`, "open:/proc/"+init+"/ns/user"); got != "open: EACCES" {
		t.Errorf("B opening A's init's user namespace: %q, want EACCES", got)
	}
	// B's own container, to prove with.
	binit := strings.Fields(b.cgfs(t, "list").out)[1]
	// What B's attacks aim at, on the host: A's container.
	aDir := filepath.Join(detectLane(t).cgroup2, parent, fmt.Sprintf("user-%d", a.uid), "web")
	before := snapshot(t, aDir)
	delete(before.files, "cgroup.procs") // its shell's loop comes and goes
	bns := []string{"open:/proc/" + binit + "/ns/user", "open:/proc/" + binit + "/ns/pid"}
	_ = b.cgfs(t, "run", "--name", "spare", "--", "true") // its name taken and freed again
	if r := b.cgfs(t, "list"); strings.Contains(r.out, "spare") {
		t.Errorf("a finished container is still listed: %q", r.out)
	}
	// A container of B's made by hand: create, then adopt with proofs
	// that do not belong together.
	if got := helper(b, `{"op":"create","name":"crafted"}`); got != "OK" {
		t.Fatalf("create: %s", got)
	}
	for _, c := range []struct {
		what  string
		specs []string
		want  string
	}{
		{"A's init with B's namespaces", append([]string{"pidfd:" + init}, bns...), "not in the user namespace sent"},
		{"a process of host root's", append([]string{"pidfd:" + strconv.Itoa(startSleeper(t, "").Process.Pid)}, bns...), "not in the user namespace sent"},
		{"a process that died after its pidfd was opened", append([]string{"dead"}, bns...), "no pidfd of a live process"},
		{"no proofs", nil, "adopt needs a pidfd"},
		{"too many descriptors", []string{"n:5"}, "too many descriptors"},
		{"the namespaces where the pidfd goes", []string{bns[0], "pidfd:" + binit, bns[1]}, "no pidfd"},
	} {
		if got := helper(b, `{"op":"adopt","name":"crafted"}`, c.specs...); !strings.Contains(got, c.want) {
			t.Errorf("adopt with %s: %q, want %q", c.what, got, c.want)
		}
	}
	for _, c := range []struct{ req, want string }{
		{`{"op":"adopt","name":"web"}`, "no container web of yours"},
		{`{"op":"attach","name":"web"}`, "no container web of yours"},
		{`{"op":"enter","name":"web","nspid":1}`, "no container web of yours"},
		{`{"op":"create","name":"../../escape"}`, "a container name is"},
		{`{"op":"create","name":"x","limits":{"memory":-1}}`, "may not be negative"},
		{`not json`, "does not understand"},
		{`{"op":"detach","name":"web"}`, "no container web of yours"},
		{`{"op":"upgrade","name":"mine"}`, "answers create"},
	} {
		if got := helper(b, c.req); !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.req, got, c.want)
		}
	}
	before.check(t, aDir, "B's attacks on A's container")
	if n := metricValue(d.scrape(t), "cgfs_user_refusals_total"); n < 10 {
		t.Errorf("cgfs_user_refusals_total = %v, want every refusal counted", n)
	}
	// A's container is as it was.
	out, err := a.command(cgfsBin, "exec", "web", "--", "sh", "-c", "echo still $(grep 0:: /proc/self/cgroup)").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "still 0::/") {
		t.Errorf("A's exec after B's attempts: %v %q", err, out)
	}
}

// TestUserContainerGoesWithItsRun: a user's cgfs run killed with -9
// takes its container along (the init's parent-death signal), and the
// daemon removes the container's cgroups and name once its init is gone.
func TestUserContainerGoesWithItsRun(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	a := newTestUser(t)
	_, parent := userDaemon(t, "", a)
	run := a.startRun(t, "doomed")
	dir := userCgroup(l.cgroup2, parent, a, "doomed")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the container's cgroup: %v", err)
	}
	if err := run.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed run's container to go", 20*time.Second*laneSlowdown(), func() bool {
		_, err := os.Stat(dir)
		return errors.Is(err, os.ErrNotExist) && !strings.Contains(a.cgfs(t, "list").out, "doomed")
	})
}

// TestUserContainersThroughHandover: a user's container and its view
// live through two upgrades of the daemon and a crash of it (the keeper
// holds its init's pidfd and pid namespace besides the view's
// connection): the user's commands keep working, and once the container
// ends the daemon that took it on removes it.
func TestUserContainersThroughHandover(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	a := newTestUser(t)
	dir := publicDir(t)
	pf := filepath.Join(dir, "users.conf")
	if err := os.WriteFile(pf, []byte("* memory=256M\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	parent := runParent(t)
	a.socket = filepath.Join(dir, "user.sock")
	d := startStormDaemon(t, true, "--user-socket", a.socket, "--user-policy", pf, "--user-parent", parent)
	run := a.startRun(t, "lasting")
	check := func(when string) {
		t.Helper()
		out, err := a.command(cgfsBin, "exec", "lasting", "--", "sh", "-c", laneScript+"mkdir $V2/k && rmdir $V2/k && echo ok $(grep 0:: /proc/self/cgroup)").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok 0::/") {
			t.Errorf("%s: the user's exec: %v %q", when, err, out)
		}
		if r := a.cgfs(t, "freeze", "lasting"); r.code != 0 {
			t.Errorf("%s: freeze: %s", when, r.out)
		}
		if r := a.cgfs(t, "thaw", "lasting"); r.code != 0 {
			t.Errorf("%s: thaw: %s", when, r.out)
		}
	}
	check("before")
	for i := range 2 {
		if out, err := cgfsCmd(t, d.env, "upgrade"); err != nil {
			t.Fatalf("upgrade %d: %v\n%s", i+1, err, out)
		}
	}
	check("after two upgrades")
	server := d.pid()
	if err := syscall.Kill(server, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new server", 20*time.Second*laneSlowdown(), func() bool { p := d.pid(); return p > 0 && p != server })
	waitFor(t, "the new server to answer users", 20*time.Second*laneSlowdown(), func() bool {
		return strings.Contains(a.cgfs(t, "list").out, "lasting\t")
	})
	check("after a crash")
	cg := userCgroup(l.cgroup2, parent, a, "lasting")
	_ = run.Process.Signal(syscall.SIGTERM)
	_ = run.Wait()
	waitFor(t, "the ended container removed", 20*time.Second*laneSlowdown(), func() bool {
		_, err := os.Stat(cg)
		return errors.Is(err, os.ErrNotExist)
	})
}

// TestOneUserAtItsBoundsLeavesAnother: user A at every bound the
// admin's policy and the daemon set per user (containers, files open
// across all its containers, connections, requests a second) is refused
// with a clear answer, while user B's containers are made, entered and
// read as before.
func TestOneUserAtItsBoundsLeavesAnother(t *testing.T) {
	requireRoot(t)
	a, b := newTestUser(t), newTestUser(t)
	d, _ := userDaemon(t, "* containers=2 open-files=200\n", a, b)
	a.startRun(t, "one")
	a.startRun(t, "two")
	if r := a.cgfs(t, "run", "--name", "three", "--", "true"); r.code != 2 || !strings.Contains(r.out, "as many as the admin's policy gives it") {
		t.Errorf("A's third container: exit %d %q, want refused by the policy", r.code, r.out)
	}
	helper := func(u *testUser, stdin *os.File, args ...string) *exec.Cmd {
		c := u.command(helperBin, args...)
		c.Env = append(c.Env, helperEnv+"=1")
		c.Stdin = stdin
		return c
	}
	// Files: both of A's containers draw on one budget of 200. A holder
	// in the container keeps its files until the container ends.
	hold := func(u *testUser, name string, n int) string {
		dir := publicDir(t)
		if err := os.Chown(dir, u.uid, u.gid); err != nil {
			t.Fatal(err)
		}
		out, _ := u.command(cgfsBin, "exec", name, "--", "sh", "-c", laneScript+fmt.Sprintf(
			`mkfifo %[1]s/r; env %[2]s=1 %[3]s holdopen $V2/cgroup.procs %[4]d > %[1]s/r 2>/dev/null < /dev/null & read r < %[1]s/r; echo $r`,
			dir, helperEnv, helperBin, n)).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	if got := hold(a, "one", 150); got != "OK 150" {
		t.Errorf("A holds 150 files in one container: %q", got)
	}
	if got := hold(a, "two", 150); !strings.HasPrefix(got, "ENFILE ") {
		t.Errorf("A's second container past the user's 200 files: %q, want ENFILE", got)
	}
	// Connections: A holds 8 (the bound), its 9th is refused.
	letGo := holdConns(t, helper(a, nil, "holdconns", a.socket, "8"), 8, "A's connections")
	if got, _ := helper(a, nil, "askuser", a.socket, `{"op":"list"}`).CombinedOutput(); !strings.Contains(string(got), "too many connections") {
		t.Errorf("A's 9th connection: %q, want refused", got)
	}
	// B meanwhile.
	if r := b.cgfs(t, "list"); r.code != 0 {
		t.Errorf("B's list while A holds its connections: %d %q", r.code, r.out)
	}
	letGo()
	// Requests a second: A's flood is cut, B is answered.
	flood, _ := helper(a, nil, "flood", a.socket, `{"op":"list"}`, "1000").CombinedOutput()
	var ok, limited int
	fmt.Sscanf(string(flood), "ok %d limited %d", &ok, &limited)
	if limited == 0 || ok == 0 {
		t.Errorf("A's 1000 requests at once: %q, want the burst answered and the rest refused for their rate", flood)
	}
	if r := b.cgfs(t, "list"); r.code != 0 {
		t.Errorf("B's list during A's flood: %d %q", r.code, r.out)
	}
	b.startRun(t, "bee")
	if got := hold(b, "bee", 150); got != "OK 150" {
		t.Errorf("B holds 150 files while A holds its 200: %q", got)
	}
	if got := metricValue(d.scrape(t), "cgfs_user_refusals_total", `rule="user-rate"`); got == 0 {
		t.Error("no refusal counted by rule user-rate")
	}
}

// BenchmarkRunTrue: `cgfs run -- true`, start to exit, as host root and
// as an ordinary user, both through the daemon (the user's: its user
// socket, the id maps by newuidmap, the adoption from inside the
// container's pid namespace): p50 and p99.
func BenchmarkRunTrue(b *testing.B) {
	requireRoot(b)
	u := newTestUser(b)
	dir := publicDir(b)
	pf := filepath.Join(dir, "users.conf")
	if err := os.WriteFile(pf, []byte("* containers=4\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	parent := runParent(b)
	u.socket = filepath.Join(dir, "user.sock")
	env := startDaemon(b, "--user-socket", u.socket, "--user-policy", pf, "--user-parent", parent)
	for _, who := range []string{"root", "user"} {
		b.Run(who, func(b *testing.B) {
			var took []time.Duration
			for i := 0; b.Loop(); i++ {
				var c *exec.Cmd
				name := fmt.Sprintf("bench-%d", i)
				if who == "root" {
					c = exec.Command(cgfsBin, "run", "--parent", parent, "--name", name, "--", "true")
					c.Env = append(os.Environ(), env...)
				} else {
					c = u.command(cgfsBin, "run", "--name", name, "--", "true")
				}
				t0 := time.Now()
				if out, err := c.CombinedOutput(); err != nil {
					b.Fatalf("cgfs run as %s: %v\n%s", who, err, out)
				}
				took = append(took, time.Since(t0))
			}
			b.ReportMetric(float64(percentile(took, 50).Microseconds()), "p50-µs")
			b.ReportMetric(float64(percentile(took, 99).Microseconds()), "p99-µs")
		})
	}
}

// TestUserRunRootfsAndTerminal: a user's cgfs run with a root file system
// of its own and a terminal, as root's: the container's own /dev, its
// terminal from its own devpts, its exit status.
func TestUserRunRootfsAndTerminal(t *testing.T) {
	requireRoot(t)
	a := newTestUser(t)
	userDaemon(t, "", a)
	rootfs := busyboxRootfs(t, a.uid)
	master, slave := openPty(t)
	if err := os.Chown(slave.Name(), a.uid, a.gid); err != nil {
		t.Fatal(err)
	}
	cmd := a.command(cgfsBin, "run", "--name", "tty", "--rootfs", rootfs, "--",
		"sh", "-c", "tty; test -t 0 && echo a terminal; ls /dev/pts; ls /sys/fs/cgroup | head -1; ls /; exit 3")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, true, 0
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out strings.Builder
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&out, master); close(done) }()
	err := cmd.Wait()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	t.Logf("cgfs run as %s on a terminal:\n%s", a.name, out.String())
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Errorf("cgfs run: %v, want exit status 3", err)
	}
	wantSaid(t, out.String(), "the user's container on a terminal", "/dev/pts/0", "a terminal", "ptmx", "bin")
	if strings.Contains(out.String(), "usr") {
		t.Errorf("the container's / is the host's, not the rootfs")
	}
}

// TestSubordinateIdsAreTheirOwners: a process of user A running as one of
// A's subordinate ids (a rootless container's non-root user: unshare
// --map-auto --setuid, through newuidmap) is A's, not a user of its own:
// its cgfs is refused with a message naming A, the host log names the
// rule, and connections held from A's subordinate ids count against A's
// bound of 8, so that A's 65,536 ids hold no more of the daemon than A.
func TestSubordinateIdsAreTheirOwners(t *testing.T) {
	requireRoot(t)
	help, _ := exec.Command("unshare", "--help").CombinedOutput()
	laneNeeds(t, hostLane, strings.Contains(string(help), "--map-auto"),
		"util-linux's unshare with --map-auto is not installed (the VM's busybox unshare has none)")
	a, b := newTestUser(t), newTestUser(t)
	d, _ := userDaemon(t, "* containers=2\n", a, b)
	// As uid 1000 of a user namespace A makes with its own ranges.
	asSub := func(uid int, name string, args ...string) *exec.Cmd {
		all := append([]string{"--map-auto", fmt.Sprintf("--setuid=%d", uid), fmt.Sprintf("--setgid=%d", uid), "--", name}, args...)
		return a.command("unshare", all...)
	}
	out, err := asSub(1000, cgfsBin, "list").CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("uid %d is a subordinate id of user %s (/etc/subuid), not a user of its own", a.sub+1000, a.name)
	if code != 2 || !strings.Contains(string(out), want) {
		t.Errorf("cgfs list as A's subordinate id: exit %d %q, want exit 2 and %q", code, out, want)
	}
	d.waitLog(t, fmt.Sprintf("uid=%d charged-to=%d rule=subordinate-id", a.sub+1000, a.uid))
	if r := a.cgfs(t, "list"); r.code != 0 {
		t.Errorf("A's own list: exit %d %q", r.code, r.out)
	}
	// Eight connections held from A's subordinate ids: A has none left.
	hold := asSub(1001, helperBin, "holdconns", a.socket, "8")
	hold.Env = append(hold.Env, helperEnv+"=1")
	letGo := holdConns(t, hold, 8, "connections from A's subordinate id")
	if r := a.cgfs(t, "list"); r.code != 2 || !strings.Contains(r.out, "too many connections") {
		t.Errorf("A's list while its subordinate ids hold 8 connections: exit %d %q, want too many connections", r.code, r.out)
	}
	if r := b.cgfs(t, "list"); r.code != 0 {
		t.Errorf("B's list meanwhile: exit %d %q", r.code, r.out)
	}
	letGo()
	waitFor(t, "A served again once its subordinate ids let go", 10*time.Second*laneSlowdown(), func() bool {
		return a.cgfs(t, "list").code == 0
	})
	if got := metricValue(d.scrape(t), "cgfs_user_refusals_total", `rule="subordinate-id"`); got == 0 {
		t.Error("no refusal counted by rule subordinate-id")
	}
}

// holdConns starts c, a helper's holdconns of n connections to a user
// socket (held until its input ends), and waits until it holds them all;
// the func it returns lets them go and waits for the helper's end.
func holdConns(t *testing.T, c *exec.Cmd, n int, what string) (letGo func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stdin = r
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	var once sync.Once
	letGo = func() { once.Do(func() { w.Close(); _ = c.Wait() }) }
	t.Cleanup(letGo)
	line := make([]byte, 64)
	k, _ := out.Read(line)
	if got := strings.TrimSpace(string(line[:k])); got != fmt.Sprintf("held %d", n) {
		t.Fatalf("%s: %q, want held %d", what, got, n)
	}
	return letGo
}
