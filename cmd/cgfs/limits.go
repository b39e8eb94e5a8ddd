package main

import (
	"errors"
	"flag"
	"fmt"
	"math/big"
	"strconv"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
)

// limitFlags adds --memory, --pids and --cpus to fl, for cgfs run, a
// user's cgfs update and cgfs lxc-hook alike; what it returns, called once
// fl is parsed, is the limits they give, or a usage error that names the
// flag, its value and why: a value the kernel would refuse (as
// tg_set_cfs_bandwidth and pids_max_write do) is refused here, before
// anything is made.
func limitFlags(fl *flag.FlagSet) func() (cgroups.Limits, error) {
	memory := fl.String("memory", "", "memory limit in `bytes` (K, M, G suffixes)")
	pids := fl.String("pids", "0", "most `tasks` the container may have (0: no limit)")
	cpus := fl.String("cpus", "0", "CPU bandwidth in `CPUs` (0.5 is half of one; 0: no limit)")
	return func() (cgroups.Limits, error) {
		var l cgroups.Limits
		if *memory != "" {
			n, err := users.ParseBytes(*memory)
			if err != nil {
				return l, usageError{fmt.Sprintf("--memory %s: %v", *memory, err)}
			}
			l.Memory = n
		}
		n, err := strconv.ParseInt(*pids, 0, 64)
		switch {
		case err != nil:
			return l, usageError{fmt.Sprintf("--pids %s: not a whole number of tasks", *pids)}
		case n < 0:
			return l, usageError{fmt.Sprintf("--pids %s: a number of tasks of at least 0 (0: no limit)", *pids)}
		}
		if err := cgroups.CheckPids(n); err != nil {
			return l, usageError{fmt.Sprintf("--pids %s: %v", *pids, err)}
		}
		l.Pids = n
		c, err := strconv.ParseFloat(*cpus, 64)
		switch {
		case errors.Is(err, strconv.ErrRange):
			return l, usageError{fmt.Sprintf("--cpus %s: not a finite number of CPUs", *cpus)}
		case err != nil:
			return l, usageError{fmt.Sprintf("--cpus %s: not a number of CPUs", *cpus)}
		case c < 0:
			return l, usageError{fmt.Sprintf("--cpus %s: a number of CPUs of at least 0 (0: no limit)", *cpus)}
		case c != 0 || nonZero(*cpus):
			if _, err := cgroups.CPUQuota(c); err != nil {
				return l, usageError{fmt.Sprintf("--cpus %s: %v", *cpus, err)}
			}
		}
		l.CPUs = c
		return l, nil
	}
}

// nonZero reports whether s is a number other than 0, one too small for
// a float64 (1e-400) among them.
func nonZero(s string) bool {
	f, ok := new(big.Float).SetString(s)
	return ok && f.Sign() != 0
}
