package metrics

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgfs/cgfs/translate/host"
)

// A View is one served view as the metrics read it at scrape time.
type View struct {
	// Container names it in labels.
	Container string
	// V2 is the container's host cgroup on the cgroup v2 hierarchy ("" if
	// none); V1 its host cgroups on v1 ones, by controller (memory,
	// cpuacct, pids, freezer). What each container uses is read from
	// them when /metrics is scraped: nothing polls.
	V2 string
	V1 map[string]string
	// Up reports whether the view answers: its FUSE connection lives and
	// its host cgroup is there.
	Up func() bool
	// Leaves is how many hidden leaves it has now and how many it made
	// and folded so far; Relayed how many inotify events it relayed
	// (each may be nil).
	Leaves  func() (now int, made, folded uint64)
	Relayed func() uint64
	// Budget is what the container holds of the server now, by bound
	// ("open_files", "nested_views", "relay_watches", "pid_helpers"),
	// and each bound (may be nil).
	Budget func() map[string][2]float64
}

// Add makes v one of the views served; remove takes it away.
func (m *Metrics) Add(v *View) (remove func()) {
	if m == nil {
		return func() {}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.views = append(m.views, v)
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.views = slices.DeleteFunc(m.views, func(w *View) bool { return w == v })
	}
}

// Source is one of the server's own numbers, read at scrape time: a
// counter (Counter) or a gauge.
type Source struct {
	Name, Help string
	Counter    bool
	Read       func() float64
}

// AddSource exposes s.
func (m *Metrics) AddSource(s Source) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sources = append(m.sources, s)
}

// Down names the views that do not answer; none means healthy.
func (m *Metrics) Down() []string {
	if m == nil {
		return nil
	}
	var down []string
	for _, v := range m.snapshot() {
		if v.Up != nil && !v.Up() {
			down = append(down, v.Container)
		}
	}
	return down
}

func (m *Metrics) snapshot() []*View {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.views)
}

// collector is Metrics read at scrape time: the views, what their
// containers use, and the sources.
type collector Metrics

var (
	descViews  = prometheus.NewDesc("cgfs_views", "Views served.", nil, nil)
	descUp     = prometheus.NewDesc("cgfs_view_up", "Whether the container's view answers (1) or not (0).", []string{"container"}, nil)
	descLeaves = prometheus.NewDesc("cgfs_hidden_leaves", "Hidden leaves the container's view has now.", []string{"container"}, nil)
	descLeafEv = prometheus.NewDesc("cgfs_hidden_leaves_total", "Hidden leaves cgfs made (created) and removed again (folded) in the container's view.", []string{"container", "event"}, nil)
	descRelay  = prometheus.NewDesc("cgfs_events_relayed_total", "Changes of events files relayed to the container's watchers (inotify).", []string{"container"}, nil)
	descCPU    = prometheus.NewDesc("cgfs_container_cpu_seconds_total", "CPU time the container's cgroup used.", []string{"container"}, nil)
	descMem    = prometheus.NewDesc("cgfs_container_memory_bytes", "Memory the container's cgroup uses now.", []string{"container"}, nil)
	descMemMax = prometheus.NewDesc("cgfs_container_memory_limit_bytes", "The container's memory limit (absent when it has none).", []string{"container"}, nil)
	descPids   = prometheus.NewDesc("cgfs_container_pids", "Tasks in the container's cgroup now.", []string{"container"}, nil)
	descPidMax = prometheus.NewDesc("cgfs_container_pids_limit", "The container's task limit (absent when it has none).", []string{"container"}, nil)
	descFrozen = prometheus.NewDesc("cgfs_container_frozen", "Whether the container's cgroup is frozen (1) or not (0).", []string{"container"}, nil)
	descOOM    = prometheus.NewDesc("cgfs_container_oom_kills_total", "Processes the kernel's OOM killer killed in the container's cgroup.", []string{"container"}, nil)
	descHeld   = prometheus.NewDesc("cgfs_container_held", "What the container holds of the server now, by bound: open files, nested views, relayed events files, pid namespace helpers.", []string{"container", "resource"}, nil)
	descBound  = prometheus.NewDesc("cgfs_container_bound", "The container's bound of each resource of the server it holds.", []string{"container", "resource"}, nil)
)

