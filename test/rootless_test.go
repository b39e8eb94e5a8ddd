package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Rootless runtimes, unmodified, run by an ordinary user the test makes,
// with cgfs's hooks speaking the daemon's user socket.

// rootlessRuncConfig writes a bundle's config.json as its user writes
// one: `runc spec --rootless`, merged with cmd/cgfs/examples/runc-rootless.json
// (limits as annotations, the createRuntime hook, a cgroup namespace),
// and no cgroupfs of the runtime's at /sys/fs/cgroup (the view goes
// there).
func rootlessRuncConfig(t *testing.T, u *testUser, bundle, script string) {
	t.Helper()
	c := u.command("runc", "spec", "--rootless")
	c.Dir = bundle
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("runc spec --rootless as %s: %v\n%s", u.name, err, out)
	}
	p := filepath.Join(bundle, "config.json")
	var cfg map[string]any
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	var ex map[string]any
	if err := json.Unmarshal([]byte(example(t, "runc-rootless.json")), &ex); err != nil {
		t.Fatal(err)
	}
	cfg["annotations"] = ex["annotations"]
	hooks := ex["hooks"].(map[string]any)
	for _, h := range hooks["createRuntime"].([]any) {
		hm := h.(map[string]any)
		hm["env"] = append(hm["env"].([]any), "CGFS_USER_SOCKET="+u.socket)
	}
	cfg["hooks"] = hooks
	linux := cfg["linux"].(map[string]any)
	linux["namespaces"] = ex["linux"].(map[string]any)["namespaces"]
	var mounts []any
	for _, m := range cfg["mounts"].([]any) {
		if m.(map[string]any)["destination"] != "/sys/fs/cgroup" {
			mounts = append(mounts, m)
		}
	}
	cfg["mounts"] = mounts
	proc := cfg["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"sh", "-c", script}
	b, _ = json.MarshalIndent(cfg, "", " ")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// insideScript is what a rootless runtime's container runs in these
// tests: it says whether its /sys/fs/cgroup is a cgfs view and its memory
// and pids limits, makes and limits a sub-cgroup, moves a child into it
// and freezes it, then says running and waits.
func insideScript(l lane) string {
	v2, mem, pids := "/sys/fs/cgroup", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"
	if len(l.v1) > 0 {
		v2, mem, pids = "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max"
	}
	return fmt.Sprintf(`echo view $(grep -c ' - fuse.cgfs ' /proc/self/mountinfo)
echo memory $(cat %[2]s)
echo pids $(cat %[3]s)
mkdir %[1]s/sub && echo made sub
echo 5 > %[1]s/sub/cgroup.max.descendants && echo limited sub
sleep 1000 & kid=$!
echo $kid > %[1]s/sub/cgroup.procs
echo 1 > %[1]s/sub/cgroup.freeze
until grep -q 'frozen 1' %[1]s/sub/cgroup.events; do sleep 0.1; done
echo froze a child
kill -9 $kid
echo running
while :; do sleep 0.1; done
`, v2, mem, pids)
}

// startUntilEnd starts c; it is waited for, and (if still running when
// the test ends) stopped by stop, else killed after 20 seconds. What it
// returns tells whether c has ended.
func startUntilEnd(t *testing.T, c *exec.Cmd, stop func()) (ended func() bool) {
	t.Helper()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	ended = func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	t.Cleanup(func() {
		if ended() {
			return
		}
		stop()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	})
	return ended
}

// TestRootlessRuncThroughTheHook: Debian's runc 1.1.5, rootless, run by
// an ordinary user: its limits (cgfs.* annotations; runc cannot set them
// as a user on this host) are in force on the host, its container's root
// makes and limits cgroups, moves itself and freezes a child in its
// view, and `cgfs freeze` pauses the whole container for real where
// `runc pause` cannot.
func TestRootlessRuncThroughTheHook(t *testing.T) {
	requireRoot(t)
	requireTool(t, "runc")
	l := detectLane(t)
	a := newTestUser(t)
	_, parent := userDaemon(t, "* memory=512M\n", a)
	bundle := publicDir(t)
	busyboxRootfsAt(t, filepath.Join(bundle, "rootfs"), a.uid)
	if err := os.Chown(bundle, a.uid, a.gid); err != nil {
		t.Fatal(err)
	}
	script := "grep 0:: /proc/self/cgroup\n" + insideScript(l)
	rootlessRuncConfig(t, a, bundle, script)
	id := fmt.Sprintf("cgfs-test-rl-%d", os.Getpid()%100000)
	state := publicDir(t)
	if err := os.Chown(state, a.uid, a.gid); err != nil {
		t.Fatal(err)
	}
	run := a.command("runc", "--root", state, "run", "-b", bundle, id)
	run.Env = append(run.Env, "XDG_RUNTIME_DIR="+state)
	var out lockedBuffer
	run.Stdout, run.Stderr = &out, &out
	ended := startUntilEnd(t, run, func() {
		k := a.command("runc", "--root", state, "kill", id, "KILL")
		k.Env = append(k.Env, "XDG_RUNTIME_DIR="+state)
		_ = k.Run()
	})
	waitFor(t, "the rootless runc container to run", 60*time.Second*laneSlowdown(), func() bool {
		return strings.Contains(out.String(), "running\n") || ended()
	})
	t.Logf("runc as %s:\n%s", a.name, out.String())
	// runc makes the cgroup namespace before the hook runs: it is rooted
	// where runc's init was then, and the container's cgroup shows as
	// a path below that.
	wantSaid(t, out.String(), "the rootless runc container", "view ", "memory 67108864\n",
		fmt.Sprintf("/user-%d/%s\n", a.uid, id), "made sub\n", "limited sub\n", "froze a child\n")
	if strings.Contains(out.String(), "view 0\n") {
		t.Error("the container's /sys/fs/cgroup is not a cgfs view")
	}
	wantHostLimits(t, l, parent, a, id, "67108864", "50")
	// runc pause cannot, as a user; cgfs freeze can.
	pause := a.command("runc", "--root", state, "pause", id)
	pause.Env = append(pause.Env, "XDG_RUNTIME_DIR="+state)
	pout, perr := pause.CombinedOutput()
	t.Logf("runc pause as %s: %v %s", a.name, perr, pout)
	freezeAndThaw(t, l, parent, a, id)
}

// TestRootlessLXCThroughTheHook: Debian's LXC 5.0.2, an unprivileged
// container its user starts (ids from the user's /etc/subuid range,
// mapped by newuidmap), with the README's lines
// (cmd/cgfs/examples/lxc-unprivileged.conf): LXC makes no cgroup for it
// on this host and skips its lxc.cgroup2.* keys; cgfs's hook, as the
// user, has the daemon make the container's cgroups with the hook's
// limits over the config's (--memory 64M over lxc.cgroup2.memory.max =
// 32M; lxc.cgroup2.cpu.max = 50000 100000 as it is), all in force on
// the host; the container's root makes, limits and freezes cgroups in
// its view; the user's cgfs freeze and stop work on lxc-NAME; nothing is
// left when it ends.
func TestRootlessLXCThroughTheHook(t *testing.T) {
	requireRoot(t)
	requireTool(t, "lxc-start")
	l := detectLane(t)
	a := newTestUser(t)
	_, parent := userDaemon(t, "* memory=512M cpus=2\n", a)
	dir := publicDir(t)
	ctr := filepath.Join(dir, "ctr")
	rootfs := filepath.Join(ctr, "rootfs")
	if err := os.MkdirAll(ctr, 0o755); err != nil {
		t.Fatal(err)
	}
	busyboxRootfsAt(t, rootfs, a.sub)
	for _, d := range []string{dir, ctr} {
		if err := os.Chown(d, a.uid, a.gid); err != nil {
			t.Fatal(err)
		}
	}
	script := "#!/bin/sh\nexec > /tmp/result 2>&1\ntrap 'echo stopped; exit 0' TERM\n" + insideScript(l)
	initPath := filepath.Join(rootfs, "init.sh")
	if err := os.WriteFile(initPath, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Lchown(initPath, a.sub, a.sub)
	config := fmt.Sprintf(`lxc.uts.name = cgfs-lxc
lxc.rootfs.path = dir:%s
lxc.idmap = u 0 %d 65536
lxc.idmap = g 0 %d 65536
lxc.net.0.type = empty
lxc.init.cmd = /init.sh
lxc.cgroup2.memory.max = 32M
lxc.cgroup2.cpu.max = 50000 100000
`, rootfs, a.sub, a.sub) + example(t, "lxc-unprivileged.conf") // the README's lines
	if err := os.WriteFile(filepath.Join(ctr, "config"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "lxc.log")
	// LXC keeps its locks in the user's XDG_RUNTIME_DIR.
	runtime := publicDir(t)
	if err := os.Chown(runtime, a.uid, a.gid); err != nil {
		t.Fatal(err)
	}
	lxc := func(args ...string) *exec.Cmd {
		c := a.command(args[0], args[1:]...)
		c.Env = append(c.Env, "XDG_RUNTIME_DIR="+runtime)
		return c
	}
	start := lxc("lxc-start", "-n", "ctr", "-P", dir, "-F", "-o", logFile, "-l", "WARN")
	var out lockedBuffer
	start.Stdout, start.Stderr = &out, &out
	ended := startUntilEnd(t, start, func() { _ = lxc("lxc-stop", "-n", "ctr", "-P", dir, "-k").Run() })
	result := filepath.Join(rootfs, "tmp", "result")
	said := func() string { b, _ := os.ReadFile(result); return string(b) }
	waitFor(t, "the unprivileged LXC container to run", 60*time.Second*laneSlowdown(), func() bool {
		return strings.Contains(said(), "running\n") || ended()
	})
	log, _ := os.ReadFile(logFile)
	t.Logf("lxc-start as %s:\n%s\nlog:\n%s\nthe container said:\n%s", a.name, out.String(), log, said())
	wantSaid(t, said(), "the unprivileged LXC container", "view ", "memory 67108864\n", "pids 50\n",
		"made sub\n", "limited sub\n", "froze a child\n")
	if strings.Contains(said(), "view 0\n") {
		t.Error("the container's /sys/fs/cgroup is not a cgfs view")
	}
	// The hook's --memory over the config's; the config's CPU.
	wantHostLimits(t, l, parent, a, "lxc-ctr", "67108864", "50")
	if got := hostLimit(t, l, parent, a, "lxc-ctr", "cpu", "cpu.cfs_quota_us", "cpu.max"); got != "50000" && got != "50000 100000" {
		t.Errorf("the container's CPU limit on the host = %s, want 50000 of 100000 (the config's lxc.cgroup2.cpu.max)", got)
	}
	// The user's cgfs works on it by name.
	if r := a.cgfs(t, "list"); !strings.Contains(r.out, "lxc-ctr") {
		t.Errorf("cgfs list as %s does not name lxc-ctr:\n%s", a.name, r.out)
	}
	freezeAndThaw(t, l, parent, a, "lxc-ctr")
	if r := a.cgfs(t, "stop", "lxc-ctr"); r.code != 0 {
		t.Fatalf("cgfs stop lxc-ctr: %s", r.out)
	}
	waitFor(t, "lxc-start to end", 30*time.Second*laneSlowdown(), ended)
	if !strings.Contains(said(), "stopped\n") {
		t.Errorf("the container's init did not get cgfs stop's SIGTERM:\n%s", said())
	}
	waitFor(t, "the container's cgroups gone", 20*time.Second*laneSlowdown(), func() bool {
		_, err := os.Stat(userCgroup(l.cgroup2, parent, a, "lxc-ctr"))
		return os.IsNotExist(err)
	})
}

// TestRootlessPodmanThroughTheHook: Debian's podman 4.3.1, rootless, run
// by an ordinary user with --runtime runc (crun refuses hybrid hosts) and
// cmd/cgfs/examples/podman-hook.json in its --hooks-dir. podman drops
// --memory and --pids-limit here ("Resource limits are not supported and
// ignored on cgroups V1 rootless systems") and refuses pause and stats;
// the cgfs.* annotations' limits are in force on the host, the
// container's root makes and freezes cgroups in its view, and cgfs
// freeze, stats and thaw work on the name cgfs.name gives.
func TestRootlessPodmanThroughTheHook(t *testing.T) {
	requireRoot(t)
	requireTool(t, "podman")
	requireTool(t, "runc")
	l := detectLane(t)
	a := newTestUser(t)
	_, parent := userDaemon(t, "* memory=512M\n", a)
	// The user's home (podman's storage) and runtime directory.
	home, runtime := publicDir(t), publicDir(t)
	for _, d := range []string{home, runtime} {
		if err := os.Chown(d, a.uid, a.gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	podman := func(args ...string) *exec.Cmd {
		c := a.command("podman", args...)
		c.Env = append(c.Env, "HOME="+home, "XDG_RUNTIME_DIR="+runtime)
		return c
	}
	t.Cleanup(func() {
		_ = podman("rm", "-af", "-t", "0").Run()
		// Rootless podman keeps a process holding its user namespace.
		if b, err := os.ReadFile(filepath.Join(runtime, "libpod/tmp/pause.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	// An image of busybox, imported as podman's users make one without
	// a registry.
	img := filepath.Join(publicDir(t), "bb.tar")
	if out, err := exec.Command("tar", "-C", busyboxRootfs(t, 0), "-cf", img, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	if out, err := podman("import", img, "cgfs-test-bb").CombinedOutput(); err != nil {
		t.Fatalf("podman import as %s: %v\n%s", a.name, err, out)
	}
	hooks := publicDir(t)
	hook := strings.Replace(example(t, "podman-hook.json"), `"PATH=`, `"CGFS_USER_SOCKET=`+a.socket+`", "PATH=`, 1)
	if err := os.WriteFile(filepath.Join(hooks, "cgfs.json"), []byte(hook), 0o644); err != nil {
		t.Fatal(err)
	}
	script := insideScript(l)
	run := podman("run", "--rm", "--runtime", "runc", "--hooks-dir", hooks, "--network", "none",
		"--name", "web", "--memory", "64M", "--pids-limit", "50",
		"--annotation", "cgfs.name=web", "--annotation", "cgfs.memory=64M", "--annotation", "cgfs.pids=50",
		"cgfs-test-bb", "sh", "-c", script)
	var out lockedBuffer
	run.Stdout, run.Stderr = &out, &out
	ended := startUntilEnd(t, run, func() { _ = podman("rm", "-f", "-t", "0", "web").Run() })
	waitFor(t, "the rootless podman container to run", 90*time.Second*laneSlowdown(), func() bool {
		return strings.Contains(out.String(), "running\n") || ended()
	})
	t.Logf("podman run as %s:\n%s", a.name, out.String())
	wantSaid(t, out.String(), "the rootless podman container", "view 1\n", "memory 67108864\n", "pids 50\n", "made sub\n", "limited sub\n", "froze a child\n")
	wantHostLimits(t, l, parent, a, "web", "67108864", "50")
	// podman's own pause and stats, in its words; cgfs's do the work.
	for _, args := range [][]string{{"pause", "web"}, {"stats", "--no-stream", "web"}} {
		o, err := podman(args...).CombinedOutput()
		t.Logf("podman %s as %s: %v %s", strings.Join(args, " "), a.name, err, o)
	}
	freezeAndThaw(t, l, parent, a, "web")
	if o, err := podman("rm", "-f", "-t", "0", "web").CombinedOutput(); err != nil {
		t.Errorf("podman rm -f web: %v\n%s", err, o)
	}
	waitFor(t, "podman run to end", 30*time.Second*laneSlowdown(), ended)
	waitFor(t, "the container's cgroups gone", 20*time.Second*laneSlowdown(), func() bool {
		_, err := os.Stat(userCgroup(l.cgroup2, parent, a, "web"))
		return os.IsNotExist(err)
	})
}

// hostLimit is user a's container name's limit file on the host: v1file
// in controller ctrl's v1 hierarchy where the host has one, else v2file
// on cgroup v2.
func hostLimit(t *testing.T, l lane, parent string, a *testUser, name, ctrl, v1file, v2file string) string {
	t.Helper()
	if m, ok := l.v1[ctrl]; ok {
		return strings.TrimSpace(readFile(t, filepath.Join(userCgroup(m, parent, a, name), v1file)))
	}
	return strings.TrimSpace(readFile(t, filepath.Join(userCgroup(l.cgroup2, parent, a, name), v2file)))
}

// wantHostLimits checks user a's container name's memory and pids
// limits on the host.
func wantHostLimits(t *testing.T, l lane, parent string, a *testUser, name, mem, pids string) {
	t.Helper()
	if got := hostLimit(t, l, parent, a, name, "memory", "memory.limit_in_bytes", "memory.max"); got != mem {
		t.Errorf("%s's memory limit on the host = %s, want %s", name, got, mem)
	}
	if got := hostLimit(t, l, parent, a, name, "pids", "pids.max", "pids.max"); got != pids {
		t.Errorf("%s's pids limit on the host = %s, want %s", name, got, pids)
	}
}

// freezeAndThaw freezes user a's container name with cgfs freeze (the
// kernel says frozen), checks what cgfs stats says of it (64MiB, 50
// tasks, frozen), and thaws it with cgfs thaw.
func freezeAndThaw(t *testing.T, l lane, parent string, a *testUser, name string) {
	t.Helper()
	events := filepath.Join(userCgroup(l.cgroup2, parent, a, name), "cgroup.events")
	if r := a.cgfs(t, "freeze", name); r.code != 0 {
		t.Fatalf("cgfs freeze %s: %s", name, r.out)
	}
	waitFor(t, name+" frozen", 20*time.Second*laneSlowdown(), func() bool {
		return keyedValue(readFile(t, events), "frozen") == "1"
	})
	wantStats(t, a, name, "64MiB", "50", "yes")
	if r := a.cgfs(t, "thaw", name); r.code != 0 {
		t.Fatalf("cgfs thaw %s: %s", name, r.out)
	}
	waitFor(t, name+" thawed", 20*time.Second*laneSlowdown(), func() bool {
		return keyedValue(readFile(t, events), "frozen") == "0"
	})
}

// wantStats checks what user a's cgfs stats says of its container name:
// the memory limit, the tasks limit and whether frozen.
func wantStats(t *testing.T, a *testUser, name, memMax, pidsMax, frozen string) {
	t.Helper()
	r := a.cgfs(t, "stats", name)
	t.Logf("cgfs stats %s:\n%s", name, r.out)
	// NAME CPU MEM / LIMIT PIDS / LIMIT FROZEN OOM
	if f := strings.Fields(lastLine(r.out)); r.code != 0 || len(f) != 10 || f[0] != name || f[4] != memMax || f[7] != pidsMax || f[8] != frozen {
		t.Errorf("cgfs stats %s as %s does not say %s, %s tasks and frozen %s:\n%s", name, a.name, memMax, pidsMax, frozen, r.out)
	}
}

// lastLine is s's last line that is not empty.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
