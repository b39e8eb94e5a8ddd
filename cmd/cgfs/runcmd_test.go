package main

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// TestParseRunRefusesBadInput: each mistake is a usage error (exit 2)
// that names the flag, before anything is made.
func TestParseRunRefusesBadInput(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--"},
		{"--memory", "garbage", "--", "sh"},
		{"--memory", "-5", "--", "sh"},
		{"--memory", "99999999999G", "--", "sh"},
		{"--pids", "-1", "--", "sh"},
		{"--cpus", "-0.5", "--", "sh"},
		{"--map", "5", "--", "sh"},
		{"--map", "0:10", "--", "sh"},
		{"--map", "4294967290:65536", "--", "sh"},
		{"--name", "a/b", "--", "sh"},
		{"--name", "..", "--", "sh"},
		{"--name", "x\ny", "--", "sh"},
		{"--parent", "../etc", "--", "sh"},
		{"--parent", "a/../../b", "--", "sh"},
		{"--parent", "/", "--", "sh"},
		{"--bogus", "--", "sh"},
	} {
		_, err := parseRun(args, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("cgfs run %q: %v, want a usage error", args, err)
		}
	}
}

func TestParseRunReadsWhatItIsGiven(t *testing.T) {
	o, err := parseRun([]string{"--name", "web", "--parent", "/pods//a/", "--memory", "64M", "--pids", "20", "--cpus", "0.5", "--map", "200000:1000", "--", "sh", "-c", "x"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Name != "web" || o.Parent != "pods/a" || o.Limits.Memory != 64<<20 || o.Limits.Pids != 20 || o.Limits.CPUs != 0.5 ||
		o.Map.HostID != 200000 || o.Map.Count != 1000 || len(o.Cmd) != 3 {
		t.Errorf("parsed %+v", o)
	}
}

// TestLimitFlagsSayWhy: a limit the kernel would refuse (or that is no
// number at all) is a usage error, before anything is made, that names
// the flag, its value and why; the bounds themselves are taken. The
// parser is the one of run, update and lxc-hook.
func TestLimitFlagsSayWhy(t *testing.T) {
	for _, c := range []struct {
		name, flag, value string
		want              string // "" for taken
	}{
		{"NaN", "--cpus", "NaN", "--cpus NaN: not a finite number of CPUs"},
		{"Inf", "--cpus", "Inf", "--cpus Inf: not a finite number of CPUs"},
		{"minus Inf", "--cpus", "-Inf", "--cpus -Inf: a number of CPUs of at least 0 (0: no limit)"},
		{"past float64", "--cpus", "1e400", "--cpus 1e400: not a finite number of CPUs"},
		{"1e300", "--cpus", "1e300", "--cpus 1e300: more than the kernel's most, 175921860 CPUs (a quota of 2^44-1us per 100000us period)"},
		{"above the quota's most", "--cpus", "175921861", "--cpus 175921861: more than the kernel's most"},
		{"the quota's most", "--cpus", "175921860", ""},
		{"below 1ms a period", "--cpus", "0.001", "--cpus 0.001: less than the kernel's least, 0.01 CPUs"},
		{"below a float64", "--cpus", "1e-400", "--cpus 1e-400: less than the kernel's least"},
		{"1ms a period", "--cpus", "0.01", ""},
		{"no CPU limit", "--cpus", "0", ""},
		{"negative CPUs", "--cpus", "-0.5", "--cpus -0.5: a number of CPUs of at least 0"},
		{"no number of CPUs", "--cpus", "half", "--cpus half: not a number of CPUs"},
		{"negative tasks", "--pids", "-1", "--pids -1: a number of tasks of at least 0"},
		{"past PID_MAX_LIMIT", "--pids", "4194305", "--pids 4194305: more than the kernel's most, 4194304 tasks"},
		{"PID_MAX_LIMIT", "--pids", "4194304", ""},
		{"one task", "--pids", "1", ""},
		{"no whole number of tasks", "--pids", "1.5", "--pids 1.5: not a whole number of tasks"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseRun([]string{c.flag, c.value, "--", "sh"}, io.Discard)
			if c.want == "" {
				if err != nil {
					t.Errorf("cgfs run %s %s: %v, want it taken", c.flag, c.value, err)
				}
				return
			}
			var ue usageError
			if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), c.want) {
				t.Errorf("cgfs run %s %s: %v, want a usage error %q", c.flag, c.value, err, c.want)
			}
		})
	}
}
