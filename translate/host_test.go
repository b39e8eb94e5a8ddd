package translate

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// cgroupFiles is the text of a cgroup2 directory's core files as Linux
// 6.18 shows them for a fresh child cgroup.
var cgroupFiles = map[string]string{
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

// fakeHierarchy builds a directory tree shaped like a cgroup2 subtree:
// root with children a and a/b, each holding the core files.
func fakeHierarchy(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, dir := range []string{"", "a", "a/b"} {
		d := filepath.Join(root, dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, text := range cgroupFiles {
			if err := os.WriteFile(filepath.Join(d, name), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func openFake(t *testing.T) (*Host, string) {
	t.Helper()
	dir := fakeHierarchy(t)
	h, err := OpenHost(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, dir
}

func TestReadDirSortedWithInodes(t *testing.T) {
	h, dir := openFake(t)
	entries, err := h.ReadDir("a")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, "a", e.Name), &st); err != nil {
			t.Fatal(err)
		}
		if e.Ino != st.Ino || e.Mode != st.Mode {
			t.Errorf("entry %s: ino %d mode %o, host has ino %d mode %o", e.Name, e.Ino, e.Mode, st.Ino, st.Mode)
		}
	}
	want := []string{"b", "cgroup.controllers", "cgroup.events", "cgroup.freeze", "cgroup.max.depth",
		"cgroup.max.descendants", "cgroup.procs", "cgroup.stat", "cgroup.subtree_control",
		"cgroup.threads", "cgroup.type"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("ReadDir(a) = %v, want %v", names, want)
	}
}

func TestOpenReadsHostText(t *testing.T) {
	h, dir := openFake(t)
	if err := os.WriteFile(filepath.Join(dir, "a/b/cgroup.events"), []byte("populated 1\nfrozen 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := h.Open("a/b/cgroup.events", unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 100)
	n, _ := f.Read(buf)
	if got := string(buf[:n]); got != "populated 1\nfrozen 1\n" {
		t.Errorf("read %q", got)
	}
}

// TestNamesCannotLeaveTheRoot is the CVE-2015-1342 class: no name, however
// built, resolves outside the host root.
func TestNamesCannotLeaveTheRoot(t *testing.T) {
	h, dir := openFake(t)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "a", "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("cgroup.procs", filepath.Join(dir, "a", "filelink")); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(dir, filepath.Join(outside, "secret"))
	cases := []struct {
		name string
		path string
		want error
	}{
		{"dotdot", "../x", unix.EXDEV},
		{"dotdot to a real file", rel, unix.EXDEV},
		{"deep dotdot", "a/b/../../../x", unix.EXDEV},
		{"absolute", "/etc/passwd", unix.EXDEV},
		{"symlink to outside", "a/link/secret", unix.ELOOP},
		{"symlink inside", "a/filelink", unix.ELOOP},
		{"proc magic link", "/proc/self/root/etc/passwd", unix.EXDEV},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := h.Open(c.path, unix.O_RDONLY)
			if err == nil {
				f.Close()
				t.Fatalf("Open(%q) succeeded, want %v", c.path, c.want)
			}
			if !errors.Is(err, c.want) {
				t.Errorf("Open(%q) = %v, want %v", c.path, err, c.want)
			}
			if _, err := h.Stat(c.path); !errors.Is(err, c.want) {
				t.Errorf("Stat(%q) = %v, want %v", c.path, err, c.want)
			}
		})
	}
}

func TestMkdirRmdir(t *testing.T) {
	h, dir := openFake(t)
	if err := h.Mkdir("a", "new", 0o755); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a/new")); err != nil || !fi.IsDir() {
		t.Fatalf("host has no a/new after Mkdir: %v", err)
	}
	if err := h.Mkdir("a", "new", 0o755); !errors.Is(err, unix.EEXIST) {
		t.Errorf("second Mkdir = %v, want EEXIST", err)
	}
	if err := h.Rmdir("a", "new"); err != nil {
		t.Fatal(err)
	}
	if err := h.Rmdir("a", "new"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("second Rmdir = %v, want ENOENT", err)
	}
	var he *Error
	err := h.Rmdir("a", "b")
	if !errors.As(err, &he) || he.Op != "rmdir" || he.Path != "a/b" {
		t.Errorf("Rmdir(a, b) = %v, want an *Error naming rmdir a/b", err)
	}
}

func TestValidName(t *testing.T) {
	cases := []struct {
		name string
		want error
	}{
		{"child", nil},
		{"with space", nil},
		{"ünïcode", nil},
		{strings.Repeat("x", 255), nil},
		{strings.Repeat("x", 256), unix.ENAMETOOLONG},
		{"", unix.EINVAL},
		{".", unix.EINVAL},
		{"..", unix.EINVAL},
		{"a/b", unix.EINVAL},
		{"a\nb", unix.EINVAL},
		{"a\x00b", unix.EINVAL},
	}
	for _, c := range cases {
		if got := ValidName(c.name); got != c.want {
			t.Errorf("ValidName(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestViewRefusesOddNamesWithoutTouchingHost(t *testing.T) {
	h, dir := openFake(t)
	v := NewView(h, ViewConfig{})
	before, _ := os.ReadDir(dir)
	for _, name := range []string{"..", "a\nb", strings.Repeat("y", 300), "x/y"} {
		if _, err := v.Mkdir("", name, 0o755, 0, 0); err == nil {
			t.Errorf("Mkdir(%q) succeeded", name)
		}
		if _, err := v.Lookup("", name); err == nil {
			t.Errorf("Lookup(%q) succeeded", name)
		}
	}
	after, _ := os.ReadDir(dir)
	if len(before) != len(after) {
		t.Errorf("host root changed: %d entries before, %d after", len(before), len(after))
	}
}

func TestOpenDropsCreate(t *testing.T) {
	h, dir := openFake(t)
	v := NewView(h, ViewConfig{})
	if _, err := v.Open("a/nothere", unix.O_WRONLY|unix.O_CREAT); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Open(O_CREAT) of a missing file = %v, want ENOENT", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a/nothere")); !os.IsNotExist(err) {
		t.Errorf("host file was created: %v", err)
	}
	f, err := v.Open("a/cgroup.freeze", unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC)
	if err != nil {
		t.Fatalf("Open(O_WRONLY|O_CREAT|O_TRUNC) = %v", err)
	}
	f.Close()
}

func TestParseIDs(t *testing.T) {
	cases := []struct {
		in   string
		want []int
	}{
		{"", []int{}},
		{"1\n", []int{1}},
		{"12\n7\n300000\n", []int{12, 7, 300000}},
		{"5", []int{5}},
	}
	for _, c := range cases {
		if got := parseIDs([]byte(c.in)); !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseIDs(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParsePid(t *testing.T) {
	cases := []struct {
		in   string
		want int
		err  error
	}{
		{"42", 42, nil},
		{" 42\n", 42, nil},
		{"0", 0, nil},
		{"", 0, unix.EINVAL},
		{"1 2", 0, unix.EINVAL},
		{"-1", 0, unix.EINVAL},
		{"+3", 3, nil},
		{"0x10", 16, nil},
		{"010", 8, nil},
		{"0b1", 0, unix.EINVAL},
		{"1_000", 0, unix.EINVAL},
		{"abc", 0, unix.EINVAL},
		{strings.Repeat("9", 40), 0, unix.EINVAL},
	}
	for _, c := range cases {
		got, err := ParsePid([]byte(c.in))
		if got != c.want || err != c.err {
			t.Errorf("ParsePid(%q) = %d, %v; want %d, %v", c.in, got, err, c.want, c.err)
		}
	}
}
