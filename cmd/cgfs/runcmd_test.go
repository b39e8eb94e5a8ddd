package main

import (
	"errors"
	"io"
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