// Describe sends nothing: the collector is unchecked, as its series
// come and go with the views and their cgroups' files.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	views := m.snapshot()
	ch <- prometheus.MustNewConstMetric(descViews, prometheus.GaugeValue, float64(len(views)))
	seen := map[string]bool{}
	// Each container's files are read by a few workers at once: the
	// reads are system calls, and a scrape of 1,000 containers makes
	// 7,000 of them.
	work := make(chan *View)
	var wg sync.WaitGroup
	for range max(2, 2*runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := range work {
				Use(v.V2, v.V1).send(ch, v.Container)
			}
		}()
	}
	for _, v := range views {
		if seen[v.Container] {
			continue // one container's views: counted once
		}
		seen[v.Container] = true
		up := 1.0
		if v.Up != nil && !v.Up() {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, v.Container)
		if v.Leaves != nil {
			now, made, folded := v.Leaves()
			ch <- prometheus.MustNewConstMetric(descLeaves, prometheus.GaugeValue, float64(now), v.Container)
			ch <- prometheus.MustNewConstMetric(descLeafEv, prometheus.CounterValue, float64(made), v.Container, "created")
			ch <- prometheus.MustNewConstMetric(descLeafEv, prometheus.CounterValue, float64(folded), v.Container, "folded")
		}
		if v.Relayed != nil {
			ch <- prometheus.MustNewConstMetric(descRelay, prometheus.CounterValue, float64(v.Relayed()), v.Container)
		}
		if v.Budget != nil {
			for res, b := range v.Budget() {
				ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, b[0], v.Container, res)
				ch <- prometheus.MustNewConstMetric(descBound, prometheus.GaugeValue, b[1], v.Container, res)
			}
		}
		work <- v
	}
	close(work)
	wg.Wait()
	m.mu.Lock()
	sources := slices.Clone(m.sources)
	m.mu.Unlock()
	for _, s := range sources {
		typ := prometheus.GaugeValue
		if s.Counter {
			typ = prometheus.CounterValue
		}
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(s.Name, s.Help, nil, nil), typ, s.Read())
	}
}

// Usage is what a container uses, as its host cgroup files say; a
// missing value (no such controller, no limit) is nil. cgfs stats shows
// it to a user, /metrics to the admin.
type Usage struct {
	CPUSeconds, Memory, MemoryMax, Pids, PidsMax, Frozen, OOMKills *float64
}

func (u Usage) send(ch chan<- prometheus.Metric, name string) {
	for _, s := range []struct {
		d   *prometheus.Desc
		typ prometheus.ValueType
		v   *float64
	}{
		{descCPU, prometheus.CounterValue, u.CPUSeconds}, {descMem, prometheus.GaugeValue, u.Memory},
		{descMemMax, prometheus.GaugeValue, u.MemoryMax}, {descPids, prometheus.GaugeValue, u.Pids},
		{descPidMax, prometheus.GaugeValue, u.PidsMax}, {descFrozen, prometheus.GaugeValue, u.Frozen},
		{descOOM, prometheus.CounterValue, u.OOMKills},
	} {
		if s.v != nil {
			ch <- prometheus.MustNewConstMetric(s.d, s.typ, *s.v, name)
		}
	}
}

// Use reads a container's use from its host cgroups: v2 (its cgroup on
// the cgroup v2 hierarchy, "" if none) first, v1 (its cgroups on v1
// hierarchies by controller: memory, cpuacct, pids, freezer) for what v2
// does not have (a hybrid host keeps controllers on v1).
func Use(v2 string, v1 map[string]string) Usage {
	var u Usage
	if d := v2; d != "" {
		u.CPUSeconds = scaled(keyed(filepath.Join(d, "cpu.stat"))["usage_usec"], 1e-6)
		u.Memory, u.MemoryMax = value(filepath.Join(d, "memory.current")), value(filepath.Join(d, "memory.max"))
		u.OOMKills = keyed(filepath.Join(d, "memory.events"))["oom_kill"]
		u.Pids, u.PidsMax = value(filepath.Join(d, "pids.current")), value(filepath.Join(d, "pids.max"))
		u.Frozen = keyed(filepath.Join(d, "cgroup.events"))["frozen"]
	}
	if d := v1["cpuacct"]; d != "" && u.CPUSeconds == nil {
		u.CPUSeconds = scaled(value(filepath.Join(d, "cpuacct.usage")), 1e-9)
	}
	if d := v1["memory"]; d != "" && u.Memory == nil {
		u.Memory = value(filepath.Join(d, "memory.usage_in_bytes"))
		// v1 says "no limit" with the largest page-aligned number.
		if lim := value(filepath.Join(d, "memory.limit_in_bytes")); lim != nil && *lim < 1<<62 {
			u.MemoryMax = lim
		}
		u.OOMKills = keyed(filepath.Join(d, "memory.oom_control"))["oom_kill"]
	}
	if d := v1["pids"]; d != "" && u.Pids == nil {
		u.Pids, u.PidsMax = value(filepath.Join(d, "pids.current")), value(filepath.Join(d, "pids.max"))
	}
	if d := v1["freezer"]; d != "" && u.Frozen == nil {
		if b, err := os.ReadFile(filepath.Join(d, "freezer.state")); err == nil {
			f := 0.0
			if strings.TrimSpace(string(b)) == "FROZEN" {
				f = 1
			}
			u.Frozen = &f
		}
	}
	return u
}

func scaled(v *float64, by float64) *float64 {
	if v == nil {
		return nil
	}
	s := *v * by
	return &s
}

// value reads a one-number cgroup file; "max" (no limit) and a missing
// file are nil.
func value(path string) *float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		return nil
	}
	return &f
}

// keyed reads a flat-keyed cgroup file.
func keyed(path string) map[string]*float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	out := map[string]*float64{}
	for k, n := range host.Keyed(b) {
		f := float64(n)
		out[k] = &f
	}
	return out
}
