package cgroups

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestV1ByController(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, files ...string) string {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(d, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	mem := mk("memory", "memory.usage_in_bytes")
	cpu := mk("cpu,cpuacct", "cpuacct.usage", "cpu.shares")
	frz := mk("freezer", "freezer.state")
	v2 := mk("unified", "memory.current", "pids.current")
	cg := &Set{Dirs: map[string]string{"/m": mem, "/c": cpu, "/f": frz, "/u": v2}, V2: v2}
	got := cg.V1ByController()
	want := map[string]string{"memory": mem, "cpuacct": cpu, "freezer": frz}
	if len(got) != len(want) {
		t.Fatalf("V1ByController = %v, want %v (the v2 cgroup is not v1's)", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("V1ByController[%s] = %s, want %s", k, got[k], v)
		}
	}
}

// TestHits: the kernel's counts of limits hit, in the set's cgroups of
// every hierarchy: v2 memory.events (over the subtree already), v1
// memory.oom_control summed over the subtree (each cgroup counts its
// own), pids.events; nothing where nothing was hit.
func TestHits(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, text string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("memory/c/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
	write("memory/c/sub/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
	write("pids/c/pids.events", "max 3\n")
	write("unified/c/memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
	cg := &Set{Dirs: map[string]string{"/m": filepath.Join(dir, "memory/c"), "/p": filepath.Join(dir, "pids/c"),
		"/u": filepath.Join(dir, "unified/c")}, V2: filepath.Join(dir, "unified/c")}
	var got []string
	for _, h := range cg.Hits() {
		got = append(got, h.String())
	}
	want := []string{"out of memory (memory.oom_control oom_kill 3)", "a fork refused at the task limit (pids.events max 3)"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Hits() = %q, want %q", got, want)
	}
	write("unified/c/memory.events", "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n")
	if h := cg.Hits(); len(h) != 3 || h[0].String() != "out of memory (memory.events oom_kill 1)" || !h[0].Memory() || h[2].Memory() {
		t.Errorf("Hits() with a v2 OOM kill = %v", h)
	}
	if h := (&Set{Dirs: map[string]string{"/x": filepath.Join(dir, "none")}}).Hits(); len(h) != 0 {
		t.Errorf("Hits() of cgroups that are gone = %v, want none", h)
	}
}

// TestCPUQuota: the kernel's bounds (tg_set_cfs_bandwidth: 1ms to
// 2^44-1us a period), a quota rounded, not cut (0.01 CPUs is 1000us).
func TestCPUQuota(t *testing.T) {
	for _, c := range []struct {
		cpus float64
		want int64 // 0: refused
	}{
		{0.01, 1000}, {0.5, 50000}, {0.29, 29000}, {175921860, 17592186000000},
		{0.0099, 0}, {175921861, 0}, {1e300, 0}, {math.Inf(1), 0}, {math.NaN(), 0}, {-1, 0},
	} {
		q, err := CPUQuota(c.cpus)
		if c.want == 0 && err == nil || c.want != 0 && (err != nil || q != c.want) {
			t.Errorf("CPUQuota(%g) = %d, %v; want %d", c.cpus, q, err, c.want)
		}
	}
}
