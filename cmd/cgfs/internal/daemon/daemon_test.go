package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
)

// TestAttachOneNameOnce: asked at once for views of one name, the
// daemon serves one; every other asker is told the name is taken (a
// usage error), and nothing of theirs is left served.
func TestAttachOneNameOnce(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	dir, o := fx.cgroup(), fx.owner()
	const askers = 6
	type result struct {
		a control.Answer
		f *os.File
	}
	results := make(chan result, askers)
	start := make(chan struct{})
	for range askers {
		go func() {
			<-start
			a, f := fx.attach("one", o.pid(), dir)
			results <- result{a, f}
		}()
	}
	close(start)
	served := 0
	for range askers {
		r := <-results
		switch {
		case r.a.Error == "" && r.f != nil:
			served++
			t.Cleanup(func() { r.f.Close() })
		case r.a.Usage && strings.Contains(r.a.Error, "served already"):
			if r.f != nil {
				t.Errorf("a refused attach came with a mount")
				r.f.Close()
			}
		default:
			t.Errorf("attach: answer %+v, mount %v; want a view or \"served already\"", r.a, r.f)
		}
	}
	if served != 1 {
		t.Errorf("%d of %d askers were served a view named one, want 1", served, askers)
	}
	if got := fx.listed(); !slices.Equal(got, []string{"one"}) {
		t.Errorf("the daemon lists %v, want [one]", got)
	}
	if got := fx.gauge("cgfs_views"); got != 1 {
		t.Errorf("cgfs_views = %v, want 1", got)
	}
}

// TestDetachRacingAttach: a detach that comes while the view is being
// attached (the moment it is listed) stops it: the asker that was given
// the mount sees the connection gone (ENOTCONN, never a closed or stray
// descriptor), the daemon lists it no more, and the name is free again.
func TestDetachRacingAttach(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	dir, o := fx.cgroup(), fx.owner()
	for i := range 8 {
		name := fmt.Sprintf("race%d", i)
		detached := make(chan bool, 1)
		go func() {
			// As soon as the view is listed, detach it.
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				if fx.d.Detach(name) {
					detached <- true
					return
				}
				runtime.Gosched()
			}
			detached <- false
		}()
		a, f := fx.attach(name, o.pid(), dir)
		if a.Error != "" || f == nil {
			t.Fatalf("attach %s: answer %+v, mount %v", name, a, f)
		}
		if !<-detached {
			f.Close()
			t.Fatalf("%s never listed for a detach", name)
		}
		// Detach returned once the view was dropped.
		if slices.Contains(fx.listed(), name) {
			t.Errorf("%s still listed after its detach", name)
		}
		if _, err := readAt(f, "cgroup.procs"); !isGone(err) {
			t.Errorf("%s: reading through the mount after the detach: %v, want ENOTCONN", name, err)
		}
		f.Close()
	}
	// The names are free again.
	f := fx.mustAttach("race0", o.pid(), dir)
	if _, err := readAt(f, "cgroup.procs"); err != nil {
		t.Errorf("a view attached again under a detached one's name: %v", err)
	}
}

// TestContainerEndRacingDetach: a container that ends (its owner dies
// and its mount goes), alone or while it is detached, and while metrics
// are scraped, is dropped once: off the list and out of metrics, its name
// free, one "dropped" line.
func TestContainerEndRacingDetach(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	dir := fx.cgroup()
	const views = 4
	var wg sync.WaitGroup
	stopScraping := make(chan struct{})
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		for {
			select {
			case <-stopScraping:
				return
			default:
			}
			if _, err := fx.reg.Gather(); err != nil {
				t.Errorf("a scrape while views come and go: %v", err)
				return
			}
		}
	}()
	var all []*served
	for i := range views {
		name := fmt.Sprintf("end%d", i)
		o := fx.owner()
		a, f := fx.attach(name, o.pid(), dir)
		if a.Error != "" || f == nil {
			t.Fatalf("attach %s: %+v", name, a)
		}
		s := fx.served(name)
		all = append(all, s)
		wg.Add(2)
		go func() { // the container ends
			defer wg.Done()
			o.kill()
			f.Close()
		}()
		go func() { // and half of them are detached meanwhile
			defer wg.Done()
			if i%2 == 0 {
				fx.d.Detach(name)
			}
		}()
	}
	wg.Wait()
	for _, s := range all {
		fx.waitDropped(s, "its container ended")
	}
	close(stopScraping)
	<-scraped
	if got := fx.listed(); len(got) != 0 {
		t.Errorf("the daemon lists %v after every container ended", got)
	}
	if got := fx.gauge("cgfs_views"); got != 0 {
		t.Errorf("cgfs_views = %v after every container ended, want 0", got)
	}
	if n := fx.log.Count(`msg=dropped`); n != views {
		t.Errorf("%d views dropped as the log says, want %d (each once)", n, views)
	}
	o := fx.owner()
	fx.mustAttach("end0", o.pid(), dir)
}

