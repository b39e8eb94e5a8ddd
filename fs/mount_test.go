package fs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/test/fake"
	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/host"
)

// The test process serves the mounts it reads, so its opens of mounted
// files must stay out of Go's netpoller: os.Open registers a FUSE file
// with epoll, the kernel asks this same process a FUSE_POLL, and a
// stop-the-world pause in between leaves nobody to answer it. These
// helpers open blocking descriptors the runtime never polls.

func openMounted(t *testing.T, path string, flags int) (*os.File, error) {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func readMounted(t *testing.T, path string) ([]byte, error) {
	t.Helper()
	f, err := openMounted(t, path, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func writeMounted(t *testing.T, path string, data []byte) error {
	t.Helper()
	f, err := openMounted(t, path, unix.O_WRONLY|unix.O_TRUNC)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// fakeCgroup is a directory shaped like a cgroup2 cgroup: core files
// with the text Linux 6.18 shows, a child, and a hidden leaf.
func fakeCgroup(t *testing.T) string {
	t.Helper()
	files := map[string]string{
		"cgroup.procs":           "",
		"cgroup.max.descendants": "max\n",
		"cgroup.stat":            "nr_descendants 2\nnr_dying_descendants 0\n",
		"cgroup.events":          "populated 0\nfrozen 0\n",
	}
	root := t.TempDir()
	for _, dir := range []string{"", "child", translate.LeafName} {
		fake.Cgroup(t, filepath.Join(root, dir), files)
	}
	return root
}

// testMount serves a fake cgroup over real FUSE, as the host's root.
func testMount(t *testing.T, dir string) string {
	t.Helper()
	mnt, _ := testMountIdent(t, dir)
	return mnt
}

// testMountIdent is testMount with the mount's caller identifier.
func testMountIdent(t *testing.T, dir string) (string, *access.Identifier) {
	t.Helper()
	return testMountOwned(t, dir, nil)
}

// testMountOwned serves a fake cgroup whose owner namespace is below
// the server's by the namespaces in below (none: the server's own), so
// that every decision identifies its caller.
func testMountOwned(t *testing.T, dir string, below []proc.Ancestor) (string, *access.Identifier) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: FUSE tests need root (DirectMount)")
		}
		t.Skip("FUSE tests need root (DirectMount)")
	}
	cfg := viewConfig(t, dir, below)
	mnt := t.TempDir()
	server, err := Mount(mnt, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		server.Stop()
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+mnt+" ") {
			t.Errorf("%s still mounted after Stop", mnt)
		}
	})
	return mnt, cfg.Identifier
}

// viewConfig serves a view of dir whose owner namespace is below the
// server's by the namespaces in below (none: the server's own).
func viewConfig(t *testing.T, dir string, below []proc.Ancestor) Config {
	t.Helper()
	return viewConfigLimits(t, dir, below, nil)
}

