package main

import "testing"

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
