package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/keeper"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
	"github.com/cgfs/cgfs/fuseconn"
)

// A daemon under a keeper (cgfs daemon --keep) has the keeper hold a
// copy of each view's connection and each seccomp listener, with what it
// takes to serve them again: a server that dies is replaced without any
// view unmounted, and `cgfs upgrade` hands them from this server to a
// new one without any request failing (see package keeper, and
// fuseconn.Conn.Drain).

// viewState is what the keeper holds of a view besides its connection's
// and mount root's descriptors.
type viewState struct {
	Req        control.Request   `json:"req"`
	OwnerStart uint64            `json:"owner_start"`
	Dirs       map[string]string `json:"dirs"`
	Handover   fuseconn.Handover `json:"handover"`
	// Leaves are the view's hidden leaves (serve.Views.Leaves), set only
	// in the state of a server that drained: it alone knows them for
	// sure. Without them the server taking over reads them afresh.
	Leaves map[string][]string `json:"leaves"`
}

// agentState is what the keeper holds of a seccomp listener.
type agentState struct {
	Container string `json:"container"`
}

// viewItem is the name the keeper holds view name by.
func viewItem(name string) string { return "view:" + name }

func (s *served) state() viewState {
	return viewState{Req: s.req, OwnerStart: s.ownerStart, Dirs: s.views.Dirs(), Handover: s.mounted.Handover()}
}

// keepView gives the keeper a copy of view name's connection.
func (d *Daemon) keepView(name string, s *served) {
	if d.link == nil {
		return
	}
	s.keepMu.Lock()
	defer s.keepMu.Unlock()
	if s.unkept {
		return // dropped: a keep now would outlive it in the keeper
	}
	master, root, err := s.mounted.Files()
	if err != nil {
		select {
		case <-s.mounted.Done(): // ended meanwhile: its drop follows
		default:
			d.log.Warn("keeper: copying a view's connection", "view", name, "err", err)
		}
		return
	}
	files := []*os.File{master}
	if root != nil {
		files = append(files, root)
	}
	d.send(keeper.Msg{Op: "keep", Name: viewItem(name), Kind: "view", State: mustJSON(s.state()), Files: files})
	for _, f := range files {
		f.Close()
	}
}

// keepAgent gives the keeper a copy of a seccomp listener; the name it
// returns drops it.
func (d *Daemon) keepAgent(listener *os.File, container string) string {
	if d.link == nil {
		return ""
	}
	d.mu.Lock()
	d.kept++
	name := fmt.Sprintf("agent:%s:%d", container, d.kept)
	d.mu.Unlock()
	d.send(keeper.Msg{Op: "keep", Name: name, Kind: "agent", State: mustJSON(agentState{Container: container}), Files: []*os.File{listener}})
	return name
}

func (d *Daemon) unkeep(name string) {
	if d.link != nil && name != "" {
		d.send(keeper.Msg{Op: "drop", Name: name})
	}
}

func (d *Daemon) send(m keeper.Msg) {
	d.linkMu.Lock()
	defer d.linkMu.Unlock()
	if err := d.link.Send(m); err != nil {
		d.log.Warn("keeper: sending", "op", m.Op, "err", err)
	}
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs
	}
	return b
}

// kept is one item the keeper handed this server at start.
type kept struct {
	name   string
	msg    keeper.Msg
	state  viewState
	views  *serve.Views  // prepared
	budget *serve.Budget // the views'
}