// viewConfigLimits is viewConfig with the container's limits lim (nil:
// the defaults).
func viewConfigLimits(t *testing.T, dir string, below []proc.Ancestor, lim *translate.Limits) Config {
	t.Helper()
	h, err := host.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	procs, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	owner, err := access.SelfOwner(procs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	view, err := translate.New(h, translate.Config{Policy: access.NewPolicy(append(below, owner.Chain...)), Procs: procs, Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return Config{Views: []ViewAt{{View: view}}, Identifier: access.NewIdentifier(procs), Log: log, Debug: os.Getenv("CGFS_DEBUG") != ""}
}

func TestListingHidesTheLeaf(t *testing.T) {
	dir := fakeCgroup(t)
	mnt := testMount(t, dir)
	entries, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"cgroup.events", "cgroup.max.descendants", "cgroup.procs", "cgroup.stat", "child"}
	if !slices.Equal(names, want) {
		t.Errorf("listing = %v, want %v", names, want)
	}
	// Never listed, but the leaf path resolves: a read-only directory.
	if st, err := os.Stat(filepath.Join(mnt, translate.LeafName)); err != nil || !st.IsDir() || st.Mode().Perm()&0o222 != 0 {
		t.Errorf("stat of the leaf path = %v, %v; want a read-only directory", st, err)
	}
	var vs, hs unix.Stat_t
	if err := unix.Stat(filepath.Join(mnt, "child"), &vs); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join(dir, "child"), &hs); err != nil {
		t.Fatal(err)
	}
	if vs.Ino != hs.Ino {
		t.Errorf("inode through cgfs %d, host %d", vs.Ino, hs.Ino)
	}
}

// TestReadsAreNeverCached: what the host writes shows at the next read,
// through a new open within the attribute timeout and through the same
// open read again from its start, for a passed-through file and a
// computed one. A page cache in front of either (an open reply without
// FOPEN_DIRECT_IO or passthrough, or with FOPEN_KEEP_CACHE) would
// answer a read with what an earlier read saw.
func TestReadsAreNeverCached(t *testing.T) {
	dir := fakeCgroup(t)
	mnt := testMount(t, dir)
	cases := []struct {
		name string
		host []string // what the host writes, in turn
		want []string // what the view then shows
	}{
		{"cgroup.events", []string{"populated 1\nfrozen 0\n", "populated 0\nfrozen 1\n", "populated 1\nfrozen 1\n"}, nil},
		// cgroup.stat leaves the hidden leaf out of nr_descendants.
		{"cgroup.stat",
			[]string{"nr_descendants 2\nnr_dying_descendants 0\n", "nr_descendants 3\nnr_dying_descendants 0\n", "nr_descendants 4\nnr_dying_descendants 1\n"},
			[]string{"nr_descendants 1\nnr_dying_descendants 0\n", "nr_descendants 2\nnr_dying_descendants 0\n", "nr_descendants 3\nnr_dying_descendants 1\n"}},
	}
	for _, c := range cases {
		if c.want == nil {
			c.want = c.host
		}
		hostFile, file := filepath.Join(dir, c.name), filepath.Join(mnt, c.name)
		f, err := openMounted(t, file, unix.O_RDONLY)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for i, text := range c.host {
			if err := os.WriteFile(hostFile, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			// The open made first, read again from its start (an open
			// without FOPEN_KEEP_CACHE would drop cached pages: this
			// read comes before the next one).
			buf := make([]byte, 4096)
			n, err := f.ReadAt(buf, 0)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if string(buf[:n]) != c.want[i] {
				t.Errorf("%s: the first open read %q again after the host wrote %q, want %q", c.name, buf[:n], text, c.want[i])
			}
			// A new open, within the attribute and entry timeouts.
			b, err := readMounted(t, file)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != c.want[i] {
				t.Errorf("%s: a new open read %q after the host wrote %q, want %q", c.name, b, text, c.want[i])
			}
		}
	}
}

func TestWritesAndRefusals(t *testing.T) {
	dir := fakeCgroup(t)
	mnt := testMount(t, dir)
	if err := writeMounted(t, filepath.Join(mnt, "child/cgroup.max.descendants"), []byte("4")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "child/cgroup.max.descendants")); string(b) != "9" {
		t.Errorf("host child/cgroup.max.descendants = %q, want 9 (2N+1)", b)
	}
	cases := []struct {
		name string
		op   func() error
		want syscall.Errno
	}{
		{"create a file", func() error {
			f, err := openMounted(t, filepath.Join(mnt, "new"), unix.O_CREAT|unix.O_WRONLY)
			if err == nil {
				f.Close()
			}
			return err
		}, unix.EACCES},
		{"unlink a control file", func() error { return os.Remove(filepath.Join(mnt, "cgroup.procs")) }, unix.EPERM},
		{"symlink", func() error { return os.Symlink("/", filepath.Join(mnt, "l")) }, unix.EPERM},
		// The root has a leaf: its leaf path exists.
		{"mkdir the leaf name", func() error { return os.Mkdir(filepath.Join(mnt, translate.LeafName), 0o755) }, unix.EEXIST},
		{"mkdir the leaf name where there is no leaf", func() error { return os.Mkdir(filepath.Join(mnt, "child", translate.LeafName), 0o755) }, unix.EINVAL},
		{"mkdir in the leaf path", func() error { return os.Mkdir(filepath.Join(mnt, translate.LeafName, "x"), 0o755) }, unix.EPERM},
		{"write over a page", func() error {
			return writeMounted(t, filepath.Join(mnt, "child/cgroup.max.descendants"), make([]byte, 5000))
		}, unix.E2BIG},
		{"name too long", func() error { return os.Mkdir(filepath.Join(mnt, strings.Repeat("n", 300)), 0o755) }, unix.ENAMETOOLONG},
	}
	for _, c := range cases {
		err := c.op()
		var errno syscall.Errno
		if !errors.As(err, &errno) || errno != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused create left a host file: %v", err)
	}
}

// TestParallelReadsOfOneHandle: threads reading one open computed file
// at once (run under -race: the server shares the handle's rendering).
func TestParallelReadsOfOneHandle(t *testing.T) {
	mnt := testMount(t, fakeCgroup(t))
	f, err := openMounted(t, filepath.Join(mnt, "cgroup.stat"), unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := "nr_descendants 1\nnr_dying_descendants 0\n"
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for i := range 100 {
				off := int64((g + i) % 2 * 5)
				n, err := f.ReadAt(buf, off)
				if string(buf[:n]) != want[off:] {
					t.Errorf("pread at %d = %q, %v; want %q", off, buf[:n], err, want[off:])
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestOversizedTaskWriteIsE2BIG: a pid padded past a page is refused
// before it is parsed, as the kernel does, and moves nothing.
func TestOversizedTaskWriteIsE2BIG(t *testing.T) {
	dir := fakeCgroup(t)
	mnt := testMount(t, dir)
	f, err := openMounted(t, filepath.Join(mnt, "child/cgroup.procs"), unix.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = f.Write([]byte(strings.Repeat(" ", 5000) + "0"))
	if !errors.Is(err, unix.E2BIG) {
		t.Errorf("5,001 bytes to cgroup.procs: %v, want E2BIG", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "child/cgroup.procs")); len(b) != 0 {
		t.Errorf("host cgroup.procs = %q after a refused write", b)
	}
}

// TestOneIdentificationPerWrite: `echo 5 > child/cgroup.max.descendants`
// (an O_WRONLY|O_TRUNC open, a setattr of the size, a write) identifies
// its caller once, at the open.
func TestOneIdentificationPerWrite(t *testing.T) {
	dir := fakeCgroup(t)
	mnt, ident := testMountIdent(t, dir)
	p := filepath.Join(mnt, "child/cgroup.max.descendants")
	if _, err := os.Stat(p); err != nil { // looked up before counting
		t.Fatal(err)
	}
	before := ident.Identifications()
	if err := writeMounted(t, p, []byte("5\n")); err != nil {
		t.Fatal(err)
	}
	if got := ident.Identifications() - before; got != 1 {
		t.Errorf("an O_TRUNC write identified its caller %d times, want 1", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "child/cgroup.max.descendants")); string(b) != "11" {
		t.Errorf("host child/cgroup.max.descendants = %q, want 11 (2N+1)", b)
	}
}

// TestListingLooksUpNothing: a listing of a cgroup with many children
// is one read of the host directory: it judges its caller once (at
// opendir) and looks up no entry; the attributes a stat then gets are
// the ones the view shows (an owner it set included).
func TestListingLooksUpNothing(t *testing.T) {
	dir := fakeCgroup(t)
	for i := range 60 {
		if err := os.Mkdir(filepath.Join(dir, "child", fmt.Sprint("c", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// An owner below the server's namespace: host root is an outsider
	// the policy admits after identifying it, for every decision.
	mnt, ident := testMountOwned(t, dir, []proc.Ancestor{{NS: proc.NS{Dev: 1, Ino: 1}}})
	if err := unix.Chown(filepath.Join(mnt, "child", "c7"), 1234, 1235); err != nil {
		t.Fatal(err)
	}
	before := ident.Identifications()
	fd, err := unix.Open(filepath.Join(mnt, "child"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	buf := make([]byte, 1<<16)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	unix.Close(fd)
	if len(names) < 60 {
		t.Fatalf("listed %d entries, want the 60 children and the files", len(names))
	}
	if got := ident.Identifications() - before; got > 1 {
		t.Errorf("a listing of %d entries identified its caller %d times, want once", len(names), got)
	}
	var c7 unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "child", "c7"), &c7); err != nil {
		t.Fatal(err)
	}
	if c7.Uid != 1234 || c7.Gid != 1235 {
		t.Errorf("c7 is owned by %d:%d, want 1234:1235", c7.Uid, c7.Gid)
	}
}

// TestStopGivesBackOpenFiles: files a container holds open when its view
// stops (the connection ends; the kernel releases nothing of it) go back
// to its budget of open files, which may outlive the view (a user's,
// across its containers): a view on the same budget opens as many again.
func TestStopGivesBackOpenFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("FUSE tests need root (DirectMount)")
	}
	dir := fakeCgroup(t)
	lim := &translate.Limits{OpenFiles: 3}
	serveOn := func() (string, interface{ Stop() }) {
		mnt := t.TempDir()
		server, err := Mount(mnt, viewConfigLimits(t, dir, nil, lim))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(server.Stop)
		return mnt, server
	}
	mnt, server := serveOn()
	var held []*os.File
	for range 3 {
		f, err := openMounted(t, mnt+"/cgroup.procs", unix.O_RDONLY)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, f)
	}
	if _, err := openMounted(t, mnt+"/cgroup.events", unix.O_RDONLY); !errors.Is(err, unix.ENFILE) {
		t.Fatalf("a fourth open with a budget of 3: %v, want ENFILE", err)
	}
	server.Stop()
	if n := lim.Open(); n != 0 {
		t.Errorf("the budget counts %d files open after the view stopped with them open, want 0", n)
	}
	for _, f := range held {
		f.Close() // their connection is gone: nothing reaches a server
	}
	again, _ := serveOn()
	for i := range 3 {
		f, err := openMounted(t, again+"/cgroup.procs", unix.O_RDONLY)
		if err != nil {
			t.Fatalf("open %d on a new view of the same budget: %v", i+1, err)
		}
		defer f.Close()
	}
}
