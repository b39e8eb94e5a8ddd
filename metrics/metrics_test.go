package metrics

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRequestsAndRefusals(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	v := m.For("c1")
	v.Request("mkdir", "ok", 50*time.Microsecond)
	v.Request("mkdir", "ok", 70*time.Microsecond)
	v.Request("write", "EINVAL", 2*time.Millisecond)
	v.Refusal("root-locked", "open")
	want := `
# HELP cgfs_refusals_total Requests refused by a rule, by container, rule and operation.
# TYPE cgfs_refusals_total counter
cgfs_refusals_total{container="c1",op="open",rule="root-locked"} 1
# HELP cgfs_requests_total FUSE requests served, by container, operation and result (ok or the errno name the container got).
# TYPE cgfs_requests_total counter
cgfs_requests_total{container="c1",op="mkdir",result="ok"} 2
cgfs_requests_total{container="c1",op="write",result="EINVAL"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "cgfs_requests_total", "cgfs_refusals_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.latency, "cgfs_request_duration_seconds"); n != 2 {
		t.Errorf("latency has %d series, want one per operation (2)", n)
	}
	lint(t, reg)
	var nilView *Counts
	nilView.Request("mkdir", "ok", 0) // a view without metrics counts nothing, safely
}

// TestForget: a container's series go when it is forgotten; another's
// stay.
func TestForget(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	for _, name := range []string{"gone", "stays"} {
		m.For(name).Request("mkdir", "ok", time.Microsecond)
		m.For(name).Refusal("root-locked", "open")
	}
	m.Forget("gone")
	want := `
# HELP cgfs_refusals_total Requests refused by a rule, by container, rule and operation.
# TYPE cgfs_refusals_total counter
cgfs_refusals_total{container="stays",op="open",rule="root-locked"} 1
# HELP cgfs_requests_total FUSE requests served, by container, operation and result (ok or the errno name the container got).
# TYPE cgfs_requests_total counter
cgfs_requests_total{container="stays",op="mkdir",result="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "cgfs_requests_total", "cgfs_refusals_total"); err != nil {
		t.Error(err)
	}
	var none *Metrics
	none.Forget("x") // a server without metrics forgets nothing, safely
}

