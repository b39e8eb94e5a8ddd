package daemon

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/keeper"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
)

// TestKeeperLetsGoOfDroppedViews: under a keeper, every view attached is
// given to the keeper (its connection and its state), and let go once
// the view is dropped, detached or its container ended: the keeper holds
// no connection of a view no server serves.
func TestKeeperLetsGoOfDroppedViews(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	k := fx.takeUp(false, nil)
	dir := fx.cgroup()
	for _, end := range []string{"detach", "container"} {
		o := fx.owner()
		mnt := fx.mustAttach(end, o.pid(), dir)
		m := k.next("keep")
		closeFiles(m.Files)
		var st viewState
		if err := json.Unmarshal(m.State, &st); err != nil {
			t.Fatal(err)
		}
		if m.Name != viewItem(end) || m.Kind != "view" || len(m.Files) == 0 || st.Req.Name != end || st.Req.Owner != o.pid() || st.OwnerStart == 0 {
			t.Errorf("the keeper was given %s (%s, %d files, state %+v); want %s with its connection, owner %d and its start",
				m.Name, m.Kind, len(m.Files), st, viewItem(end), o.pid())
		}
		if end == "detach" {
			if !fx.d.Detach(end) {
				t.Fatalf("detach %s: no such view", end)
			}
		} else {
			s := fx.served(end)
			o.kill()
			mnt.Close()
			fx.waitDropped(s, "its container ended")
		}
		if m := k.next("drop"); m.Name != viewItem(end) {
			t.Errorf("after the %s the keeper was told to drop %q, want %s", end, m.Name, viewItem(end))
		}
	}
}

