package main

import (
	"strings"
	"testing"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
)

func TestLXCLimits(t *testing.T) {
	for _, c := range []struct {
		config string
		want   cgroups.Limits
		err    string
	}{
		{"", cgroups.Limits{}, ""},
		{"lxc.cgroup2.memory.max = 32M\nlxc.cgroup2.pids.max = 40\nlxc.cgroup2.cpu.max = 50000 100000\n", cgroups.Limits{Memory: 32 << 20, Pids: 40, CPUs: 0.5}, ""},
		{"lxc.cgroup.memory.limit_in_bytes = 1G\nlxc.cgroup.pids.max=7\nlxc.cgroup.cpu.cfs_quota_us = 200000\nlxc.cgroup.cpu.cfs_period_us = 100000\n", cgroups.Limits{Memory: 1 << 30, Pids: 7, CPUs: 2}, ""},
		// The last line of a key counts; max and -1 lift it.
		{"lxc.cgroup2.memory.max = 32M\nlxc.cgroup2.memory.max = max\nlxc.cgroup2.pids.max = 9\n", cgroups.Limits{Pids: 9}, ""},
		{"lxc.cgroup2.cpu.max = 25000\n", cgroups.Limits{CPUs: 0.25}, ""},
		{"lxc.cgroup2.cpu.max = max 100000\n", cgroups.Limits{}, ""},
		{"lxc.cgroup.cpu.cfs_quota_us = -1\n", cgroups.Limits{}, ""},
		// Comments, other keys and lines without = are LXC's own.
		{"# lxc.cgroup2.memory.max = 1M\nlxc.uts.name = x\nlxc.cgroup2.memory.high = 1M\nnonsense\n", cgroups.Limits{}, ""},
		{"lxc.cgroup2.memory.max = lots\n", cgroups.Limits{}, "line 1: lxc.cgroup2.memory.max = lots"},
		{"\nlxc.cgroup2.pids.max = 0\n", cgroups.Limits{}, "line 2: lxc.cgroup2.pids.max = 0"},
		{"lxc.cgroup2.cpu.max = 1 0\n", cgroups.Limits{}, "lxc.cgroup2.cpu.max = 1 0"},
		{"lxc.cgroup.cpu.cfs_period_us = x\n", cgroups.Limits{}, "cfs_period_us = x"},
	} {
		got, err := lxcLimits(strings.NewReader(c.config))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("lxcLimits(%q) = %+v, %v; want an error naming %q", c.config, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("lxcLimits(%q) = %+v, %v; want %+v", c.config, got, err, c.want)
		}
	}
}

func TestLimitsOver(t *testing.T) {
	got := over(cgroups.Limits{Memory: 1, Pids: 2, CPUs: 3}, cgroups.Limits{Pids: 5})
	if want := (cgroups.Limits{Memory: 1, Pids: 5, CPUs: 3}); got != want {
		t.Errorf("over = %+v, want %+v", got, want)
	}
}

func TestHumanBytes(t *testing.T) {
	for v, want := range map[float64]string{0: "0B", 1023: "1023B", 1024: "1KiB", 557056: "544KiB", 64 << 20: "64MiB", 1.5 * (1 << 30): "1.5GiB", 1 << 50: "1024TiB"} {
		if got := humanBytes(v); got != want {
			t.Errorf("humanBytes(%v) = %s, want %s", v, got, want)
		}
	}
}
