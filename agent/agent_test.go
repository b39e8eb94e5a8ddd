//go:build linux

package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const cgroup2Magic = 0x63677270

// TestAgent runs runChecks in a child under the filter, served with a
// Magic that calls one temporary directory a cgroup2 view and a Mounter
// that refuses one target and accepts another.
func TestAgent(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	view, other := filepath.Join(tmp, "view"), filepath.Join(tmp, "other")
	for _, d := range []string{view, other, tmp + "/deny", tmp + "/ok", tmp + "/tmpfs"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("view", tmp+"/link"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(view, tmp+"/abslink"); err != nil {
		t.Fatal(err)
	}

	type mountSeen struct {
		m        MountCall
		resolved bool // Caller.Resolve(m.Target) is the directory the test made
	}
	var mu sync.Mutex
	var mounts []mountSeen
	mounter := func(c Caller, m MountCall) (bool, unix.Errno) {
		f, err := c.Resolve(m.Target)
		same := false
		if err == nil {
			var a, b unix.Stat_t
			unix.Fstat(int(f.Fd()), &a)
			unix.Stat(m.Target, &b)
			same = a.Dev == b.Dev && a.Ino == b.Ino
			f.Close()
		}
		mu.Lock()
		mounts = append(mounts, mountSeen{m, same && c.Valid() && c.Tid > 0})
		mu.Unlock()
		if strings.HasSuffix(m.Target, "/deny") {
			return true, unix.EPERM
		}
		return true, 0
	}

	c := startChild(t, "checks", "CGFS_VIEW="+view, "CGFS_OTHER="+other, "CGFS_TMP="+tmp)
	a := Serve(c.listener(t), Config{Magic: magicFor(t, view, cgroup2Magic), Mounter: mounter, Log: testLogger(t)})

	// The child has made every check but the last: close the agent and let
	// it try a notified syscall without one.
	var b [1]byte
	if _, err := c.sock.Read(b[:]); err != nil {
		c.cmd.Wait()
		t.Fatalf("child did not finish its checks: %v\n%s", err, c.stderr.String())
	}
	// An answer is counted just after it is sent: wait for the last one.
	stats := a.Stats()
	for deadline := time.Now().Add(5 * time.Second); (stats.Answered < 11 || stats.Continued < 8) && time.Now().Before(deadline); stats = a.Stats() {
		time.Sleep(time.Millisecond)
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	c.sock.Write([]byte{'X'})
	c.wait(t)

	var r map[string]result
	if err := json.Unmarshal(c.stdout.Bytes(), &r); err != nil {
		t.Fatalf("child output %q: %v", c.stdout.String(), err)
	}
	var realView, realOther unix.Statfs_t
	if err := unix.Statfs(view, &realView); err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(other, &realOther); err != nil {
		t.Fatal(err)
	}

	// A view answered with the magic and its own real statfs.
	if r["statfs-thread"].Note != "true" {
		t.Errorf("statfs-thread ran on the main thread")
	}
	for _, k := range []string{"statfs-view", "statfs-thread", "statfs-rel", "statfs-abslink-rel", "statfs-link", "statfs-dotdot", "fstatfs-view"} {
		st := r[k].Statfs
		if st == nil {
			t.Errorf("%s: errno %d, want an answer", k, r[k].Errno)
			continue
		}
		if st.Type != cgroup2Magic {
			t.Errorf("%s: f_type %#x, want %#x", k, st.Type, cgroup2Magic)
		}
		if !sameStatfs(st, &realView) {
			t.Errorf("%s: %+v, want the real %+v apart from f_type", k, *st, realView)
		}
	}
	// Not a view: the kernel's answer.
	for _, k := range []string{"statfs-other", "fstatfs-other"} {
		if st := r[k].Statfs; st == nil || st.Type != realOther.Type {
			t.Errorf("%s: %+v, want f_type %#x", k, r[k], realOther.Type)
		}
	}
	wantErrno := map[string]unix.Errno{
		"statfs-nonexistent": unix.ENOENT,       // continued
		"fstatfs-badfd":      unix.EBADF,        // continued
		"statfs-badptr":      unix.EFAULT,       // continued: the kernel faults
		"statfs-badbuf":      unix.EFAULT,       // answered: the write failed
		"statfs-toolong":     unix.ENAMETOOLONG, // continued
		"clone3":             unix.ENOSYS,
		"fsopen":             unix.ENOSYS,
		"exec-true":          0,
		"mount-deny":         unix.EPERM, // the Mounter's errno
		"mount-ok":           0,
		"mount-data":         0,
		"mount-tmpfs":        0,           // continued: really mounted
		"statfs-after-close": unix.ENOSYS, // no listener any more
	}
	for k, want := range wantErrno {
		if got := unix.Errno(r[k].Errno); got != want {
			t.Errorf("%s: errno %v (%d) %s, want %v", k, got, r[k].Errno, r[k].Note, want)
		}
	}
	if st := r["statfs-tmpfs"].Statfs; st == nil || st.Type != unix.TMPFS_MAGIC {
		t.Errorf("statfs of the mounted tmpfs: %+v, want TMPFS_MAGIC", r["statfs-tmpfs"])
	}
	if r["getpid"].Note != "true" {
		t.Errorf("getpid under the filter: %v", r["getpid"])
	}
	if res, ok := r["exec-cgroupfd"]; ok {
		t.Logf("os/exec with UseCgroupFD (clone3) under the filter: errno %d: %s", res.Errno, res.Note)
	}

	want := []MountCall{
		{Source: "none", Target: tmp + "/deny", FSType: "cgroup2"},
		{Source: "cg", Target: tmp + "/ok", FSType: "cgroup", Flags: unix.MS_NOSUID | unix.MS_NODEV},
		{Source: "x", Target: tmp + "/ok", FSType: "cgroup2", Data: "nsdelegate"},
	}
	mu.Lock()
	defer mu.Unlock()
	if len(mounts) != len(want) {
		t.Fatalf("Mounter saw %+v, want %+v (tmpfs must not reach it)", mounts, want)
	}
	for i, w := range want {
		if mounts[i].m != w {
			t.Errorf("Mounter call %d: %+v, want %+v", i, mounts[i].m, w)
		}
		if !mounts[i].resolved {
			t.Errorf("Mounter call %d: Caller.Resolve(target) did not find the target", i)
		}
	}
	// 8 answered statfs (7 views + badbuf) and 3 Mounter answers; 8
	// continued.
	if stats != (Stats{Answered: 11, Continued: 8}) {
		t.Errorf("Stats %+v, want 11 answered, 8 continued, none failed", stats)
	}
	t.Logf("stats %+v", stats)
}

// sameStatfs compares the fields of a statfs that do not change while a
// test runs (not the free counts).
func sameStatfs(a, b *unix.Statfs_t) bool {
	return a.Bsize == b.Bsize && a.Blocks == b.Blocks && a.Files == b.Files && a.Fsid == b.Fsid &&
		a.Namelen == b.Namelen && a.Frsize == b.Frsize && a.Flags == b.Flags
}

// TestServeStopsWhenFilterUnused: once the child has exited, the agent
// stops and closes the listener by itself.
func TestServeStopsWhenFilterUnused(t *testing.T) {
	requireRoot(t)
	view := t.TempDir()
	c := startChild(t, "exit", "CGFS_VIEW="+view)
	a := Serve(c.listener(t), Config{Magic: magicFor(t, view, cgroup2Magic), Log: testLogger(t)})
	c.wait(t)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent still serving a listener without tasks")
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close after stop: %v", err)
	}
	if s := a.Stats(); s.Answered != 1 {
		t.Errorf("Stats %+v, want the child's statfs answered", s)
	}
}

// TestServeBadListener: a file that is not a listener stops the agent
// (RECV fails) instead of spinning.
func TestServeBadListener(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	a := Serve(f, Config{})
	// /dev/null polls readable; RECV on it fails and the agent stops.
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent serving /dev/null")
	}
	a.Close()
}

// TestInstallErrors: a second listener in one chain is EBUSY, and without
// CAP_SYS_ADMIN Install says that it needs it.
func TestInstallErrors(t *testing.T) {
	requireRoot(t)
	for mode, want := range map[string]string{
		"twice": "already has a seccomp listener",
		"nocap": "needs CAP_SYS_ADMIN",
	} {
		c := startChild(t, mode)
		if mode == "twice" {
			// Held until the child exits: once every copy is closed,
			// the chain has no listener and a second Install succeeds.
			l := c.listener(t)
			defer l.Close()
		}
		c.wait(t)
		if !strings.Contains(c.stdout.String(), want) {
			t.Errorf("%s: Install said %q, want %q", mode, c.stdout.String(), want)
		}
	}
}

// TestDrainAnswersWhatItReceived: agents serving copies of one listener
// take turns (Drain, then the next one Serves), as daemons do in a
// hand-over, while the child makes statfs calls back to back: every call
// is answered. A notification received and then dropped would leave the
// child waiting for ever, as no other holder can receive it again.
func TestDrainAnswersWhatItReceived(t *testing.T) {
	requireRoot(t)
	view := t.TempDir()
	const calls = 20000
	c := startChild(t, "bench", "CGFS_BENCH_OP=statfs", "CGFS_BENCH_N="+strconv.Itoa(calls), "CGFS_BENCH_PATH="+view)
	listener := c.listener(t)
	defer listener.Close()
	cfg := Config{Magic: magicFor(t, view, cgroup2Magic), Log: testLogger(t)}
	exited := make(chan error, 1)
	go func() { exited <- c.cmd.Wait() }()
	turns := 0
	var answered uint64
	deadline := time.After(60 * time.Second)
	for {
		dup, err := unix.FcntlInt(listener.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		a := Serve(os.NewFile(uintptr(dup), "listener copy"), cfg)
		select {
		case err := <-exited:
			a.Drain(time.Minute)
			answered += a.Stats().Handled()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, c.stderr.String())
			}
			t.Logf("%d statfs calls answered across %d agents (%d by them)", calls, turns+1, answered)
			if turns < 10 {
				t.Errorf("only %d hand-overs while the child ran", turns)
			}
			return
		case <-deadline:
			t.Fatalf("the child's statfs calls are not all answered after %d hand-overs (%d answered): one was dropped", turns, answered+a.Stats().Handled())
		case <-time.After(time.Duration(turns%5) * time.Millisecond):
		}
		if err := a.Drain(time.Minute); err != nil {
			t.Errorf("Drain: %v", err)
		}
		answered += a.Stats().Handled()
		turns++
	}
}