// TestDrainWaitsForRequestsUnderWay: a drain for the next server lets
// the attaches under way end first and gives the keeper each of their
// views with its last state; every request that changes what is served
// after it is asked to retry (reaching the next server), and nothing of
// those is kept.
func TestDrainWaitsForRequestsUnderWay(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	k := fx.takeUp(false, nil)
	dir, o := fx.cgroup(), fx.owner()
	fx.mustAttach("before", o.pid(), dir)
	const askers = 6
	var wg sync.WaitGroup
	var mu sync.Mutex
	attached := map[string]bool{}
	retried := 0
	for i := range askers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("during%d", i)
			a, f := fx.attach(name, o.pid(), dir)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case a.Error == "" && f != nil:
				attached[name] = true
				t.Cleanup(func() { f.Close() })
			case a.Retry && f == nil:
				retried++
			default:
				t.Errorf("attach %s during a drain: %+v %v; want a view or a retry", name, a, f)
			}
		}()
	}
	k.send(keeper.Msg{Op: "drain"})
	// Until drained, every view kept is noted.
	kept := map[string]bool{}
	var drained keeper.Msg
	for drained.Op == "" {
		m := k.next("keep", "drained")
		closeFiles(m.Files)
		if m.Op == "keep" {
			kept[m.Name] = true
		} else {
			drained = m
		}
	}
	wg.Wait()
	t.Logf("during the drain: %d attached, %d asked to retry", len(attached), retried)
	for name := range attached {
		if !kept[viewItem(name)] {
			t.Errorf("%s was attached during the drain but not given to the keeper before it drained", name)
		}
		if _, ok := drained.States[viewItem(name)]; !ok {
			t.Errorf("%s was attached during the drain but has no last state in drained", name)
		}
	}
	if _, ok := drained.States["view:before"]; !ok {
		t.Errorf("drained states %v lack view:before", slices.Collect(mapKeys(drained.States)))
	}
	for _, req := range []control.Request{
		{Op: "attach", Name: "after", Owner: o.pid(), Cgroup: dir},
		{Op: "detach", Name: "before"},
		{Op: "enter", Name: "before", Pid: o.pid()},
	} {
		if a, f := fx.d.Handle(req, 0); !a.Retry || f != nil {
			t.Errorf("%s after the drain: %+v %v, want a retry", req.Op, a, f)
		}
	}
	if a, _ := fx.d.Handle(control.Request{Op: "list"}, 0); len(a.Views) != 1+len(attached) {
		t.Errorf("list after the drain: %+v, want the %d views drained", a.Views, 1+len(attached))
	}
	// The keeper says the next server serves: this one is done.
	k.send(keeper.Msg{Op: "done"})
	select {
	case <-fx.d.HandedOver():
	case <-time.After(20 * time.Second):
		t.Fatal("the daemon did not end its service after the keeper said done")
	}
	// Nothing kept after drained.
	select {
	case m := <-k.msgs:
		if m.Op == "keep" {
			t.Errorf("the daemon kept %s after it drained", m.Name)
		}
		closeFiles(m.Files)
	default:
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestUpgradeAnswers: cgfs upgrade is answered once the keeper says the
// upgrade is done (with the pause it measured, and the daemon then
// handing over), or that it failed (the daemon serving on); one asked
// while another is under way is refused.
func TestUpgradeAnswers(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	k := fx.takeUp(false, nil)
	dir, o := fx.cgroup(), fx.owner()

	// A failed upgrade: the daemon serves on.
	answer := make(chan control.Answer, 1)
	go func() { a, _ := fx.d.Handle(control.Request{Op: "upgrade"}, 0); answer <- a }()
	k.next("upgrade")
	if a, _ := fx.d.Handle(control.Request{Op: "upgrade"}, 0); !strings.Contains(a.Error, "under way") {
		t.Errorf("an upgrade asked during another: %+v, want refused", a)
	}
	k.send(keeper.Msg{Op: "done", Error: "the new server exited"})
	if a := <-answer; a.Error != "the new server exited" || a.Then != nil {
		t.Errorf("a failed upgrade answered %+v, want its error and no hand-over", a)
	}
	fx.mustAttach("still", o.pid(), dir)

	// One that is done: the answer says the pause, then the daemon
	// hands over.
	go func() { a, _ := fx.d.Handle(control.Request{Op: "upgrade"}, 0); answer <- a }()
	k.next("upgrade")
	k.send(keeper.Msg{Op: "drain"})
	if m := k.next("drained"); len(m.States) != 1 {
		t.Errorf("drained with states %v, want the one view", m.States)
	}
	k.send(keeper.Msg{Op: "done", PauseMicros: 1234})
	a := <-answer
	if a.Error != "" || a.PauseMicros != 1234 || a.Then == nil {
		t.Fatalf("a done upgrade answered %+v, want the pause 1234 µs and a hand-over", a)
	}
	select {
	case <-fx.d.HandedOver():
		t.Fatal("handed over before the answer was sent")
	default:
	}
	a.Then()
	select {
	case <-fx.d.HandedOver():
	default:
		t.Error("not handed over once the upgrade's answer was sent")
	}
}

// TestViewServedAcrossServers: a view one daemon serves is served by the
// next on the same connection, after an upgrade (the old one drained and
// its last state handed on) or a crash (what the keeper held), while the
// container reads through it all along: no read fails, and what it made
// before is there after.
func TestViewServedAcrossServers(t *testing.T) {
	for _, upgrade := range []bool{true, false} {
		name := map[bool]string{true: "upgrade", false: "crash"}[upgrade]
		t.Run(name, func(t *testing.T) {
			old := newFixture(t, serve.Bounds{})
			k := old.takeUp(false, nil)
			dir, o := old.cgroup(), old.owner()
			mnt := old.mustAttach("h", o.pid(), dir)
			item := k.next("keep")
			t.Cleanup(func() { closeFiles(item.Files) })
			if err := unix.Mkdirat(int(mnt.Fd()), "child", 0o755); err != nil {
				t.Fatalf("mkdir through the view: %v", err)
			}
			// The container reads on while the servers change.
			stop := make(chan struct{})
			var reads, failed atomic.Int64
			var firstErr atomic.Value
			readsDone := make(chan struct{})
			go func() {
				defer close(readsDone)
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := readAt(mnt, "child/cgroup.max.descendants"); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
					reads.Add(1)
				}
			}()
			k.send(keeper.Msg{Op: "drain"})
			drained := k.next("drained")
			var states map[string]json.RawMessage
			if upgrade {
				states = drained.States
			}
			next := newFixture(t, serve.Bounds{})
			item.Op = ""
			next.takeUp(upgrade, states, item)
			if got := next.listed(); !slices.Equal(got, []string{"h"}) {
				t.Errorf("the next server lists %v, want [h]", got)
			}
			close(stop)
			select {
			case <-readsDone:
			case <-time.After(20 * time.Second):
				t.Fatal("a read through the view waited 20 s: nobody serves it")
			}
			t.Logf("%d reads while the servers changed", reads.Load())
			if failed.Load() != 0 {
				t.Errorf("%d of %d reads failed while the servers changed: %v", failed.Load(), reads.Load(), firstErr.Load())
			}
			if got, err := readAt(mnt, "child/cgroup.max.descendants"); err != nil || got != "max\n" {
				t.Errorf("reading what was made before, after: %q %v", got, err)
			}
			if err := unix.Unlinkat(int(mnt.Fd()), "child", unix.AT_REMOVEDIR); err != nil {
				t.Errorf("rmdir through the view on the next server: %v", err)
			}
			if !next.d.Detach("h") {
				t.Fatal("the next server cannot detach h")
			}
			if _, err := readAt(mnt, "cgroup.procs"); !isGone(err) {
				t.Errorf("after the next server's detach: %v, want ENOTCONN", err)
			}
		})
	}
}

