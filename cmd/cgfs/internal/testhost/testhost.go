// Package testhost is what the unit tests of cgfs's command packages
// share: the host they need (host root, and its proc filesystem and
// cgroup layout) and a log they read while the code under test writes
// to it from its goroutines.
package testhost

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/layout"
)

// NeedRoot skips t without host root, saying what needs it; under
// CI=true it fails t instead: CI must never pass by skipping.
func NeedRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: %s needs root", what)
	}
	t.Skipf("%s needs root", what)
}

// Host opens the host's /proc (closed when t ends) and finds how the
// host mounts its cgroup hierarchies. A host with none skips t (fails it
// under CI=true).
func Host(t testing.TB) (*proc.Procs, layout.Layout) {
	t.Helper()
	procs, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { procs.Close() })
	l, err := layout.Discover(procs)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: no cgroup hierarchies: %v", err)
		}
		t.Skipf("no cgroup hierarchies: %v", err)
	}
	return procs, l
}

// Log is a log the code under test writes from its goroutines (maybe
// after the test ended) and the test reads.
type Log struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is what was written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count is how many times s occurs in what was written so far.
func (l *Log) Count(s string) int { return strings.Count(l.String(), s) }