// TestDrainGivesUpAnAnswerThatHangs: an answer a caller keeps from
// ending (here a Mounter that never returns; in life a path on a FUSE
// file system of the caller's own) holds a drain up for the bound it is
// given, no longer; the listener then goes, and the caller's mount fails
// ENOSYS, as with no agent at all.
func TestDrainGivesUpAnAnswerThatHangs(t *testing.T) {
	requireRoot(t)
	target := t.TempDir()
	c := startChild(t, "mount-once", "CGFS_VIEW="+target)
	called, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	mounter := func(Caller, MountCall) (bool, unix.Errno) {
		close(called)
		<-release
		return true, 0
	}
	a := Serve(c.listener(t), Config{Mounter: mounter, Log: testLogger(t)})
	select {
	case <-called:
	case <-time.After(20 * time.Second):
		t.Fatal("the child's mount never reached the Mounter")
	}
	start := time.Now()
	err := a.Drain(200 * time.Millisecond)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Drain took %s with a bound of 200ms", took)
	}
	if err == nil {
		t.Error("Drain gave up an answer under way and said nothing")
	}
	c.wait(t)
	if got, want := strings.TrimSpace(c.stdout.String()), strconv.Itoa(int(unix.ENOSYS)); got != want {
		t.Errorf("the child's mount gave errno %s, want %s (ENOSYS: no listener)", got, want)
	}
}
