package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	v2, mem := "/sys/fs/cgroup", "/sys/fs/cgroup/memory.max"
	if len(l.v1) > 0 {
		v2, mem = "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory/memory.limit_in_bytes"
	}
	script := fmt.Sprintf(`echo view $(grep -c ' - fuse.cgfs ' /proc/self/mountinfo)
echo memory $(cat %[2]s)
grep 0:: /proc/self/cgroup
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
`, v2, mem)
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
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, run, 0)
	t.Cleanup(func() {
		k := a.command("runc", "--root", state, "kill", id, "KILL")
		k.Env = append(k.Env, "XDG_RUNTIME_DIR="+state)
		_ = k.Run()
	})
	waitFor(t, "the rootless runc container to run", 60*time.Second*laneSlowdown(), func() bool {
		return strings.Contains(out.String(), "running\n") || run.ProcessState != nil
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
	memHost := filepath.Join(l.cgroup2, parent, fmt.Sprintf("user-%d", a.uid), id, "memory.max")
	if m, ok := l.v1["memory"]; ok {
		memHost = filepath.Join(m, parent, fmt.Sprintf("user-%d", a.uid), id, "memory.limit_in_bytes")
	}
	if got := strings.TrimSpace(readFile(t, memHost)); got != "67108864" {
		t.Errorf("the container's memory limit on the host (%s) = %s, want 67108864", memHost, got)
	}
	// runc pause cannot, as a user; cgfs freeze can.
	pause := a.command("runc", "--root", state, "pause", id)
	pause.Env = append(pause.Env, "XDG_RUNTIME_DIR="+state)
	pout, perr := pause.CombinedOutput()
	t.Logf("runc pause as %s: %v %s", a.name, perr, pout)
	events := filepath.Join(l.cgroup2, parent, fmt.Sprintf("user-%d", a.uid), id, "cgroup.events")
	if r := a.cgfs(t, "freeze", id); r.code != 0 {
		t.Fatalf("cgfs freeze: %s", r.out)
	}
	waitFor(t, "the container frozen", 20*time.Second*laneSlowdown(), func() bool {
		return keyedValue(readFile(t, events), "frozen") == "1"
	})
	if r := a.cgfs(t, "thaw", id); r.code != 0 {
		t.Fatalf("cgfs thaw: %s", r.out)
	}
	waitFor(t, "the container thawed", 20*time.Second*laneSlowdown(), func() bool {
		return keyedValue(readFile(t, events), "frozen") == "0"
	})
}
