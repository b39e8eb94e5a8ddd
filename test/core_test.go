package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// names lists a directory, sorted, as ls would.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func TestListingMatchesHost(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	for _, d := range []string{"a", "b", "a/c"} {
		if err := os.Mkdir(filepath.Join(host, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := mountView(t, host)
	for _, d := range []string{"", "a", "b", "a/c"} {
		want := names(t, filepath.Join(host, d))
		got := names(t, s.path(d))
		if !reflect.DeepEqual(got, want) {
			t.Errorf("listing of /%s through cgfs:\n got %v\nwant %v", d, got, want)
		}
		for _, name := range want {
			var hs, vs unix.Stat_t
			if err := unix.Lstat(filepath.Join(host, d, name), &hs); err != nil {
				t.Fatal(err)
			}
			if err := unix.Lstat(s.path(filepath.Join(d, name)), &vs); err != nil {
				t.Fatal(err)
			}
			if vs.Mode != hs.Mode || vs.Ino != hs.Ino || vs.Uid != hs.Uid || vs.Gid != hs.Gid {
				t.Errorf("/%s: cgfs shows mode %o ino %d owner %d:%d, host has mode %o ino %d owner %d:%d",
					filepath.Join(d, name), vs.Mode, vs.Ino, vs.Uid, vs.Gid, hs.Mode, hs.Ino, hs.Uid, hs.Gid)
			}
		}
	}
	// A cgroup made on the host shows at once (no stale negative entry).
	if _, err := os.Stat(s.path("late")); !os.IsNotExist(err) {
		t.Fatalf("stat of a missing cgroup: %v", err)
	}
	if err := os.Mkdir(filepath.Join(host, "late"), 0o755); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(s.path("late")); err != nil || !fi.IsDir() {
		t.Errorf("cgroup made on the host is not visible through cgfs: %v", err)
	}
}

func TestReadsAreFresh(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	s := mountView(t, host)
	file := "cgroup.max.descendants"
	f, err := os.Open(s.path(file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, v := range []string{"5", "7", "max"} {
		mustWrite(t, filepath.Join(host, file), v)
		if got := readFile(t, s.path(file)); got != v+"\n" {
			t.Errorf("after host wrote %s, cgfs read %q", v, got)
		}
		// A long-open file read again from offset 0 is fresh too.
		buf := make([]byte, 64)
		n, err := f.ReadAt(buf, 0)
		if n == 0 {
			t.Fatal(err)
		}
		if got := string(buf[:n]); got != v+"\n" {
			t.Errorf("after host wrote %s, a reread of an open fd gave %q", v, got)
		}
	}
}

func TestWritesReachHost(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	if err := os.Mkdir(filepath.Join(host, "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := mountView(t, host)
	// A reader holding the same file open (served by kernel passthrough
	// where the kernel has it) must not divert writes from cgfs.
	reader, err := os.Open(s.path("child/cgroup.max.descendants"))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	mustWrite(t, s.path("child/cgroup.max.descendants"), "3\n")
	// Below the view root the host keeps room for hidden leaves: 2N+1.
	if got := readFile(t, filepath.Join(host, "child/cgroup.max.descendants")); got != "7\n" {
		t.Errorf("host cgroup.max.descendants = %q after writing 3 through cgfs, want 7", got)
	}
	if got := readFile(t, s.path("child/cgroup.max.descendants")); got != "3\n" {
		t.Errorf("cgfs reads back %q after writing 3", got)
	}
	mustWrite(t, s.path("child/cgroup.freeze"), "1")
	if got := readFile(t, filepath.Join(host, "child/cgroup.freeze")); got != "1\n" {
		t.Errorf("host cgroup.freeze = %q after writing 1 through cgfs", got)
	}
	mustWrite(t, s.path("child/cgroup.freeze"), "0")
	buf := make([]byte, 16)
	if n, _ := reader.ReadAt(buf, 0); string(buf[:n]) != "3\n" {
		t.Errorf("the open reader sees %q after the write, want \"3\\n\"", buf[:n])
	}
	if err := writeFile(s.path("child/cgroup.max.descendants"), "bogus"); errnoOf(err) != unix.EINVAL {
		t.Errorf("bad write with a reader open: %v, want EINVAL", err)
	}
	s.waitLog(t, `data \"bogus\"`)
	// Runtimes open control files O_WRONLY|O_CREAT|O_TRUNC.
	f, err := os.OpenFile(s.path("child/cgroup.max.depth"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf("open O_WRONLY|O_CREAT|O_TRUNC: %v", err)
	}
	if _, err := f.WriteString("2"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := readFile(t, filepath.Join(host, "child/cgroup.max.depth")); got != "3\n" {
		t.Errorf("host cgroup.max.depth = %q after an O_TRUNC write of 2, want 3 (N+1)", got)
	}
}

func TestFreezeThroughMount(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	child := filepath.Join(host, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	sleeper := startSleeper(t, child)
	s := mountView(t, host)
	pid := strconv.Itoa(sleeper.Process.Pid)
	if procs := readFile(t, s.path("child/cgroup.procs")); strings.TrimSpace(procs) != pid {
		t.Fatalf("child/cgroup.procs through cgfs = %q, want %s", procs, pid)
	}
	events := s.path("child/cgroup.events")
	if got := keyedValue(readFile(t, events), "populated"); got != "1" {
		t.Errorf("populated = %q through cgfs, want 1", got)
	}

	mustWrite(t, s.path("child/cgroup.freeze"), "1")
	waitFor(t, "frozen 1 in cgroup.events through cgfs", 30*time.Second, func() bool {
		return keyedValue(readFile(t, events), "frozen") == "1"
	})
	if got := keyedValue(readFile(t, filepath.Join(child, "cgroup.events")), "frozen"); got != "1" {
		t.Errorf("host cgroup.events frozen = %q", got)
	}
	// The sleeper really is stopped: its state in /proc says so.
	if state := procState(t, sleeper.Process.Pid); !strings.Contains(state, "stopped") && !strings.HasPrefix(state, "T") {
		t.Logf("note: frozen task state is %q", state)
	}

	mustWrite(t, s.path("child/cgroup.freeze"), "0")
	waitFor(t, "frozen 0 in cgroup.events through cgfs", 30*time.Second, func() bool {
		return keyedValue(readFile(t, events), "frozen") == "0"
	})
}

func procState(t *testing.T, pid int) string {
	t.Helper()
	status := readFile(t, "/proc/"+strconv.Itoa(pid)+"/status")
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "State:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestKernelErrnos does each operation natively on one host cgroup and
// through cgfs on a twin, and expects the same errno from both, and the
// errno the kernel documents.
func TestKernelErrnos(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	native := newCgroup(t, l)
	viewed := newCgroup(t, l)
	for _, d := range []string{native, viewed} {
		if err := os.Mkdir(filepath.Join(d, "busy"), 0o755); err != nil {
			t.Fatal(err)
		}
		startSleeper(t, filepath.Join(d, "busy"))
		if err := os.Mkdir(filepath.Join(d, "child"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := mountView(t, viewed)
	big := strings.Repeat("1", 5000)
	cases := []struct {
		name string
		op   func(root string) error
		want syscall.Errno
	}{
		{"bad value", func(r string) error { return writeFile(filepath.Join(r, "child/cgroup.max.descendants"), "garbage") }, unix.EINVAL},
		{"out of range", func(r string) error { return writeFile(filepath.Join(r, "child/cgroup.freeze"), "2") }, unix.ERANGE},
		{"write larger than a page", func(r string) error { return writeFile(filepath.Join(r, "child/cgroup.max.descendants"), big) }, unix.E2BIG},
		{"two pids in one write", func(r string) error { return writeFile(filepath.Join(r, "child/cgroup.procs"), "1 2") }, unix.EINVAL},
		{"a pid padded past a page", func(r string) error {
			return writeFile(filepath.Join(r, "child/cgroup.procs"), strings.Repeat(" ", 5000)+"0")
		}, unix.E2BIG},
		{"negative limit", func(r string) error { return writeFile(filepath.Join(r, "child/cgroup.max.descendants"), "-1") }, unix.ERANGE},
		{"no such pid", func(r string) error { return writeFile(filepath.Join(r, "child/cgroup.procs"), "999999999") }, unix.ESRCH},
		{"write a read-only file", func(r string) error { return writeFile(filepath.Join(r, "child/cgroup.controllers"), "x") }, unix.EINVAL},
		{"rmdir populated", func(r string) error { return unix.Rmdir(filepath.Join(r, "busy")) }, unix.EBUSY},
		{"rmdir missing", func(r string) error { return unix.Rmdir(filepath.Join(r, "nothere")) }, unix.ENOENT},
		{"rmdir a file", func(r string) error { return unix.Rmdir(filepath.Join(r, "cgroup.procs")) }, unix.ENOTDIR},
		{"mkdir existing", func(r string) error { return unix.Mkdir(filepath.Join(r, "child"), 0o755) }, unix.EEXIST},
		{"mkdir newline", func(r string) error { return unix.Mkdir(filepath.Join(r, "a\nb"), 0o755) }, unix.EINVAL},
		{"create a regular file", func(r string) error {
			fd, err := unix.Open(filepath.Join(r, "newfile"), unix.O_CREAT|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}, unix.EACCES},
		{"create exclusive existing", func(r string) error {
			fd, err := unix.Open(filepath.Join(r, "cgroup.procs"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}, unix.EEXIST},
		{"symlink", func(r string) error { return unix.Symlink("x", filepath.Join(r, "sl")) }, unix.EPERM},
		{"hard link", func(r string) error { return unix.Link(filepath.Join(r, "cgroup.procs"), filepath.Join(r, "ln")) }, unix.EPERM},
		{"mknod", func(r string) error { return unix.Mknod(filepath.Join(r, "fifo"), unix.S_IFIFO|0o644, 0) }, unix.EPERM},
		{"unlink an interface file", func(r string) error { return unix.Unlink(filepath.Join(r, "cgroup.procs")) }, unix.EPERM},
		{"rename a cgroup", func(r string) error { return unix.Rename(filepath.Join(r, "child"), filepath.Join(r, "renamed")) }, unix.EPERM},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nerr := errnoOf(c.op(native))
			verr := errnoOf(c.op(s.mnt))
			if nerr != c.want {
				t.Errorf("natively: %v, test expects %v", nerr, c.want)
			}
			if verr != nerr {
				t.Errorf("through cgfs: %v (%s), natively: %v (%s)", verr, unix.ErrnoName(verr), nerr, unix.ErrnoName(nerr))
			}
		})
	}
	// Refusals cgfs answers itself are logged on the host too.
	s.waitLog(t, "cgroupfs makes only directories")
	// Nothing of the above changed the view's host cgroup.
	if got, want := names(t, viewed), names(t, native); !reflect.DeepEqual(got, want) {
		t.Errorf("host trees differ after the same operations:\n cgfs %v\nnative %v", got, want)
	}
}

func TestMkdirRmdirRoundTrip(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	s := mountView(t, host)
	if err := os.Mkdir(s.path("made"), 0o755); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(host, "made")); err != nil || !fi.IsDir() {
		t.Fatalf("mkdir through cgfs made no host cgroup: %v", err)
	}
	if got, want := names(t, s.path("made")), names(t, filepath.Join(host, "made")); !reflect.DeepEqual(got, want) {
		t.Errorf("new cgroup lists %v through cgfs, host %v", got, want)
	}
	if err := os.Mkdir(s.path("made/deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Rmdir(s.path("made/deeper")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Rmdir(s.path("made")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(host, "made")); !os.IsNotExist(err) {
		t.Errorf("host cgroup still there after rmdir through cgfs: %v", err)
	}
	if _, err := os.Stat(s.path("made")); !os.IsNotExist(err) {
		t.Errorf("cgroup still visible through cgfs after rmdir: %v", err)
	}
}

func TestUnprivilegedCallerCannotChange(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	if err := os.Mkdir(filepath.Join(host, "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := mountView(t, host)
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"write", s.path("child/cgroup.max.descendants"), "1"}, "EACCES"},
		{[]string{"mkdir", s.path("new")}, "EACCES"},
		{[]string{"rmdir", s.path("child")}, "EACCES"},
		{[]string{"read", s.path("child/cgroup.max.descendants")}, "OKmax"},
		{[]string{"read", s.path("child/cgroup.kill")}, "EACCES"},
	}
	for _, c := range cases {
		if got := runHelper(t, nobody, c.args...); got != c.want {
			t.Errorf("as uid 65534: %v = %s, want %s", c.args, got, c.want)
		}
	}
	if got := readFile(t, filepath.Join(host, "child/cgroup.max.descendants")); got != "max\n" {
		t.Errorf("host changed: cgroup.max.descendants = %q", got)
	}
	if got, want := names(t, host), names(t, s.mnt); !reflect.DeepEqual(got, want) {
		t.Errorf("host tree changed: %v vs %v", got, want)
	}
	s.waitLog(t, "rule=mode")
}

func TestCleanUnmountOnSIGTERM(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	s := mountView(t, host)
	f, err := os.Open(s.path("cgroup.procs")) // an open file must not block shutdown
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := s.stop(t); err != nil {
		t.Errorf("cgfs exit after SIGTERM: %v, want status 0\n%s", err, s.log.String())
	}
	if isMounted(t, s.mnt) {
		t.Errorf("%s still mounted", s.mnt)
	}
	if err := syscall.Kill(s.cmd.Process.Pid, 0); err != syscall.ESRCH {
		t.Errorf("cgfs process still exists after exit: %v", err)
	}
}

func TestRefusesNonCgroup2(t *testing.T) {
	requireRoot(t)
	mnt := t.TempDir()
	for _, dir := range []string{t.TempDir(), "/nonexistent-cgfs-dir"} {
		cmd := exec.Command(cgfsBin, "mount", "--cgroup", dir, mnt)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("cgfs mount --cgroup %s: %v, want exit status 2\n%s", dir, err, out)
		}
		if !strings.Contains(string(out), dir) {
			t.Errorf("message does not name %s: %s", dir, out)
		}
		if isMounted(t, mnt) {
			t.Errorf("%s was mounted", mnt)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}
}

// TestConcurrentMkdirsUnderAContainerLimit: a limit set through the view
// holds when 32 mkdirs race for it. The kernel serialises mkdirs in one
// directory, so they race in two: v/a and v/b under v's limit (the
// host's own limit there, 2N+1, would let more through).
func TestConcurrentMkdirsUnderAContainerLimit(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host := newCgroup(t, l)
	s := mountView(t, host)
	for _, d := range []string{"v", "v/a", "v/b"} {
		if err := os.Mkdir(s.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, s.path("v/cgroup.max.descendants"), "3")
	var wg sync.WaitGroup
	errs := make([]error, 32)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = unix.Mkdir(s.path(fmt.Sprintf("v/%c/c%d", "ab"[i%2], i)), 0o755)
		}()
	}
	wg.Wait()
	made := 0
	for _, err := range errs {
		switch errnoOf(err) {
		case 0:
			made++
		case unix.EAGAIN:
		default:
			t.Errorf("mkdir: %v, want EAGAIN or success", err)
		}
	}
	hostDirs := 0
	for _, d := range []string{"v/a", "v/b"} {
		entries, _ := os.ReadDir(filepath.Join(host, d))
		for _, e := range entries {
			if e.IsDir() {
				hostDirs++
			}
		}
	}
	if made != 1 || hostDirs != 1 {
		t.Errorf("32 racing mkdirs under a limit of 3 with 2 cgroups made: %d succeeded, %d new cgroups on the host; want 1", made, hostDirs)
	}
	s.waitLog(t, "rule=container-limit")
}
