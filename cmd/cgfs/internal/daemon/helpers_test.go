package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/testhost"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/keeper"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

// The daemon's tests serve real views (FUSE mounts, made detached, never
// attached anywhere) of cgroup v2 directories they make below the
// host's cgroup2 root (cgfs-test-daemon-*), owned by sleep processes of
// their own: they need host root.

func newLog(t *testing.T) (*testhost.Log, *slog.Logger) {
	l := &testhost.Log{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the daemon's log:\n%s", l.String())
		}
	})
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fixture is one daemon of a test and what its views are made of.
type fixture struct {
	t     *testing.T
	d     *Daemon
	log   *testhost.Log
	procs *proc.Procs
	reg   *prometheus.Registry
	v2    string // the host's cgroup2 mount point
}

var cgroupSeq atomic.Int32

// newFixture starts a daemon (bounds b) that serves nothing yet; it is
// closed when the test ends, and every view it served is waited for.
func newFixture(t *testing.T, b serve.Bounds) *fixture {
	t.Helper()
	testhost.NeedRoot(t, "the daemon's tests (real FUSE mounts and cgroups)")
	procs, l := testhost.Host(t)
	fx := &fixture{t: t, procs: procs, reg: prometheus.NewRegistry()}
	for _, h := range l.Hierarchies {
		if !h.V1 && h.Root == "/" {
			fx.v2 = h.MountPoint
		}
	}
	if fx.v2 == "" {
		t.Skip("the host mounts no cgroup2 hierarchy at its root")
	}
	w, err := host.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	var log *slog.Logger
	fx.log, log = newLog(t)
	fx.d = New(procs, metrics.New(fx.reg), w, b, log)
	t.Cleanup(func() {
		fx.closeAndWait()
		w.Close()
	})
	return fx
}

// closeAndWait closes the daemon and waits until every view it served
// is dropped.
func (fx *fixture) closeAndWait() {
	fx.t.Helper()
	d := fx.d
	d.mu.Lock()
	var all []*served
	for _, s := range d.views {
		all = append(all, s)
	}
	d.mu.Unlock()
	d.mu.Lock()
	handing := d.handing
	d.mu.Unlock()
	d.Close()
	if handing {
		return // its views' connections live on in the next server
	}
	for _, s := range all {
		select {
		case <-s.dropped:
		case <-time.After(20 * time.Second):
			fx.t.Errorf("view %s not dropped 20 s after Close", s.req.Name)
		}
	}
}

// cgroup makes a cgroup v2 directory of the test's below the host's
// cgroup2 root; it is removed (what is in it killed) when the test ends.
func (fx *fixture) cgroup() string {
	fx.t.Helper()
	dir := filepath.Join(fx.v2, fmt.Sprintf("cgfs-test-daemon-%d-%d", os.Getpid(), cgroupSeq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		fx.t.Fatal(err)
	}
	fx.t.Cleanup(func() {
		if err := cgroups.RemoveTree(dir); err != nil {
			fx.t.Errorf("removing %s: %v", dir, err)
		}
	})
	return dir
}

// owner starts a process to own views (a container's, as the daemon
// sees it); it is killed when the test ends, or by kill.
type owner struct {
	cmd  *exec.Cmd
	once sync.Once
}

func (fx *fixture) owner() *owner {
	fx.t.Helper()
	o := &owner{cmd: exec.Command("sleep", "3600")}
	if err := o.cmd.Start(); err != nil {
		fx.t.Fatal(err)
	}
	fx.t.Cleanup(o.kill)
	return o
}

func (o *owner) pid() int { return o.cmd.Process.Pid }

// kill ends the owner and reaps it.
func (o *owner) kill() {
	o.once.Do(func() {
		_ = o.cmd.Process.Kill()
		_ = o.cmd.Wait()
	})
}

// attach asks the daemon for a view called name of dir, owned by pid, as
// the control socket's handler does.
func (fx *fixture) attach(name string, pid int, dir string) (control.Answer, *os.File) {
	return fx.d.Handle(control.Request{Op: "attach", Name: name, Owner: pid, Cgroup: dir}, 0)
}

// mustAttach is attach that fails the test unless a view came.
func (fx *fixture) mustAttach(name string, pid int, dir string) *os.File {
	fx.t.Helper()
	a, f := fx.attach(name, pid, dir)
	if a.Error != "" || f == nil {
		fx.t.Fatalf("attach %s: answer %+v, mount %v", name, a, f)
	}
	fx.t.Cleanup(func() { f.Close() })
	return f
}

// served is the view served as name now (nil: none).
func (fx *fixture) served(name string) *served {
	fx.d.mu.Lock()
	defer fx.d.mu.Unlock()
	return fx.d.views[name]
}

// waitDropped waits for s to be dropped.
func (fx *fixture) waitDropped(s *served, why string) {
	fx.t.Helper()
	select {
	case <-s.dropped:
	case <-time.After(20 * time.Second):
		fx.t.Fatalf("view %s not dropped 20 s after %s", s.req.Name, why)
	}
}

// listed are the names the daemon lists.
func (fx *fixture) listed() []string {
	var out []string
	for _, v := range fx.d.List() {
		out = append(out, v.Name)
	}
	return out
}

// gauge is the value of an unlabelled metric the daemon's registry
// gathers now (-1: absent).
func (fx *fixture) gauge(name string) float64 {
	fx.t.Helper()
	mfs, err := fx.reg.Gather()
	if err != nil {
		fx.t.Fatalf("gathering the daemon's metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			if g := mf.Metric[0].GetGauge(); g != nil {
				return g.GetValue()
			}
		}
	}
	return -1
}

