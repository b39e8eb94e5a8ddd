package main

import (
	"flag"
	"fmt"
	"math"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
)

// limitFlags adds --memory, --pids and --cpus to fl, for cgfs run, a
// user's cgfs update and cgfs lxc-hook alike; what it returns, called once
// fl is parsed, is the limits they give, or a usage error.
func limitFlags(fl *flag.FlagSet) func() (cgroups.Limits, error) {
	memory := fl.String("memory", "", "memory limit in `bytes` (K, M, G suffixes)")
	pids := fl.Int64("pids", 0, "most `tasks` the container may have")
	cpus := fl.Float64("cpus", 0, "CPU bandwidth in `CPUs` (0.5 is half of one)")
	return func() (cgroups.Limits, error) {
		l := cgroups.Limits{Pids: *pids, CPUs: *cpus}
		if *memory != "" {
			n, err := users.ParseBytes(*memory)
			if err != nil {
				return l, usageError{fmt.Sprintf("--memory %s: %v", *memory, err)}
			}
			l.Memory = n
		}
		if l.Pids < 0 || l.CPUs < 0 || math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0) {
			return l, usageError{"--pids and --cpus want numbers of at least 0"}
		}
		return l, nil
	}
}
