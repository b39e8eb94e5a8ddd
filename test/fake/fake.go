// Package fake builds directory trees shaped like cgroup2 subtrees in
// temporary directories, seeded with the text Linux 6.18 shows, for unit
// tests (integration tests use real cgroups).
package fake

import (
	"os"
	"path/filepath"
	"testing"
)

// Files is the text of a cgroup2 directory's core files as Linux 6.18
// shows them for a fresh child cgroup.
var Files = map[string]string{
	"cgroup.controllers":     "hugetlb\n",
	"cgroup.events":          "populated 0\nfrozen 0\n",
	"cgroup.freeze":          "0\n",
	"cgroup.max.depth":       "max\n",
	"cgroup.max.descendants": "max\n",
	"cgroup.procs":           "",
	"cgroup.stat":            "nr_descendants 0\nnr_dying_descendants 0\n",
	"cgroup.subtree_control": "\n",
	"cgroup.threads":         "",
	"cgroup.type":            "domain\n",
}

// Hierarchy builds, in a new temporary directory removed after the test,
// the cgroups dirs ("" is the root), each holding Files, and returns its
// path.
func Hierarchy(t testing.TB, dirs ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, dir := range dirs {
		Cgroup(t, filepath.Join(root, dir), Files)
	}
	return root
}

// Cgroup makes the directory dir (and its parents) holding files.
func Cgroup(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range files {
		Write(t, filepath.Join(dir, name), text)
	}
}

// Write sets the text of a fake control file.
func Write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
