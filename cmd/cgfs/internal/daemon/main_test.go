package daemon

import (
	"os"
	"strings"
	"testing"

	"github.com/cgfs/cgfs/translate/pidns"
)

func TestMain(m *testing.M) {
	if pidns.IsHelper() { // the test binary is the daemon's helper, as cgfs is
		os.Exit(pidns.HelperMain())
	}
	// A race-built process sleeps a second at its exit (the race
	// detector's atexit_sleep_ms) unless told not to: each pidns helper
	// the tests' daemons start and end would take that long.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	os.Exit(m.Run())
}
