package serve

import (
	"testing"

	"github.com/cgfs/cgfs/fs"
	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/pidns"
)

// TestBudgetBounds: a container's budget takes the bounds it is given
// and the defaults for the others, and says what it holds of each.
func TestBudgetBounds(t *testing.T) {
	b := NewBudget(Bounds{OpenFiles: 16, NestedViews: 3})
	want := Bounds{OpenFiles: 16, NestedViews: 3, RelayWatches: fs.MaxRelayWatches, PidHelpers: pidns.MaxHelpers, InFlight: fs.MaxInFlight}
	if b.Bounds != want {
		t.Errorf("NewBudget: bounds %+v, want %+v", b.Bounds, want)
	}
	if d := NewBudget(Bounds{}).Bounds.OpenFiles; d != translate.DefaultOpenFiles {
		t.Errorf("default open files %d, want %d", d, translate.DefaultOpenFiles)
	}
	held := b.Held(nil)
	for _, res := range []string{"open_files", "relay_watches", "pid_helpers"} {
		if h, ok := held[res]; !ok || h[0] != 0 {
			t.Errorf("Held()[%s] = %v, %v; want nothing held", res, h, ok)
		}
	}
	if held["open_files"][1] != 16 {
		t.Errorf("the open files bound is %v, want 16", held["open_files"][1])
	}
	if _, ok := held["nested_views"]; ok {
		t.Error("nested views held without a Nested")
	}
}
