package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestBenchCommand runs `cgfs bench --quick` for real, as BENCHMARKS.md
// is made: every row gets a number through the kernel, the floor, the
// host root's view and the container's, the daemon's use is reported for
// each count of views, the file keeps a section it did not write, and
// nothing is left behind.
func TestBenchCommand(t *testing.T) {
	requireRoot(t)
	_, err := exec.LookPath("perl")
	laneNeeds(t, hostLane, err == nil, "no perl (the bench's task spawner; not in the VM's initramfs)")
	requireTool(t, "find")
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if err := os.WriteFile(out, []byte("# old\n\n## kept\n\nan earlier run\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cgfsBin, "bench", "--quick", "--views", "1,3", "--out", out, "--label", "quick test")
	cmd.Env = append(os.Environ(), "CGFS_BENCH_NS=") // the command makes its own mount namespace
	outb, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cgfs bench: %v\n%s", err, outb)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if !strings.HasPrefix(text, "# Benchmarks") || !strings.Contains(text, "## kept\n\nan earlier run\n") || !strings.Contains(text, "## quick test\n") {
		t.Fatalf("BENCHMARKS.md lacks the preamble, the kept section or the new one:\n%s", text)
	}
	rows := 0
	num := regexp.MustCompile(`^[0-9]+(\.[0-9])?$`)
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "| open") && !strings.HasPrefix(line, "| pread") && !strings.HasPrefix(line, "| mkdir") &&
			!strings.HasPrefix(line, "| readdir") && !strings.HasPrefix(line, "| find") && !strings.HasPrefix(line, "| v1:") {
			continue
		}
		rows++
		cells := strings.Split(line, "|")
		// | op | native | floor | cgfs host | ×n | ×f | cgfs container | ×n | ×f | ...
		for _, i := range []int{2, 3, 4, 7} {
			if c := strings.TrimSpace(cells[i]); !num.MatchString(c) {
				t.Errorf("%s: column %d is %q, not a time", strings.TrimSpace(cells[1]), i, c)
			}
		}
	}
	if rows < 11 {
		t.Errorf("%d rows in the table, want every operation:\n%s", rows, text)
	}
	for _, views := range []string{"| 1 |", "| 3 |"} {
		if !strings.Contains(text, views) {
			t.Errorf("no daemon row %q:\n%s", views, text)
		}
	}
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		left, _ := filepath.Glob(filepath.Join(root, "cgfs-bench-*"))
		if len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	}
	if m, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(m), "cgfs-floor") || strings.Contains(string(m), "cgfs-bench") {
		t.Errorf("a bench mount shows in the host's mount namespace")
	}
}
