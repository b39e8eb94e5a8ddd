package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/fuseconn"
)

// realCgroup makes a cgroup v2 cgroup of the test's own (file handles,
// which a server taking a connection over resolves node ids with, are
// kernfs's: a fake hierarchy has none), removed at the end.
func realCgroup(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: the takeover test needs root")
		}
		t.Skip("the takeover test needs root")
	}
	base := "/sys/fs/cgroup"
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
		base = "/sys/fs/cgroup/unified" // a hybrid host
	}
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Skipf("no cgroup2 at %s", base)
	}
	dir := filepath.Join(base, fmt.Sprintf("cgfs-test-takeover-%d", os.Getpid()))
	for _, d := range []string{dir, dir + "/a", dir + "/gone"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{dir + "/a", dir + "/b", dir + "/gone", dir} {
			_ = os.Remove(d)
		}
	})
	return dir
}

// mountView mounts a view of cgroup dir on a new directory, unmounted
// when the test ends.
func mountView(t *testing.T, dir string) (string, *fuseconn.Conn, *mount) {
	t.Helper()
	mnt := t.TempDir()
	c, m, err := serve(viewConfig(t, dir, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MoveTo(mnt); err != nil {
		c.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt, c, m
}

// takeOver drains first and serves its connection with a second server
// of dir's view, stopped when the test ends; meanwhile (if set) runs
// between the two.
func takeOver(t *testing.T, first *fuseconn.Conn, dir string, meanwhile func()) (*fuseconn.Conn, *mount) {
	t.Helper()
	res, err := first.HandOff()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	if meanwhile != nil {
		meanwhile()
	}
	cfg := viewConfig(t, dir, nil)
	cfg.Resume = res
	second, m, err := serve(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Stop)
	return second, m
}

// TestTakeover: a second server takes a connection over from the first
// without the mount noticing: what the kernel holds (looked-up nodes,
// open files and directories) goes on working, and requests made while
// the first drains are answered by the second.
func TestTakeover(t *testing.T) {
	dir := realCgroup(t)
	mnt, first, firstFS := mountView(t, dir)

	// What the kernel holds from the first server.
	var st unix.Stat_t
	if err := unix.Stat(mnt+"/gone", &st); err != nil {
		t.Fatal(err)
	}
	procs, err := openMounted(t, mnt+"/a/cgroup.procs", unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer procs.Close()
	limit, err := openMounted(t, mnt+"/a/cgroup.max.descendants", unix.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer limit.Close()
	listing, err := openMounted(t, mnt+"/a", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		t.Fatal(err)
	}
	defer listing.Close()
	var a unix.Stat_t
	if err := unix.Fstat(int(listing.Fd()), &a); err != nil {
		t.Fatal(err)
	}

	// A reader that goes on through the takeover: none of its reads may
	// fail. Each read it made says so on read.
	var reads, failed atomic.Int64
	var lastErr atomic.Value
	read := make(chan struct{}, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := readMounted(t, mnt+"/a/cgroup.events"); err != nil {
				failed.Add(1)
				lastErr.Store(err.Error())
			}
			reads.Add(1)
			select {
			case read <- struct{}{}:
			default:
			}
		}
	}()
	var stopOnce sync.Once
	stopReader := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	defer stopReader()
	waitReads := func(n int64) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for reads.Load() < n {
			select {
			case <-read:
			case <-deadline:
				t.Fatalf("the reader made %d reads in 10 s, want %d: reads through the mount hang", reads.Load(), n)
			}
		}
	}
	waitReads(50)

	t0 := time.Now()
	_, secondFS := takeOver(t, first, dir, func() {
		if err := os.Remove(dir + "/gone"); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("handed over in %v", time.Since(t0))
	select {
	case <-first.Done():
		t.Fatal("the first server's Done closed: the connection lives on")
	default:
	}
	before := reads.Load()
	waitReads(before + 50)
	stopReader()
	if failed.Load() != 0 {
		t.Errorf("%d of %d reads failed across the takeover, the last: %v", failed.Load(), reads.Load(), lastErr.Load())
	}

	// The files the first server opened.
	if _, err := unix.Pread(int(procs.Fd()), make([]byte, 4096), 0); err != nil {
		t.Errorf("reading an open cgroup.procs after the takeover: %v", err)
	}
	if _, err := limit.Write([]byte("7")); err != nil {
		t.Errorf("writing an open cgroup.max.descendants after the takeover: %v", err)
	}
	if b, _ := readMounted(t, mnt+"/a/cgroup.max.descendants"); string(b) != "7\n" {
		t.Errorf("cgroup.max.descendants = %q after a write through an inherited handle, want 7", b)
	}
	buf := make([]byte, 8192)
	n, err := unix.Getdents(int(listing.Fd()), buf)
	if err != nil || n == 0 {
		t.Errorf("listing an open directory after the takeover: %d bytes, %v", n, err)
	} else if !bytes.Contains(buf[:n], []byte("cgroup.procs")) {
		t.Errorf("the listing of a/ lacks cgroup.procs")
	}
	// Nodes the kernel holds, and new ones.
	var a2 unix.Stat_t
	if err := unix.Stat(mnt+"/a", &a2); err != nil || a2.Ino != a.Ino {
		t.Errorf("stat a after the takeover: ino %d (was %d), %v", a2.Ino, a.Ino, err)
	}
	if err := unix.Mkdir(mnt+"/a/../b", 0o755); err != nil {
		t.Errorf("mkdir after the takeover: %v", err)
	} else if _, err := os.Stat(dir + "/b"); err != nil {
		t.Errorf("mkdir through the second server made no host cgroup: %v", err)
	} else if err := unix.Rmdir(mnt + "/b"); err != nil {
		t.Errorf("rmdir after the takeover: %v", err)
	}
	// The kernel's entry of the cgroup removed during the takeover was
	// the first server's and is cached for entryTimeout; once it expires
	// the kernel asks the second server, which finds it gone. The
	// kernel's timeout is what is waited for: the stat is polled until
	// it says so, for at most a few timeouts.
	deadline := time.Now().Add(entryTimeout + 4*time.Second)
	for err = unix.Stat(mnt+"/gone", &st); err == nil && time.Now().Before(deadline); err = unix.Stat(mnt+"/gone", &st) {
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESTALE) {
		t.Errorf("stat of a cgroup removed during the takeover: %v, want ENOENT or ESTALE (in %v)", err, entryTimeout+4*time.Second)
	}
	if b, err := readMounted(t, mnt+"/a/cgroup.events"); err != nil || !strings.Contains(string(b), "populated 0") {
		t.Errorf("cgroup.events after the takeover: %q, %v", b, err)
	}
	if n := firstFS.panics.Load() + secondFS.panics.Load(); n != 0 {
		t.Errorf("%d requests panicked", n)
	}
}
