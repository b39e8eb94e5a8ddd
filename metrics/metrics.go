package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts what the views of one server do.
type Metrics struct {
	// operations counts FUSE operations that changed something or
	// failed, by view, operation and result (an errno name, or "ok").
	// Reads that succeed are not counted.
	operations *prometheus.CounterVec
	// refusals counts requests refused by a rule (of access, or one of
	// the answers cgfs makes itself), by view, rule and operation.
	refusals *prometheus.CounterVec
}

// New creates the metrics and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cgfs",
			Name:      "operations_total",
			Help:      "Operations that changed something or failed, by view, operation and result (ok or an errno name).",
		}, []string{"view", "op", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cgfs",
			Name:      "refusals_total",
			Help:      "Requests refused by a rule, by view, rule and operation.",
		}, []string{"view", "rule", "op"}),
	}
	reg.MustRegister(m.operations, m.refusals)
	return m
}

// Counts are the counters of one view (or mount), labelled with its
// name.
type Counts struct {
	m    *Metrics
	name string
}

// For returns the counters of the view called name (its host cgroup).
func (m *Metrics) For(name string) *Counts {
	if m == nil {
		return nil
	}
	return &Counts{m: m, name: name}
}

// Operation counts one operation with its result ("ok" or an errno
// name).
func (c *Counts) Operation(op, result string) {
	if c == nil {
		return
	}
	c.m.operations.WithLabelValues(c.name, op, result).Inc()
}

// Refusal counts one refusal by rule.
func (c *Counts) Refusal(rule, op string) {
	if c == nil {
		return
	}
	c.m.refusals.WithLabelValues(c.name, rule, op).Inc()
}
