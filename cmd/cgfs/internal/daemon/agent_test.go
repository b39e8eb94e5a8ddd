package daemon

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
)

// deadListener stands in for the seccomp listener of a container whose
// every task is gone: a pipe with no writer, which polls as hung up, so
// the agent serving it ends at once (as agent.Serve's does when no task
// uses the filter any more).
func deadListener(t *testing.T) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	return r
}

// TestKeeperHoldsSeccompListeners: under a keeper, each seccomp listener
// the daemon answers is given to the keeper, and let go once its filter
// has no task left, even when that is at once: the listener the agent
// closes is never the one being handed over.
func TestKeeperHoldsSeccompListeners(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	k := fx.takeUp(false, nil)
	fx.mustAttach("c", fx.owner().pid(), fx.cgroup())
	closeFiles(k.next("keep").Files)
	fx.serveSeccomp()
	for range 4 {
		if a, _ := fx.d.Handle(control.Request{Op: "agent", Name: "c", File: deadListener(t)}, 0); a.Error != "" {
			t.Fatalf("agent: %+v", a)
		}
		m := k.next("keep")
		closeFiles(m.Files)
		if !strings.HasPrefix(m.Name, "agent:c:") || m.Kind != "agent" || len(m.Files) != 1 {
			t.Errorf("the keeper was given %s (%s, %d files), want agent:c:N with the listener", m.Name, m.Kind, len(m.Files))
		}
		if d := k.next("drop"); d.Name != m.Name {
			t.Errorf("once the listener's filter had no task the keeper was told to drop %q, want %q", d.Name, m.Name)
		}
	}
	if n := fx.d.agentStats(); n != 0 {
		t.Errorf("%d notifications handled, want none", n)
	}
}

// TestAgentWhileSeccompStarts: the agent request may come while the
// daemon starts serving its seccomp socket (its control socket answers
// already): it is refused until the socket is served, then served with
// the daemon's answers.
func TestAgentWhileSeccompStarts(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	fx.mustAttach("c", fx.owner().pid(), fx.cgroup())
	started := make(chan struct{})
	go func() {
		defer close(started)
		fx.serveSeccomp()
	}()
	for {
		a, _ := fx.d.Handle(control.Request{Op: "agent", Name: "c", File: deadListener(t)}, 0)
		if a.Error == "" {
			break
		}
		if !a.Usage || !strings.Contains(a.Error, "seccomp listener") {
			t.Fatalf("agent before the seccomp socket is served: %+v, want a usage error", a)
		}
	}
	<-started
	fx.d.mu.Lock()
	magic := fx.d.agentCfg.Magic
	fx.d.mu.Unlock()
	if magic == nil {
		t.Error("the daemon's agents answer statfs of no view")
	}
}

// serveSeccomp serves the daemon's seccomp socket (in a directory of
// the test's), which the agent request needs.
func (fx *fixture) serveSeccomp() string {
	fx.t.Helper()
	path := filepath.Join(fx.t.TempDir(), "seccomp.sock")
	ln, err := control.Listen("unix", path)
	if err != nil {
		fx.t.Fatal(err)
	}
	fx.t.Cleanup(func() { ln.Close() })
	if err := fx.d.ServeSeccomp(ln); err != nil {
		fx.t.Fatal(err)
	}
	return path
}

// TestSeccompSocketTakesRuncListeners: runc's message at the seccomp
// socket (its state and the listener, named seccompFd) has the listener
// answered (and kept); a message without it is refused and nothing is
// kept of it.
func TestSeccompSocketTakesRuncListeners(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	k := fx.takeUp(false, nil)
	path := fx.serveSeccomp()
	send := func(state string, fds ...*os.File) {
		t.Helper()
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var rights []byte
		if len(fds) > 0 {
			var ns []int
			for _, f := range fds {
				ns = append(ns, int(f.Fd()))
				defer f.Close()
			}
			rights = unix.UnixRights(ns...)
		}
		if _, _, err := c.WriteMsgUnix([]byte(state), rights, nil); err != nil {
			t.Fatal(err)
		}
		// The daemon closes the connection once it took the message.
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after the message: %v, want the daemon to end the connection", err)
		}
	}
	send(`{"fds":["seccompFd"],"pid":1,"state":{"id":"c"}}`)                                           // no descriptor
	send(`{"fds":["other"],"pid":1,"state":{"id":"c"}}`, deadListener(t))                              // none named seccompFd
	send(`not json`, deadListener(t))                                                                  // no state
	send(`{"fds":["other","seccompFd"],"pid":1,"state":{"id":"c"}}`, deadListener(t), deadListener(t)) // the second
	m := k.next("keep")
	closeFiles(m.Files)
	if !strings.HasPrefix(m.Name, "agent:c:") || len(m.Files) != 1 {
		t.Errorf("the keeper was given %s with %d files, want agent:c:N with the listener", m.Name, len(m.Files))
	}
	if d := k.next("drop"); d.Name != m.Name {
		t.Errorf("the keeper was told to drop %s, want %s", d.Name, m.Name)
	}
	if n := fx.log.Count("serving a seccomp listener"); n != 1 {
		t.Errorf("%d listeners served, want 1", n)
	}
	if n := fx.log.Count("a seccomp listener message without"); n != 3 {
		t.Errorf("%d messages refused, want 3", n)
	}
}

