package layout

import (
	"testing"

	"github.com/prometheus/procfs"
)

func TestMountIs(t *testing.T) {
	memory := &procfs.MountInfo{FSType: "cgroup", SuperOptions: map[string]string{"rw": "", "memory": ""}}
	cpu := &procfs.MountInfo{FSType: "cgroup", SuperOptions: map[string]string{"cpu": "", "cpuacct": ""}}
	systemd := &procfs.MountInfo{FSType: "cgroup", SuperOptions: map[string]string{"none": "", "name": "systemd"}}
	unified := &procfs.MountInfo{FSType: "cgroup2", SuperOptions: map[string]string{"rw": ""}}
	for _, c := range []struct {
		name string
		m    *procfs.MountInfo
		line procfs.Cgroup
		want bool
	}{
		{"v2 line, cgroup2 mount", unified, procfs.Cgroup{HierarchyID: 0}, true},
		{"v2 line, v1 mount", memory, procfs.Cgroup{HierarchyID: 0}, false},
		{"memory line, memory mount", memory, procfs.Cgroup{HierarchyID: 3, Controllers: []string{"memory"}}, true},
		{"memory line, cgroup2 mount", unified, procfs.Cgroup{HierarchyID: 3, Controllers: []string{"memory"}}, false},
		{"cpu,cpuacct line", cpu, procfs.Cgroup{HierarchyID: 4, Controllers: []string{"cpu", "cpuacct"}}, true},
		{"cpu,cpuacct line, memory mount", memory, procfs.Cgroup{HierarchyID: 4, Controllers: []string{"cpu", "cpuacct"}}, false},
		{"name=systemd line", systemd, procfs.Cgroup{HierarchyID: 9, Controllers: []string{"name=systemd"}}, true},
		{"name=systemd line, memory mount", memory, procfs.Cgroup{HierarchyID: 9, Controllers: []string{"name=systemd"}}, false},
	} {
		if got := mountIs(c.m, c.line); got != c.want {
			t.Errorf("%s: mountIs = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLocateRefusesANonCgroup(t *testing.T) {
	if p, _, err := Locate(t.TempDir()); err == nil {
		t.Errorf("Locate(a temporary directory) = %q, want an error", p)
	}
}