// TestUnconfirmedViewIsDropped: a view its asker says it did not put in
// place (or never says) is dropped before the asker goes on; one put in
// place stays.
func TestUnconfirmedViewIsDropped(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	dir, o := fx.cgroup(), fx.owner()
	for _, placed := range []bool{false, true} {
		name := "confirm-" + strconv.FormatBool(placed)
		a, f := fx.d.Handle(control.Request{Op: "attach", Name: name, Owner: o.pid(), Cgroup: dir, Confirm: true}, 0)
		if a.Error != "" || f == nil || a.Placed == nil {
			t.Fatalf("attach with confirm: %+v %v", a, f)
		}
		defer f.Close()
		a.Placed(placed)
		listed := slices.Contains(fx.listed(), name)
		_, err := readAt(f, "cgroup.procs")
		switch {
		case placed && (!listed || err != nil):
			t.Errorf("a view put in place: listed %v, read %v; want it served", listed, err)
		case !placed && (listed || !isGone(err)):
			t.Errorf("a view not put in place: listed %v, read %v; want it dropped (ENOTCONN)", listed, err)
		}
	}
}

// TestCloseDropsEveryView: the daemon's end stops every view, while
// detaches and lists of the same views run: each is dropped once, and
// nothing is left listed.
func TestCloseDropsEveryView(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	dir, o := fx.cgroup(), fx.owner()
	var mounts []*os.File
	var all []*served
	for i := range 4 {
		name := fmt.Sprintf("close%d", i)
		mounts = append(mounts, fx.mustAttach(name, o.pid(), dir))
		all = append(all, fx.served(name))
	}
	var wg sync.WaitGroup
	for i := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				fx.d.Detach(fmt.Sprintf("close%d", i))
			}
			fx.d.List()
		}()
	}
	fx.d.Close()
	wg.Wait()
	for _, s := range all {
		fx.waitDropped(s, "the daemon closed")
	}
	for i, f := range mounts {
		if _, err := readAt(f, "cgroup.procs"); !isGone(err) {
			t.Errorf("close%d after Close: %v, want ENOTCONN", i, err)
		}
	}
	if got := fx.listed(); len(got) != 0 {
		t.Errorf("listed after Close: %v", got)
	}
}

// TestLookupEnterAndRefusals: lookup names a view's owner; enter puts a
// host process into the view's cgroup; what names no view, or no
// operation the daemon knows, is a usage error.
func TestLookupEnterAndRefusals(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	dir, o := fx.cgroup(), fx.owner()
	fx.mustAttach("c", o.pid(), dir)
	if a, _ := fx.d.Handle(control.Request{Op: "lookup", Name: "c"}, 0); a.Error != "" || a.Init != o.pid() {
		t.Errorf("lookup c = %+v, want init %d", a, o.pid())
	}
	joiner := fx.owner()
	if a, _ := fx.d.Handle(control.Request{Op: "enter", Name: "c", Pid: joiner.pid()}, 0); a.Error != "" {
		t.Errorf("enter: %+v", a)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")); !slices.Contains(strings.Fields(string(b)), strconv.Itoa(joiner.pid())) {
		t.Errorf("the view's cgroup holds %q after enter, want %d", b, joiner.pid())
	}
	for _, req := range []control.Request{
		{Op: "lookup", Name: "nobody"},
		{Op: "enter", Name: "nobody", Pid: joiner.pid()},
		{Op: "detach", Name: "nobody"},
		{Op: "attach", Name: "", Owner: o.pid()},
		{Op: "attach", Name: "x", Owner: 0},
		{Op: "attach", Name: "c", Owner: o.pid(), Cgroup: dir},
		{Op: "upgrade"}, // no keeper
		{Op: "bogus"},
	} {
		if a, f := fx.d.Handle(req, 0); a.Error == "" || !a.Usage || f != nil {
			t.Errorf("%+v: answer %+v, mount %v; want a usage error and no mount", req, a, f)
		}
	}
	if a, _ := fx.d.Handle(control.Request{Op: "attach", Name: "bad", Owner: o.pid(), Cgroup: t.TempDir()}, 0); a.Error == "" || !a.Usage {
		t.Errorf("attach of a directory that is no cgroup: %+v, want a usage error", a)
	}
	if got := fx.listed(); !slices.Equal(got, []string{"c"}) {
		t.Errorf("listed %v after the refusals, want [c]", got)
	}
}