// TestDroppedViewsLeaveTheStatfsSet: the device of a view that was
// dropped is no longer answered as a cgroupfs by the daemon's agents
// (the kernel gives the number to the next file system mounted), and the
// set holds the views served, not every view that ever was.
func TestDroppedViewsLeaveTheStatfsSet(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	fx.serveSeccomp()
	magic := func(dev uint64) bool {
		fx.d.mu.Lock()
		m := fx.d.agentCfg.Magic
		fx.d.mu.Unlock()
		_, ok := m(dev, 1)
		return ok
	}
	for round := range 3 {
		o := fx.owner()
		a, mnt := fx.attach("c", o.pid(), fx.cgroup())
		if a.Error != "" || mnt == nil {
			t.Fatalf("attach: %+v", a)
		}
		s := fx.served("c")
		dev := s.mounted.Dev()
		if !magic(dev) {
			t.Fatalf("round %d: a served view's device %d is not answered as a cgroupfs", round, dev)
		}
		o.kill()
		mnt.Close() // mounted nowhere: the connection ends with it
		fx.waitDropped(s, "its owner and its mount went")
		if magic(dev) {
			t.Errorf("round %d: the dropped view's device %d is still answered as a cgroupfs", round, dev)
		}
		if n := fx.d.set.Len(); n != 0 {
			t.Errorf("round %d: the statfs set holds %d devices with no view served", round, n)
		}
	}
}

// TestDroppedViewsLeaveNoSeries: a dropped container's request and
// refusal counters go with it (a node's pods come and go: a series per
// name that ever was would grow without bound), unless a view served
// now shows the same label.
func TestDroppedViewsLeaveNoSeries(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	series := func(label string) int {
		mfs, err := fx.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			for _, m := range mf.Metric {
				for _, l := range m.Label {
					if l.GetName() == "container" && l.GetValue() == label && strings.HasPrefix(mf.GetName(), "cgfs_re") {
						n++
					}
				}
			}
		}
		return n
	}
	attach := func(name, label string) (*owner, *os.File) {
		o := fx.owner()
		a, mnt := fx.d.Handle(control.Request{Op: "attach", Name: name, Label: label, Owner: o.pid(), Cgroup: fx.cgroup()}, 0)
		if a.Error != "" || mnt == nil {
			t.Fatalf("attach %s: %+v", name, a)
		}
		if _, err := readAt(mnt, "cgroup.procs"); err != nil { // a request: a series
			t.Fatal(err)
		}
		return o, mnt
	}
	drop := func(name string, o *owner, mnt *os.File) {
		s := fx.served(name)
		o.kill()
		mnt.Close()
		fx.waitDropped(s, "its owner and its mount went")
	}
	o, mnt := attach("a", "pod/a")
	if series("pod/a") == 0 {
		t.Fatal("a served view's requests made no series")
	}
	drop("a", o, mnt)
	if n := series("pod/a"); n != 0 {
		t.Errorf("a dropped view left %d series", n)
	}
	// A restart: the old view still served, the new one's label is
	// shown already, and its name stands in; once the old one goes, the
	// label is free again, and a view that takes it keeps its series
	// when the other goes.
	o1, m1 := attach("b1", "pod/b")
	o2, m2 := attach("b2", "pod/b")
	if series("b2") == 0 {
		t.Fatal("the second view of a label is not counted under its name")
	}
	drop("b1", o1, m1)
	if n, m := series("pod/b"), series("b2"); n != 0 || m == 0 {
		t.Errorf("the first view of a label dropped: %d series of the label left, %d of the second view's name (want 0 and some)", n, m)
	}
	attach("b3", "pod/b")
	drop("b2", o2, m2)
	if n, m := series("pod/b"), series("b2"); n == 0 || m != 0 {
		t.Errorf("the second view dropped: %d series of the label the third shows, %d of the second's name (want some and 0)", n, m)
	}
}
