package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
)

// lxcLimits are the limits an LXC config's cgroup keys ask for (v2's
// lxc.cgroup2.memory.max, pids.max and cpu.max, and v1's
// lxc.cgroup.memory.limit_in_bytes, pids.max and cpu.cfs_quota_us over
// cpu.cfs_period_us), which LXC skips for an ordinary user's container
// it has no cgroup for: cgfs lxc-hook makes them the container's. Only
// the file itself is read (not its lxc.include files); "max", -1 and a
// key given empty mean no limit; the last line of a key counts, as in
// LXC.
func lxcLimits(r io.Reader) (cgroups.Limits, error) {
	var l cgroups.Limits
	var quota, period int64 = 0, 100000
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		bad := func(want string) error {
			return usageError{fmt.Sprintf("LXC config line %d: %s = %s: %s", n, k, v, want)}
		}
		none := v == "" || v == "max" || v == "-1"
		switch k {
		case "lxc.cgroup2.memory.max", "lxc.cgroup.memory.limit_in_bytes":
			l.Memory = 0
			if !none {
				b, err := users.ParseBytes(v)
				if err != nil {
					return l, bad("a number of bytes (K, M, G suffixes) or max")
				}
				l.Memory = b
			}
		case "lxc.cgroup2.pids.max", "lxc.cgroup.pids.max":
			l.Pids = 0
			if !none {
				p, err := strconv.ParseInt(v, 10, 64)
				if err != nil || p <= 0 {
					return l, bad("a number of tasks above 0 or max")
				}
				l.Pids = p
			}
		case "lxc.cgroup2.cpu.max":
			q, p, _ := strings.Cut(v, " ")
			quota, period = 0, 100000
			if q != "" && q != "max" {
				var err error
				if quota, err = strconv.ParseInt(q, 10, 64); err != nil || quota <= 0 {
					return l, bad("QUOTA [PERIOD] in microseconds, or max")
				}
			}
			if p = strings.TrimSpace(p); p != "" {
				var err error
				if period, err = strconv.ParseInt(p, 10, 64); err != nil || period <= 0 {
					return l, bad("QUOTA [PERIOD] in microseconds, or max")
				}
			}
		case "lxc.cgroup.cpu.cfs_quota_us":
			quota = 0
			if !none {
				var err error
				if quota, err = strconv.ParseInt(v, 10, 64); err != nil || quota <= 0 {
					return l, bad("microseconds above 0, or -1")
				}
			}
		case "lxc.cgroup.cpu.cfs_period_us":
			p, err := strconv.ParseInt(v, 10, 64)
			if err != nil || p <= 0 {
				return l, bad("microseconds above 0")
			}
			period = p
		}
	}
	if err := s.Err(); err != nil {
		return l, err
	}
	if quota > 0 {
		l.CPUs = float64(quota) / float64(period)
	}
	return l, nil
}

// over is l with what o gives (its non-zero limits) in their place.
func over(l, o cgroups.Limits) cgroups.Limits {
	if o.Memory != 0 {
		l.Memory = o.Memory
	}
	if o.Pids != 0 {
		l.Pids = o.Pids
	}
	if o.CPUs != 0 {
		l.CPUs = o.CPUs
	}
	return l
}
