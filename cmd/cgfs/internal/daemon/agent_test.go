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
