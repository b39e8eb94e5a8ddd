package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics is what one server (cgfs mount, run or daemon) exposes.
type Metrics struct {
	// requests counts FUSE requests by container, operation and result
	// ("ok" or the errno name the container got).
	requests *prometheus.CounterVec
	// latency is the time a request takes the server, by operation
	// (classic buckets and a native histogram).
	latency *prometheus.HistogramVec
	// refusals counts requests refused by a rule (of access, or one of
	// the answers cgfs makes itself), by container, rule and operation.
	refusals *prometheus.CounterVec
	// userRefusals counts requests of users the user socket refused, by
	// rule.
	userRefusals *prometheus.CounterVec

	mu    sync.Mutex
	views []*View
	// sources are the server's own counters, read at scrape time.
	sources []Source
}

// latencyBuckets span a FUSE request here: tens of µs to a slow host
// read of a big task file.
var latencyBuckets = []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3, 250e-3, 1}

// New creates the metrics and registers them with reg, with the Go
// runtime's and the process's collectors.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cgfs",
			Name:      "requests_total",
			Help:      "FUSE requests served, by container, operation and result (ok or the errno name the container got).",
		}, []string{"container", "op", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace:                       "cgfs",
			Name:                            "request_duration_seconds",
			Help:                            "Time the server took for a FUSE request, by operation.",
			Buckets:                         latencyBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"op"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cgfs",
			Name:      "refusals_total",
			Help:      "Requests refused by a rule, by container, rule and operation.",
		}, []string{"container", "rule", "op"}),
	}
	m.userRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "cgfs",
		Name:      "user_refusals_total",
		Help:      "Requests of unprivileged users the daemon's user socket refused, by rule.",
	}, []string{"rule"})
	reg.MustRegister(m.requests, m.latency, m.refusals, m.userRefusals, (*collector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Counts are the counters of one container's views, labelled with its
// name. A nil *Counts counts nothing.
type Counts struct {
	m    *Metrics
	name atomic.Pointer[string]
}

// For returns the counters of the container called name. Names are
// labels: a container's name, never a path or a pid.
func (m *Metrics) For(name string) *Counts {
	if m == nil {
		return nil
	}
	c := &Counts{m: m}
	c.name.Store(&name)
	return c
}

// Relabel counts what comes from now on as the container called name
// (its label was shown already: its unique name stands in).
func (c *Counts) Relabel(name string) {
	if c != nil {
		c.name.Store(&name)
	}
}

// Request counts one request of op with its result ("ok" or an errno
// name) and the time it took.
func (c *Counts) Request(op, result string, took time.Duration) {
	if c == nil {
		return
	}
	c.m.requests.WithLabelValues(*c.name.Load(), op, result).Inc()
	c.m.latency.WithLabelValues(op).Observe(took.Seconds())
}

// Refusal counts one refusal by rule.
func (c *Counts) Refusal(rule, op string) {
	if c == nil {
		return
	}
	c.m.refusals.WithLabelValues(*c.name.Load(), rule, op).Inc()
}

// Forget deletes the series of the container called name: a server that
// serves containers come and gone (a daemon, a node's pods) would
// otherwise keep every name's for its life.
func (m *Metrics) Forget(name string) {
	if m == nil {
		return
	}
	m.requests.DeletePartialMatch(prometheus.Labels{"container": name})
	m.refusals.DeletePartialMatch(prometheus.Labels{"container": name})
}

// UserRefusal counts one request of a user's refused by rule.
func (m *Metrics) UserRefusal(rule string) {
	if m == nil {
		return
	}
	m.userRefusals.WithLabelValues(rule).Inc()
}