// TestKeptSocketsAcrossServers: the next server listens on the very
// sockets the keeper kept of the one before, so an asker that connects
// while neither listens is answered by the next; a kept socket the next
// does not listen on is let go, and one whose path is gone is made anew.
func TestKeptSocketsAcrossServers(t *testing.T) {
	old := newFixture(t, serve.Bounds{})
	k := old.takeUp(false, nil)
	dir := t.TempDir()
	paths := map[string]string{}
	var items []keeper.Msg
	for _, name := range []string{"control", "unused", "removed"} {
		paths[name] = filepath.Join(dir, name+".sock")
		ln, err := old.d.Listen("unixpacket", paths[name])
		if err != nil {
			t.Fatal(err)
		}
		m := k.next("keep")
		t.Cleanup(func() { closeFiles(m.Files) })
		if m.Name != socketItem("unixpacket", paths[name]) || m.Kind != "socket" || len(m.Files) != 1 {
			t.Fatalf("the keeper was given %s (%s, %d files) for %s", m.Name, m.Kind, len(m.Files), paths[name])
		}
		items = append(items, m)
		ln.Close() // the old server stops listening; the socket lives on
	}
	// Asked while no server listens: it waits in the backlog.
	asked, err := net.Dial("unixpacket", paths["control"])
	if err != nil {
		t.Fatalf("connecting while the servers change: %v", err)
	}
	defer asked.Close()
	if _, err := asked.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(paths["removed"]); err != nil {
		t.Fatal(err)
	}

	next := newFixture(t, serve.Bounds{})
	for i := range items {
		items[i].Op = ""
	}
	k2 := next.takeUp(false, nil, items...)
	ln, err := next.d.Listen("unixpacket", paths["control"])
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		buf := make([]byte, 16)
		n, _ := c.Read(buf)
		got <- string(buf[:n])
	}()
	select {
	case s := <-got:
		if s != "hello" {
			t.Errorf("the next server read %q from the asker that came between, want hello", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the next server never accepted the asker that came between the servers")
	}
	ln2, err := next.d.Listen("unixpacket", paths["removed"])
	if err != nil {
		t.Fatalf("listening where the kept socket's path is gone: %v", err)
	}
	defer ln2.Close()
	if m := k2.next("keep"); m.Name != socketItem("unixpacket", paths["removed"]) || len(m.Files) != 1 {
		t.Errorf("a socket made anew: the keeper was given %s with %d files", m.Name, len(m.Files))
	} else {
		closeFiles(m.Files)
	}
	next.d.Listening()
	if m := k2.next("drop"); m.Name != socketItem("unixpacket", paths["unused"]) {
		t.Errorf("the keeper was told to drop %s, want the unused socket", m.Name)
	}
	k2.next("listening")
	if n := next.log.Count("listening on the socket kept for this server"); n != 1 {
		t.Errorf("%d sockets taken up as kept, want 1", n)
	}
}