// TakeUp takes what the keeper holds (a server's start under a keeper):
// every view is served again on its connection. For an upgrade (the
// keeper says wait) the views are prepared first, the keeper told so,
// and served once the old server has drained and the keeper says go.
// The seccomp listeners are served by Restore once ServeSeccomp ran.
func (d *Daemon) TakeUp(link *keeper.Link) error {
	d.link = link
	items := map[string]*kept{}
	// take holds an item the keeper gave, in place of one of the same
	// name; drop lets one go.
	drop := func(name string) {
		if it := items[name]; it != nil {
			if it.views != nil {
				it.views.Close()
			}
			for _, f := range it.msg.Files {
				f.Close()
			}
			delete(items, name)
		}
		if m, ok := d.sockets[name]; ok {
			for _, f := range m.Files {
				f.Close()
			}
			delete(d.sockets, name)
		}
	}
	take := func(m keeper.Msg) {
		drop(m.Name)
		if m.Kind == "socket" {
			if d.sockets == nil {
				d.sockets = map[string]keeper.Msg{}
			}
			d.sockets[m.Name] = m
			return
		}
		items[m.Name] = &kept{name: m.Name, msg: m}
	}
	var wait bool
	for {
		m, err := link.Recv()
		if err != nil {
			return fmt.Errorf("keeper: %w", err)
		}
		if m.Op == "end" {
			wait = m.Wait
			break
		}
		if m.Op == "item" {
			take(m)
		}
	}
	prepareAll := func() {
		for _, it := range items {
			if it.msg.Kind == "view" && it.views == nil {
				d.prepare(it)
			}
		}
	}
	prepareAll()
	states := map[string]json.RawMessage{}
	if wait {
		d.send(keeper.Msg{Op: "ready"})
		// What the old server attached, took or dropped since this one
		// was started comes before go.
		m, err := link.Recv()
		for ; err == nil && m.Op != "go"; m, err = link.Recv() {
			switch m.Op {
			case "item":
				take(m)
			case "drop":
				drop(m.Name)
			}
		}
		if err != nil {
			return fmt.Errorf("keeper: waiting to take over: %w", err)
		}
		states = m.States
		prepareAll() // those attached meanwhile, in the pause
	}
	var wg sync.WaitGroup
	for _, it := range items {
		if it.msg.Kind == "view" {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.resume(it, states[it.name])
			}()
		} else if it.msg.Kind == "user" {
			d.mu.Lock()
			u := d.users
			d.mu.Unlock()
			if u == nil { // this server serves no users: nobody could end it
				d.log.Warn("keeper: a user's container, but this server serves no users", "item", it.name)
			} else {
				d.takeUser(u, it.msg)
			}
		} else {
			d.restoring = append(d.restoring, it.msg)
		}
	}
	wg.Wait()
	d.send(keeper.Msg{Op: "serving"})
	go d.follow()
	return nil
}

// prepare opens the views of a kept view, as attach did, on the host
// directories it served.
func (d *Daemon) prepare(it *kept) {
	if err := json.Unmarshal(it.msg.State, &it.state); err != nil {
		d.log.Warn("keeper: a view's state", "item", it.name, "err", err)
		return
	}
	req := it.state.Req
	if st, err := d.procs.StartTime(req.Owner); err != nil || st != it.state.OwnerStart {
		d.log.Warn("keeper: the view's owner is gone", "view", req.Name, "owner", req.Owner)
		return
	}
	it.budget = serve.NewBudget(d.bounds)
	v1Max := 0
	d.mu.Lock()
	u := d.users
	d.mu.Unlock()
	if req.Uid != 0 && u != nil {
		// A user's view draws on the user's budget, as it did.
		who := users.Lookup(req.Uid)
		pol := u.cfg.Policy.For(who.Name, who.Uid, who.Groups)
		it.budget, v1Max = u.budget(req.Uid, pol), pol.V1Descendants
	}
	views, err := serve.Open(d.procs, serve.Options{Name: req.Name, Owner: req.Owner, HostDir: req.Cgroup, Shared: req.Shared,
		Log: d.log, Watcher: d.watcher, Dirs: it.state.Dirs, TakingOver: true, Budget: it.budget, V1Max: v1Max})
	if err != nil {
		d.log.Warn("keeper: opening a view again", "view", req.Name, "err", err)
		return
	}
	it.views = views
}

// resume serves a prepared view on its kept connection (last: the old
// server's state after it drained, if it did). A view that cannot be
// served again (its owner gone: the container ended) is let go: its
// connection ends with the container's mount namespace. It is not
// aborted by its number, which a newer connection may have taken.
func (d *Daemon) resume(it *kept, last json.RawMessage) {
	// Leaves count only from the server that drained just now: what the
	// keeper held may be of a server that served after it was given.
	it.state.Leaves = nil
	if len(last) > 0 {
		_ = json.Unmarshal(last, &it.state)
	}
	files := it.msg.Files
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	h := it.state.Handover
	if it.views == nil || len(files) == 0 {
		d.unkeep(it.name)
		return
	}
	r := &fuseconn.Resume{Handover: h, Master: files[0]}
	if len(files) > 1 {
		r.Root = files[1]
	}
	req := it.state.Req
	t0 := time.Now()
	// The leaves the old server knew once it drained; after a crash,
	// those on the host.
	leaves := it.views.IndexLeaves
	if it.state.Leaves != nil {
		leaves = func() error { return it.views.SetLeaves(it.state.Leaves) }
	}
	if err := leaves(); err != nil {
		d.log.Warn("keeper: reading a view's hidden leaves", "view", req.Name, "err", err)
	}
	t1 := time.Now()
	counts := d.metrics.For(labelOf(req))
	mounted, err := it.views.ServeResumed(d.ident, counts, r)
	t2 := time.Now()
	if err != nil {
		d.log.Warn("keeper: serving a view again", "view", req.Name, "err", err)
		it.views.Close()
		d.unkeep(it.name)
		return
	}
	s := d.newServed(req.Name, it.views, mounted, it.budget, req, counts)
	s.ownerStart = it.state.OwnerStart
	if err := d.run(req.Name, s); err != nil {
		d.log.Warn("keeper: serving a view again", "view", req.Name, "err", err)
	}
	d.log.Info("took over", "view", req.Name, "generation", h.Gen+1,
		"leaves", t1.Sub(t0), "serving", t2.Sub(t1), "kept", time.Since(t2))
}

