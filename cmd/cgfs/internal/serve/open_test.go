package serve

import (
	"errors"
	"fmt"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/testhost"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/pidns"
)

func TestMain(m *testing.M) {
	if pidns.IsHelper() { // the test binary is the views' helper, as cgfs is
		os.Exit(pidns.HelperMain())
	}
	// A race-built helper sleeps a second at its exit unless GORACE
	// (which it takes from its server) says not to.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	os.Exit(m.Run())
}

// env is what these tests serve views of: cgroup v2 directories of
// their own below the host's cgroup2 root (cgfs-test-serve-*), owned by
// processes they start. They need host root.
type env struct {
	t     *testing.T
	procs *proc.Procs
	v2    string // the host's cgroup2 mount point
	log   *slog.Logger
}

var seq atomic.Int32

func newEnv(t *testing.T) *env {
	t.Helper()
	testhost.NeedRoot(t, "serving views (FUSE mounts, real cgroups)")
	procs, l := testhost.Host(t)
	e := &env{t: t, procs: procs, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, h := range l.Hierarchies {
		if !h.V1 && h.Root == "/" {
			e.v2 = h.MountPoint
		}
	}
	if e.v2 == "" {
		t.Skip("the host mounts no cgroup2 hierarchy at its root")
	}
	return e
}

// cgroup makes a cgroup v2 directory below dir (the host's cgroup2 root
// if ""), removed with what is in it when the test ends.
func (e *env) cgroup(below string) string {
	e.t.Helper()
	if below == "" {
		below = e.v2
	}
	dir := filepath.Join(below, fmt.Sprintf("cgfs-test-serve-%d-%d", os.Getpid(), seq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { removeCgroup(e.t, dir) })
	return dir
}

// removeCgroup kills what is left in dir (and below) and removes it.
func removeCgroup(t *testing.T, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		if en.IsDir() {
			removeCgroup(t, filepath.Join(dir, en.Name()))
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || err == unix.ENOENT {
			return
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			t.Errorf("removing %s: %v", dir, err)
			return
		}
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		time.Sleep(10 * time.Millisecond) // the kernel says nothing when the last task is gone
	}
}

// process starts sleep (in dir's cgroup, if dir is set; in user and pid
// namespaces of its own, if own), ended when the test ends.
func (e *env) process(dir string, own bool) int {
	e.t.Helper()
	cmd := exec.Command("sleep", "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if own {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}}
	}
	if dir != "" {
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			e.t.Fatal(err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

// open is Open of o with the test's log.
func (e *env) open(o Options) (*Views, error) {
	o.Log = e.log
	v, err := Open(e.procs, o)
	if err == nil {
		e.t.Cleanup(v.Close)
	}
	return v, err
}

// TestOpenRefusesWhatIsNotTheOwners: a view is refused (a usage error
// that says why and what to do) where the owner has no cgroup of its
// own: a directory that is no cgroup, the hierarchy's root, a hidden
// leaf of cgfs, a cgroup holding a task outside the owner's namespaces.
// --shared serves the last three read-only: the owner can change
// nothing there.
func TestOpenRefusesWhatIsNotTheOwners(t *testing.T) {
	e := newEnv(t)
	mine := e.cgroup("")
	owner := e.process("", false)
	leaf := filepath.Join(mine, translate.LeafName)
	if err := os.Mkdir(leaf, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(t, leaf) })
	// A container (its own user and pid namespaces) whose cgroup holds a
	// host process too.
	shared := e.cgroup("")
	container := e.process(shared, true)
	host := e.process(shared, false)

	if _, err := e.open(Options{Owner: owner, HostDir: t.TempDir()}); !isUsage(err, "not a directory on a cgroup2 filesystem") {
		t.Errorf("a directory that is no cgroup: %v, want a usage error", err)
	}
	for _, c := range []struct {
		name, dir string
		owner     int
		why       string
	}{
		{"a hidden leaf", leaf, owner, "the owner's cgroup is a hidden leaf of cgfs"},
		{"the hierarchy's root", e.v2, owner, "the owner's cgroup is the hierarchy's root"},
		{"a host task in it", shared, container, fmt.Sprintf("holds task %d, which is outside the owner's namespaces", host)},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.open(Options{Owner: c.owner, HostDir: c.dir})
			if !isUsage(err, c.why) || !strings.Contains(err.Error(), "--shared .") {
				t.Errorf("Open: %v, want a usage error saying %q and naming --shared .", err, c.why)
			}
			v, err := e.open(Options{Owner: c.owner, HostDir: c.dir, Shared: []string{"."}})
			if err != nil {
				t.Fatalf("Open with --shared .: %v", err)
			}
			mnt := serveDetached(t, v)
			name := fmt.Sprintf("cgfs-test-serve-ro-%d", os.Getpid())
			err = unix.Mkdirat(int(mnt.Fd()), name, 0o755)
			if err == nil {
				_ = unix.Rmdir(filepath.Join(c.dir, name))
			}
			if !errors.Is(err, unix.EROFS) {
				t.Errorf("mkdir in a view served read-only: %v, want EROFS", err)
			}
		})
	}
	// The server's own view of the host needs no cgroup of its own.
	if _, err := e.open(Options{HostDir: shared}); err != nil {
		t.Errorf("a view of the host's own (owner 0) of a cgroup holding any task: %v", err)
	}
	// The owner's own cgroup is served writable.
	v, err := e.open(Options{Owner: owner, HostDir: mine})
	if err != nil {
		t.Fatal(err)
	}
	mnt := serveDetached(t, v)
	if err := unix.Mkdirat(int(mnt.Fd()), "child", 0o755); err != nil {
		t.Errorf("mkdir in the owner's own cgroup: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mine, "child")); err != nil {
		t.Errorf("the view's mkdir made nothing on the host: %v", err)
	}
}

func isUsage(err error, why string) bool {
	var ue UsageError
	return errors.As(err, &ue) && strings.Contains(err.Error(), why)
}

// serveDetached serves v on a new detached mount, stopped when the test
// ends, and returns the mount.
func serveDetached(t *testing.T, v *Views) *os.File {
	t.Helper()
	procs, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { procs.Close() })
	m, err := v.Serve(access.NewIdentifier(procs), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	f := m.Take()
	t.Cleanup(func() { f.Close() })
	return f
}

// TestNestedViewsBounded: a container's nested runtimes asking for more
// views at once than its bound get exactly that many; the rest are
// refused ENOSPC, as the kernel refuses a mount past fs.mount-max. The
// budget says what it holds; views whose mounts are gone free their
// share; once closed, every nested view is stopped and no more served,
// and what they remembered of their callers is let go.
func TestNestedViewsBounded(t *testing.T) {
	e := newEnv(t)
	dir := e.cgroup("")
	tid := e.process("", false)
	b := NewBudget(Bounds{NestedViews: 3})
	n := NewNested(e.procs, Options{Name: "c", HostDir: dir, Budget: b, Log: e.log}, nil)
	const asked = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	var mounts []*os.File
	refused := 0
	for range asked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := n.Serve(tid)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				mounts = append(mounts, f)
			case errors.Is(err, unix.ENOSPC):
				refused++
			default:
				t.Errorf("a nested view: %v", err)
			}
		}()
	}
	wg.Wait()
	if len(mounts) != 3 || refused != asked-3 {
		t.Errorf("%d nested views asked at once with a bound of 3: %d served, %d refused ENOSPC", asked, len(mounts), refused)
	}
	if live, most := n.Live(); live != len(mounts) || most != 3 {
		t.Errorf("Live() = %d, %d; want %d, 3", live, most, len(mounts))
	}
	if h := b.Held(n)["nested_views"]; h != [2]float64{float64(len(mounts)), 3} {
		t.Errorf("the budget holds %v nested views, want %d of 3", h, len(mounts))
	}
	for _, f := range mounts {
		if fd, err := unix.Openat(int(f.Fd()), "cgroup.procs", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			t.Errorf("reading a nested view: %v", err)
		} else {
			unix.Close(fd)
		}
		f.Close() // its nested container's mount namespace is gone
	}
	// The kernel ends each connection with its last mount; nothing says
	// so but the count going down.
	deadline := time.Now().Add(20 * time.Second)
	for live, _ := n.Live(); live != 0; live, _ = n.Live() {
		if time.Now().After(deadline) {
			t.Fatalf("%d nested views still counted 20 s after their mounts were gone", live)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f, err := n.Serve(tid)
	if err != nil {
		t.Fatalf("a nested view once the others were gone: %v", err)
	}
	defer f.Close()
	if tasks, _ := n.ident.Known(); tasks == 0 {
		t.Error("the nested views' identifier remembers no caller after their reads")
	}
	n.Close()
	// What it remembered holds descriptors: a container gone lets go.
	if tasks, chains := n.ident.Known(); tasks != 0 || chains != 0 {
		t.Errorf("closed nested views still remember %d callers and %d user namespaces", tasks, chains)
	}
	fd, err := unix.Openat(int(f.Fd()), "cgroup.procs", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	if !errors.Is(err, unix.ENOTCONN) {
		t.Errorf("a nested view after Close: %v, want ENOTCONN", err)
	}
	if _, err := n.Serve(tid); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Serve after Close: %v, want refused", err)
	}
	if _, err := n.Serve(999999999); err == nil {
		t.Error("a nested view of a thread that does not exist was served")
	}
}

// TestReadOnlyViewChangesNothing: a view served read-only (--shared: the
// owner has no cgroup of its own there) leaves the hidden leaves below
// it alone when it is opened: they are other servers' to fold, and one
// another server is making (made, its tasks not yet moved in, its
// controllers not yet enabled) looks unneeded. A view of the owner's own
// cgroup folds its own unneeded ones.
func TestReadOnlyViewChangesNothing(t *testing.T) {
	e := newEnv(t)
	top := e.cgroup("")
	container := e.process(top, true)
	e.process(top, false) // a host task: top is not the container's own
	mine := e.cgroup(top)
	leaf := filepath.Join(mine, translate.LeafName)
	if err := os.Mkdir(leaf, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(t, leaf) })
	if _, err := e.open(Options{Owner: container, HostDir: top, Shared: []string{"."}}); err != nil {
		t.Fatalf("Open read-only: %v", err)
	}
	if _, err := os.Stat(leaf); err != nil {
		t.Errorf("a read-only view of %s removed the hidden leaf below it: %v", top, err)
	}
	// The view of mine's owner (a host process there) folds it.
	owner := e.process(mine, false)
	if _, err := e.open(Options{Owner: owner, HostDir: mine}); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := os.Stat(leaf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the owner's view left its unneeded hidden leaf: %v", err)
	}
}
