//go:build linux

package agent

import (
	"strconv"
	"strings"
	"testing"
)

// The benchmarks run b.N iterations in a child (runBench) and report the
// child's time per iteration as ns/op (the child's start-up is not
// counted).

// benchChild runs op b.N times in a child served by an agent calling view
// a view, and reports the child's ns/op.
func benchChild(b *testing.B, op, path, view string) {
	requireRoot(b)
	c := startChild(b, "bench", "CGFS_BENCH_OP="+op, "CGFS_BENCH_N="+strconv.Itoa(b.N), "CGFS_BENCH_PATH="+path)
	if !strings.HasSuffix(op, "-unfiltered") {
		a := Serve(c.listener(b), Config{Magic: magicFor(b, view, cgroup2Magic)})
		defer a.Close()
	}
	c.wait(b)
	ns, err := strconv.ParseFloat(strings.TrimSpace(c.stdout.String()), 64)
	if err != nil {
		b.Fatalf("child said %q: %v", c.stdout.String(), err)
	}
	b.ReportMetric(ns, "ns/op")
}

// BenchmarkNotifiedStatfs: a statfs the agent answers (view), one it
// continues (not a view), and one without the filter.
func BenchmarkNotifiedStatfs(b *testing.B) {
	view, other := b.TempDir(), b.TempDir()
	b.Run("answered", func(b *testing.B) { benchChild(b, "statfs", view, view) })
	b.Run("continued", func(b *testing.B) { benchChild(b, "statfs", other, view) })
	b.Run("unfiltered", func(b *testing.B) { benchChild(b, "statfs-unfiltered", view, view) })
}

// BenchmarkUnnotifiedSyscall: getpid under the filter and without it.
func BenchmarkUnnotifiedSyscall(b *testing.B) {
	view := b.TempDir()
	b.Run("filtered", func(b *testing.B) { benchChild(b, "getpid", "", view) })
	b.Run("unfiltered", func(b *testing.B) { benchChild(b, "getpid-unfiltered", "", view) })
}