// follow takes the keeper's messages while this server serves.
func (d *Daemon) follow() {
	for {
		m, err := d.link.Recv()
		if err != nil {
			d.log.Warn("keeper: the link ended", "err", err)
			return
		}
		switch m.Op {
		case "drain":
			states := d.drain()
			d.send(keeper.Msg{Op: "drained", States: states})
		case "done":
			d.mu.Lock()
			w := d.upgradeWait
			d.upgradeWait = nil
			handing := d.handing
			d.mu.Unlock()
			if w != nil {
				w <- m
			} else if handing {
				d.handedOver()
			}
		}
	}
}

// agentDrain bounds how long a drain waits for a seccomp agent's answers
// under way (agent.Drain).
const agentDrain = 2 * time.Second

// drain stops serving for the server taking over: no new view, nothing
// listening, every connection and listener left for the next one to
// take, each view's last state.
func (d *Daemon) drain() map[string]json.RawMessage {
	// The requests that change what is served (attach, detach, enter,
	// agent) under way end first; those after are asked to retry, and
	// reach the next server (sockets.go).
	d.ops.Lock()
	defer d.ops.Unlock()
	d.mu.Lock()
	d.handing = true
	all := map[string]*served{}
	for name, s := range d.views {
		all[name] = s
	}
	agents := d.agents
	d.agents = nil
	d.mu.Unlock()
	t0 := time.Now()
	if d.stopListening != nil {
		d.stopListening()
	}
	// The agents first, while the views are served: an answer under way
	// may need one (a statfs of a file on a view). All at once, each for
	// at most agentDrain: one container cannot hold up the others.
	var agentsDone sync.WaitGroup
	for _, a := range agents {
		agentsDone.Add(1)
		go func() {
			defer agentsDone.Done()
			if err := a.Drain(agentDrain); err != nil {
				d.log.Warn("draining a seccomp agent", "err", err)
			}
		}()
	}
	agentsDone.Wait()
	var mu sync.Mutex
	states := map[string]json.RawMessage{}
	var wg sync.WaitGroup
	for name, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.mounted.Drain(); err != nil && !errors.Is(err, fuseconn.ErrDrained) {
				d.log.Warn("draining", "view", name, "err", err)
			}
			st := s.state()
			st.Leaves = s.views.Leaves()
			mu.Lock()
			states[viewItem(name)] = mustJSON(st)
			mu.Unlock()
		}()
	}
	wg.Wait()
	d.log.Info("drained for the next server", "views", len(all), "agents", len(agents), "took", time.Since(t0))
	return states
}

// Upgrade asks the keeper for a new server to take over from this one,
// and waits for it: the answer says how long the connections waited.
func (d *Daemon) upgrade() control.Answer {
	if d.link == nil {
		return control.Answer{Error: "this daemon runs without a keeper: start it with cgfs daemon --keep", Usage: true}
	}
	w := make(chan keeper.Msg, 1)
	d.mu.Lock()
	if d.upgradeWait != nil {
		d.mu.Unlock()
		return control.Answer{Error: "an upgrade is under way already"}
	}
	d.upgradeWait = w
	d.mu.Unlock()
	d.send(keeper.Msg{Op: "upgrade"})
	m := <-w
	if m.Error != "" {
		d.mu.Lock()
		handing := d.handing
		d.mu.Unlock()
		a := control.Answer{Error: m.Error}
		if handing {
			a.Then = d.handedOver
		}
		return a
	}
	return control.Answer{PauseMicros: m.PauseMicros, Then: d.handedOver}
}

// HandedOver is closed once the next server serves everything: this
// one has nothing left to do.
func (d *Daemon) HandedOver() <-chan struct{} { return d.over }

func (d *Daemon) handedOver() { d.overOnce.Do(func() { close(d.over) }) }

// Listening tells the keeper this server's sockets answer: an upgrade
// is done.
func (d *Daemon) Listening() {
	d.dropUnusedSockets()
	if d.link != nil {
		d.send(keeper.Msg{Op: "listening"})
	}
}

// SetListeners names how to stop listening (the control, seccomp and
// metrics sockets), for a hand-over.
func (d *Daemon) SetListeners(stop func()) { d.stopListening = stop }
