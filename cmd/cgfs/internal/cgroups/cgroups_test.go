package cgroups

import (
	"os"
	"path/filepath"
	"testing"
)

func TestV1ByController(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, files ...string) string {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(d, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	mem := mk("memory", "memory.usage_in_bytes")
	cpu := mk("cpu,cpuacct", "cpuacct.usage", "cpu.shares")
	frz := mk("freezer", "freezer.state")
	v2 := mk("unified", "memory.current", "pids.current")
	cg := &Set{Dirs: map[string]string{"/m": mem, "/c": cpu, "/f": frz, "/u": v2}, V2: v2}
	got := cg.V1ByController()
	want := map[string]string{"memory": mem, "cpuacct": cpu, "freezer": frz}
	if len(got) != len(want) {
		t.Fatalf("V1ByController = %v, want %v (the v2 cgroup is not v1's)", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("V1ByController[%s] = %s, want %s", k, got[k], v)
		}
	}
}