// readAt reads file name of the view whose (detached) mount is mnt, with
// plain syscalls: this process serves the mount, and Go's poller must
// not hold its descriptors (see fs's tests).
func readAt(mnt *os.File, name string) (string, error) {
	fd, err := unix.Openat(int(mnt.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return "", err
		}
		if n == 0 {
			return string(out), nil
		}
		out = append(out, buf[:n]...)
	}
}

// isGone tells whether err is what a container sees of a view no longer
// served: its FUSE connection ended.
func isGone(err error) bool { return errors.Is(err, unix.ENOTCONN) }

// keeperLink is a link such as a keeper makes for its server: the
// keeper's end (the test's) and the server's (the daemon's).
func keeperLink(t *testing.T) (keeperEnd, serverEnd *keeper.Link) {
	t.Helper()
	mine, theirs, err := keeper.Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mine.Close() })
	// The server's end comes as a keeper hands it to its child: a
	// descriptor named by CGFS_KEEPER.
	fd, err := unix.FcntlInt(theirs.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(keeper.Env, strconv.Itoa(fd))
	l, err := keeper.Dial()
	if err != nil || l == nil {
		t.Fatalf("the server's end of the link: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return mine, l
}

// fakeKeeper is the test as a daemon's keeper: it reads every message
// the daemon sends it.
type fakeKeeper struct {
	t    *testing.T
	link *keeper.Link
	msgs chan keeper.Msg
}

// takeUp starts fx's daemon under a keeper played by the test: the
// daemon is given items (wait: for an upgrade, told go with states once
// it is ready) and returns once it serves.
func (fx *fixture) takeUp(wait bool, states map[string]json.RawMessage, items ...keeper.Msg) *fakeKeeper {
	fx.t.Helper()
	mine, theirs := keeperLink(fx.t)
	k := &fakeKeeper{t: fx.t, link: mine, msgs: make(chan keeper.Msg, 256)}
	go func() {
		defer close(k.msgs)
		for {
			m, err := mine.Recv()
			if err != nil {
				return
			}
			k.msgs <- m
		}
	}()
	done := make(chan error, 1)
	go func() { done <- fx.d.TakeUp(theirs) }()
	for _, it := range items {
		it.Op = "item"
		k.send(it)
	}
	k.send(keeper.Msg{Op: "end", Wait: wait})
	if wait {
		k.next("ready")
		k.send(keeper.Msg{Op: "go", States: states})
	}
	select {
	case err := <-done:
		if err != nil {
			fx.t.Fatalf("TakeUp: %v", err)
		}
	case <-time.After(20 * time.Second):
		fx.t.Fatal("TakeUp did not return in 20 s")
	}
	k.next("serving")
	return k
}

func (k *fakeKeeper) send(m keeper.Msg) {
	k.t.Helper()
	if err := k.link.Send(m); err != nil {
		k.t.Fatalf("the keeper sending %s: %v", m.Op, err)
	}
}

// next is the daemon's next message of op (one of ops); those before it
// are passed over, their descriptors closed.
func (k *fakeKeeper) next(ops ...string) keeper.Msg {
	k.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m, ok := <-k.msgs:
			if !ok {
				k.t.Fatalf("the link ended before the daemon sent %v", ops)
			}
			if slices.Contains(ops, m.Op) {
				return m
			}
			closeFiles(m.Files)
		case <-deadline:
			k.t.Fatalf("the daemon sent its keeper no %v in 20 s", ops)
		}
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
