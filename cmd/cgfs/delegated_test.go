package main

import (
	"flag"
	"io"
	"testing"
)

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		"/sys/fs/cgroup":        "/sys/fs/cgroup",
		`/mnt/with\040space`:    "/mnt/with space",
		`/a\011tab\012nl\134bs`: "/a\ttab\nnl\\bs",
		`/trailing\04`:          `/trailing\04`,
		`/not\999octal`:         `/not\999octal`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseWithName(t *testing.T) {
	for _, c := range []struct {
		args []string
		name string
		json bool
		err  bool
	}{
		{nil, "", false, false},
		{[]string{"web"}, "web", false, false},
		{[]string{"web", "--json"}, "web", true, false},
		{[]string{"--json", "web"}, "web", true, false},
		{[]string{"--json"}, "", true, false},
		{[]string{"a", "b"}, "", false, true},
		{[]string{"--json", "a", "b"}, "", false, true},
		{[]string{"--nope"}, "", false, true},
	} {
		fl := flag.NewFlagSet("t", flag.ContinueOnError)
		fl.SetOutput(io.Discard)
		asJSON := fl.Bool("json", false, "")
		name, err := parseWithName(fl, c.args)
		if (err != nil) != c.err || (!c.err && (name != c.name || *asJSON != c.json)) {
			t.Errorf("parseWithName(%q) = %q (json %v), %v; want %q (json %v), error %v", c.args, name, *asJSON, err, c.name, c.json, c.err)
		}
	}
}
