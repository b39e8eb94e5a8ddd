package translate

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeWithLeaf adds a hidden leaf to cgroup a of the fake hierarchy,
// with control files of its own.
func fakeWithLeaf(t *testing.T) (*View, string) {
	t.Helper()
	h, dir := openFake(t)
	leaf := filepath.Join(dir, "a", LeafName)
	if err := os.Mkdir(leaf, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, text string) {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "a/memory.events.local"), "low 0\nhigh 2\nmax 1\noom 0\noom_kill 0\noom_group_kill 0\n")
	write(filepath.Join(leaf, "memory.events.local"), "low 0\nhigh 1\nmax 0\noom 1\noom_kill 1\noom_group_kill 0\n")
	write(filepath.Join(dir, "cgroup.stat"), "nr_descendants 3\nnr_dying_descendants 0\n")
	return NewView(h, ViewConfig{}), dir
}

func render(t *testing.T, v *View, vpath string) string {
	t.Helper()
	f, err := v.Open(vpath, unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := v.Render(vpath, f, Reader{})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLeafIsInvisible(t *testing.T) {
	v, _ := fakeWithLeaf(t)
	entries, err := v.List("a")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name == LeafName {
			t.Errorf("List(a) shows the hidden leaf")
		}
	}
	if _, err := v.Lookup("a", LeafName); err != unix.ENOENT {
		t.Errorf("Lookup(a, leaf) = %v, want ENOENT", err)
	}
	if _, err := v.Mkdir("", LeafName, 0o755, 0, 0); err == nil || !reflect.DeepEqual(unwrapErrno(err), unix.EINVAL) {
		t.Errorf("Mkdir(leaf) = %v, want EINVAL", err)
	}
	if err := v.Rmdir("a", LeafName); err != unix.ENOENT {
		t.Errorf("Rmdir(a, leaf) = %v, want ENOENT", err)
	}
}

func unwrapErrno(err error) error {
	for {
		if e, ok := err.(*Error); ok {
			err = e.Err
			continue
		}
		return err
	}
}

func TestLocalFilesMergeTheLeaf(t *testing.T) {
	v, _ := fakeWithLeaf(t)
	got := render(t, v, "a/memory.events.local")
	want := "low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n"
	if got != want {
		t.Errorf("a/memory.events.local = %q, want %q", got, want)
	}
}

func TestStatDoesNotCountLeaves(t *testing.T) {
	v, _ := fakeWithLeaf(t)
	// The fake root has a and a/b (2) plus a's leaf; the host says 3.
	got := render(t, v, "cgroup.stat")
	if want := "nr_descendants 2\nnr_dying_descendants 0\n"; got != want {
		t.Errorf("cgroup.stat = %q, want %q", got, want)
	}
}

func TestLimitsLeaveRoomForLeaves(t *testing.T) {
	v, dir := fakeWithLeaf(t)
	f, err := v.Open("a/cgroup.max.descendants", unix.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := v.Write("a/cgroup.max.descendants", f, []byte("1\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a/cgroup.max.descendants")); string(b) != "3" {
		t.Errorf("host a/cgroup.max.descendants = %q, want 3", b)
	}
	if got := render(t, v, "a/cgroup.max.descendants"); got != "1\n" {
		t.Errorf("view reads %q, want 1", got)
	}
	// a has one visible child (b): a second is over the container's 1.
	if _, err := v.Mkdir("a", "c", 0o755, 0, 0); unwrapErrno(err) != unix.EAGAIN {
		t.Errorf("Mkdir over the limit = %v, want EAGAIN", err)
	}
	if _, err := v.Write("a/cgroup.max.descendants", f, []byte("-1")); unwrapErrno(err) != unix.EINVAL {
		t.Errorf("negative limit = %v, want EINVAL", err)
	}
	big := make([]byte, 5000)
	if _, err := v.Write("a/cgroup.max.descendants", f, big); unwrapErrno(err) != unix.E2BIG {
		t.Errorf("a write over a page = %v, want E2BIG", err)
	}
	// The view root's limits are the host's, as they are.
	if err := os.WriteFile(filepath.Join(dir, "cgroup.max.depth"), []byte("4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := render(t, v, "cgroup.max.depth"); got != "4\n" {
		t.Errorf("root cgroup.max.depth = %q, want the host's 4", got)
	}
}
