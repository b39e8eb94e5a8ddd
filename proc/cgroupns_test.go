package proc

import "testing"

func TestNSRoot(t *testing.T) {
	for _, c := range []struct {
		outer, inner, root string
		ok                 bool
	}{
		{"/a/b", "/", "/a/b", true},
		{"/a/b/c", "/c", "/a/b", true},
		{"/a/b/c", "/b/c", "/a", true},
		{"/a/b", "/a/b", "/", true},
		{"/a/x", "/../x", "", false},
		{"/a/b", "/..", "", false},
		{"/a/b", "/c", "", false}, // moved between the reads
		{"/ab/c", "/b/c", "", false},
	} {
		root, ok := nsRoot(c.outer, c.inner)
		if root != c.root || ok != c.ok {
			t.Errorf("nsRoot(%q, %q) = %q, %v; want %q, %v", c.outer, c.inner, root, ok, c.root, c.ok)
		}
	}
}
