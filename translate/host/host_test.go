package host

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/test/fake"
)

func openFake(t *testing.T) (*Host, string) {
	t.Helper()
	dir := fake.Hierarchy(t, "", "a", "a/b")
	h, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, dir
}

func TestNamesSortedWithInodes(t *testing.T) {
	h, dir := openFake(t)
	entries, err := h.Names("a")
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
		if e.Ino != st.Ino || e.Mode != st.Mode&unix.S_IFMT {
			t.Errorf("entry %s: ino %d mode %o, host has ino %d mode %o", e.Name, e.Ino, e.Mode, st.Ino, st.Mode)
		}
	}
	want := []string{"b", "cgroup.controllers", "cgroup.events", "cgroup.freeze", "cgroup.max.depth",
		"cgroup.max.descendants", "cgroup.procs", "cgroup.stat", "cgroup.subtree_control",
		"cgroup.threads", "cgroup.type"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("Names(a) = %v, want %v", names, want)
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

func TestWritesArePlainOnFakes(t *testing.T) {
	h, dir := openFake(t)
	if h.cgroupfs {
		t.Fatal("a temporary directory taken for cgroupfs")
	}
	// A fake control file holds its last value, as a cgroup file shows it.
	if _, err := h.WriteFile("a/cgroup.max.depth", []byte("3")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a/cgroup.max.depth")); string(b) != "3" {
		t.Errorf("after writing 3 over max the fake file holds %q", b)
	}
	var he *Error
	_, err := h.WriteFile("a/nothere", []byte("1"))
	if !errors.As(err, &he) || !errors.Is(err, unix.ENOENT) {
		t.Errorf("WriteFile of a missing file = %v, want an *Error with ENOENT", err)
	}
}

func TestShorten(t *testing.T) {
	long := strings.Repeat("x", 100)
	if got := Shorten([]byte(long)); len(got) != 67 || !strings.HasSuffix(got, "...") {
		t.Errorf("Shorten(100 bytes) = %q, want 64 bytes and ...", got)
	}
	if got := Shorten([]byte("5\n")); got != "5\n" {
		t.Errorf("Shorten of a short write = %q", got)
	}
}

func TestXattrs(t *testing.T) {
	h, dir := openFake(t)
	const name = "trusted.cgfs-unit"
	if _, val, err := h.StatXattr("a/b/cgroup.procs", name); err != nil || val != nil {
		t.Fatalf("StatXattr of a file without it = %q, %v; want nil, nil", val, err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "a/b/link")); err != nil {
		t.Fatal(err)
	}
	if err := h.SetXattrTree("a/b", name, []byte("u=4242")); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOTSUP) {
			t.Skipf("trusted xattrs on this temporary directory: %v", err)
		}
		t.Fatal(err)
	}
	for _, p := range []string{"a/b", "a/b/cgroup.procs", "a/b/cgroup.events"} {
		if _, val, err := h.StatXattr(p, name); err != nil || string(val) != "u=4242" {
			t.Errorf("StatXattr(%s) = %q, %v after SetXattrTree", p, val, err)
		}
	}
	if _, val, _ := h.StatXattr("a/cgroup.procs", name); val != nil {
		t.Errorf("SetXattrTree changed the parent's files: %q", val)
	}
	f, err := h.Open("a/b/cgroup.procs", unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if val, err := Xattr(f, name); err != nil || string(val) != "u=4242" {
		t.Errorf("Xattr of the open file = %q, %v", val, err)
	}
	if err := h.SetXattr("a/b/cgroup.procs", name, []byte("u=1")); err != nil {
		t.Fatal(err)
	}
	if _, val, _ := h.StatXattr("a/b/cgroup.procs", name); string(val) != "u=1" {
		t.Errorf("after SetXattr the value is %q", val)
	}
}

// TestCloseRacingOpens: a Host closed while others open through it (a
// view dropped while a control request enters its container) answers
// EBADF once closed, and never opens a file beneath another directory
// that took its descriptor's number meanwhile; under -race, the close
// and the opens share no unguarded descriptor.
func TestCloseRacingOpens(t *testing.T) {
	for range 50 {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
		other := t.TempDir() // the directory that may take the number
		if err := os.WriteFile(filepath.Join(other, "f"), []byte("other"), 0o644); err != nil {
			t.Fatal(err)
		}
		h, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 4)
		for range 4 {
			go func() {
				for {
					f, err := h.Open("f", unix.O_RDONLY)
					if err != nil {
						done <- err
						return
					}
					b := make([]byte, 8)
					n, _ := f.Read(b)
					f.Close()
					if string(b[:n]) != "mine" {
						done <- errors.New("opened another directory's f: " + string(b[:n]))
						return
					}
				}
			}()
		}
		h.Close()
		taker, err := os.Open(other) // likely the number h had
		if err != nil {
			t.Fatal(err)
		}
		for range 4 {
			if err := <-done; !errors.Is(err, unix.EBADF) {
				t.Errorf("an open through a closed Host: %v, want EBADF", err)
			}
		}
		taker.Close()
	}
}
