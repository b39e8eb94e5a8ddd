package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCounts(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	v := m.For("/sys/fs/cgroup/c1")
	v.Operation("mkdir", "ok")
	v.Operation("mkdir", "ok")
	v.Operation("write", "EINVAL")
	v.Refusal("root-locked", "open")
	want := `
# HELP cgfs_operations_total Operations that changed something or failed, by view, operation and result (ok or an errno name).
# TYPE cgfs_operations_total counter
cgfs_operations_total{op="mkdir",result="ok",view="/sys/fs/cgroup/c1"} 2
cgfs_operations_total{op="write",result="EINVAL",view="/sys/fs/cgroup/c1"} 1
# HELP cgfs_refusals_total Requests refused by a rule, by view, rule and operation.
# TYPE cgfs_refusals_total counter
cgfs_refusals_total{op="open",rule="root-locked",view="/sys/fs/cgroup/c1"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	var nilView *Counts
	nilView.Operation("mkdir", "ok") // a view without metrics counts nothing, safely
}