// lint fails on what promlint finds in everything reg gathers.
func lint(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// fakeCgroup writes cgroup files into a temporary directory.
func fakeCgroup(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestContainerUse: what a container uses is read from its cgroup files
// at scrape time, v2 and v1 alike; a limit of "max" is no series.
func TestContainerUse(t *testing.T) {
	v2 := fakeCgroup(t, map[string]string{
		"cpu.stat":       "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
		"memory.current": "104857600\n",
		"memory.max":     "268435456\n",
		"memory.events":  "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
		"pids.current":   "7\n",
		"pids.max":       "max\n",
		"cgroup.events":  "populated 1\nfrozen 1\n",
	})
	// A hybrid host: the controllers on v1, the v2 cgroup bare.
	hybrid := fakeCgroup(t, map[string]string{"cgroup.events": "populated 1\nfrozen 0\n"})
	mem := fakeCgroup(t, map[string]string{
		"memory.usage_in_bytes": "4096\n",
		"memory.limit_in_bytes": "9223372036854771712\n",
		"memory.oom_control":    "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
	})
	cpuacct := fakeCgroup(t, map[string]string{"cpuacct.usage": "1500000000\n"})
	pids := fakeCgroup(t, map[string]string{"pids.current": "3\n", "pids.max": "100\n"})

	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	m.Add(&View{Container: "v2", V2: v2, Up: func() bool { return true },
		Leaves: func() (int, uint64, uint64) { return 1, 3, 2 }, Relayed: func() uint64 { return 9 }})
	remove := m.Add(&View{Container: "hybrid", V2: hybrid, V1: map[string]string{"memory": mem, "cpuacct": cpuacct, "pids": pids},
		Up: func() bool { return false }})
	m.Add(&View{Container: "v2", V2: v2}) // a second view of one container: counted once
	m.AddSource(Source{Name: "cgfs_pid_cache_hits_total", Help: "Hits.", Counter: true, Read: func() float64 { return 42 }})
	want := `
# HELP cgfs_container_cpu_seconds_total CPU time the container's cgroup used.
# TYPE cgfs_container_cpu_seconds_total counter
cgfs_container_cpu_seconds_total{container="hybrid"} 1.5
cgfs_container_cpu_seconds_total{container="v2"} 2.5
# HELP cgfs_container_frozen Whether the container's cgroup is frozen (1) or not (0).
# TYPE cgfs_container_frozen gauge
cgfs_container_frozen{container="hybrid"} 0
cgfs_container_frozen{container="v2"} 1
# HELP cgfs_container_memory_bytes Memory the container's cgroup uses now.
# TYPE cgfs_container_memory_bytes gauge
cgfs_container_memory_bytes{container="hybrid"} 4096
cgfs_container_memory_bytes{container="v2"} 1.048576e+08
# HELP cgfs_container_memory_limit_bytes The container's memory limit (absent when it has none).
# TYPE cgfs_container_memory_limit_bytes gauge
cgfs_container_memory_limit_bytes{container="v2"} 2.68435456e+08
# HELP cgfs_container_oom_kills_total Processes the kernel's OOM killer killed in the container's cgroup.
# TYPE cgfs_container_oom_kills_total counter
cgfs_container_oom_kills_total{container="hybrid"} 5
cgfs_container_oom_kills_total{container="v2"} 2
# HELP cgfs_container_pids Tasks in the container's cgroup now.
# TYPE cgfs_container_pids gauge
cgfs_container_pids{container="hybrid"} 3
cgfs_container_pids{container="v2"} 7
# HELP cgfs_container_pids_limit The container's task limit (absent when it has none).
# TYPE cgfs_container_pids_limit gauge
cgfs_container_pids_limit{container="hybrid"} 100
# HELP cgfs_events_relayed_total Changes of events files relayed to the container's watchers (inotify).
# TYPE cgfs_events_relayed_total counter
cgfs_events_relayed_total{container="v2"} 9
# HELP cgfs_hidden_leaves Hidden leaves the container's view has now.
# TYPE cgfs_hidden_leaves gauge
cgfs_hidden_leaves{container="v2"} 1
# HELP cgfs_hidden_leaves_total Hidden leaves cgfs made (created) and removed again (folded) in the container's view.
# TYPE cgfs_hidden_leaves_total counter
cgfs_hidden_leaves_total{container="v2",event="created"} 3
cgfs_hidden_leaves_total{container="v2",event="folded"} 2
# HELP cgfs_pid_cache_hits_total Hits.
# TYPE cgfs_pid_cache_hits_total counter
cgfs_pid_cache_hits_total 42
# HELP cgfs_view_up Whether the container's view answers (1) or not (0).
# TYPE cgfs_view_up gauge
cgfs_view_up{container="hybrid"} 0
cgfs_view_up{container="v2"} 1
# HELP cgfs_views Views served.
# TYPE cgfs_views gauge
cgfs_views 3
`
	names := []string{"cgfs_container_cpu_seconds_total", "cgfs_container_frozen", "cgfs_container_memory_bytes",
		"cgfs_container_memory_limit_bytes", "cgfs_container_oom_kills_total", "cgfs_container_pids",
		"cgfs_container_pids_limit", "cgfs_events_relayed_total", "cgfs_hidden_leaves", "cgfs_hidden_leaves_total",
		"cgfs_pid_cache_hits_total", "cgfs_view_up", "cgfs_views"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if down := m.Down(); len(down) != 1 || down[0] != "hybrid" {
		t.Errorf("Down() = %v, want [hybrid]", down)
	}
	lint(t, reg)
	// The files change and a view goes: the next scrape says so.
	if err := os.WriteFile(filepath.Join(v2, "pids.current"), []byte("8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	remove()
	after := `
# HELP cgfs_container_pids Tasks in the container's cgroup now.
# TYPE cgfs_container_pids gauge
cgfs_container_pids{container="v2"} 8
# HELP cgfs_views Views served.
# TYPE cgfs_views gauge
cgfs_views 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(after), "cgfs_container_pids", "cgfs_views"); err != nil {
		t.Error(err)
	}
}

// BenchmarkScrape is one scrape of a server with 1,000 views, each
// reading its container's cgroup files.
func BenchmarkScrape(b *testing.B) {
	dir := b.TempDir()
	for name, text := range map[string]string{"cpu.stat": "usage_usec 1\n", "memory.current": "1\n", "memory.max": "max\n",
		"memory.events": "oom_kill 0\n", "pids.current": "1\n", "pids.max": "max\n", "cgroup.events": "frozen 0\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	m := New(reg)
	for i := range 1000 {
		m.Add(&View{Container: fmt.Sprintf("c%d", i), V2: dir})
	}
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
