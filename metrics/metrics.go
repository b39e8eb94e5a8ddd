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
	// refusals counts requests refused by access rules, by view, rule
	// and operation.
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
			Help:      "Requests refused by an access rule, by view, rule and operation.",
		}, []string{"view", "rule", "op"}),
	}
	reg.MustRegister(m.operations, m.refusals)
	return m
}

// View is the metrics of one view, labelled with its name.
type View struct {
	m    *Metrics
	name string
}

// View returns the metrics of the view called name (its host cgroup).
func (m *Metrics) View(name string) *View {
	if m == nil {
		return nil
	}
	return &View{m: m, name: name}
}

// Operation counts one operation with its result ("ok" or an errno
// name).
func (v *View) Operation(op, result string) {
	if v == nil {
		return
	}
	v.m.operations.WithLabelValues(v.name, op, result).Inc()
}

// Refusal counts one refusal by rule.
func (v *View) Refusal(rule, op string) {
	if v == nil {
		return
	}
	v.m.refusals.WithLabelValues(v.name, rule, op).Inc()
}
