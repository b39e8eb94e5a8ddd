package keeper

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// item is one thing kept: its state (the server's, opaque here) and
// descriptors.
type item struct {
	kind  string
	state json.RawMessage
	files []*os.File
}

// child is one server process.
type child struct {
	cmd     *exec.Cmd
	link    *Link
	started time.Time
}

type event struct {
	c   *child
	msg Msg
	err error // the link ended: the child exits
}

// Keeper runs servers and keeps their items.
type Keeper struct {
	// Command makes a server process: the keeper adds its link
	// (descriptor 3) and CGFS_KEEPER.
	Command func() *exec.Cmd
	Log     *slog.Logger

	kept   map[string]*item
	cur    *child
	events chan event
	// up is the upgrade under way, if any.
	up *upgrade
}

type upgrade struct {
	old, new *child
	asked    *child // whoever asked (answered done); nil for SIGHUP
	drained  time.Time
	// changed names the items the old server kept anew or dropped
	// after the new one was given what was kept: it is told of them
	// once the old one drained (sendChanges).
	changed map[string]bool
	// pause is how long the connections had no server: from the old
	// one's drained to the new one's serving.
	pause time.Duration
}

// Run starts the first server and keeps serving until a server exits
// on SIGINT or SIGTERM (which it passes on).
func (k *Keeper) Run() error {
	k.kept = map[string]*item{}
	k.events = make(chan event, 64)
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	c, err := k.start(false)
	if err != nil {
		return err
	}
	k.cur = c
	stopping := false
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				k.beginUpgrade(nil)
				continue
			}
			stopping = true
			if k.cur == nil {
				return nil
			}
			_ = k.cur.cmd.Process.Signal(s)
			if k.up != nil { // the one that was to take over stops too
				_ = k.up.new.cmd.Process.Signal(s)
			}
		case ev := <-k.events:
			if ev.err == nil {
				k.handle(ev.c, ev.msg)
				continue
			}
			// The child's link ended: it exited (or is about to).
			state := ev.c.cmd.Wait()
			if done := k.exited(ev.c, state, stopping); done {
				return nil
			}
		}
	}
}

// start starts a server with every item kept; wait: it prepares and
// waits for go (an upgrade).
func (k *Keeper) start(wait bool) (*child, error) {
	l, theirs, err := Pair()
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	cmd := k.Command()
	cmd.ExtraFiles = append([]*os.File{theirs}, cmd.ExtraFiles...)
	cmd.Env = append(cmd.Environ(), Env+"=3")
	if err := cmd.Start(); err != nil {
		l.Close()
		return nil, err
	}
	c := &child{cmd: cmd, link: l, started: time.Now()}
	for name, it := range k.kept {
		if err := l.Send(Msg{Op: "item", Name: name, Kind: it.kind, State: it.state, Files: it.files}); err != nil {
			k.Log.Warn("keeper: handing an item to the server", "item", name, "err", err)
		}
	}
	if err := l.Send(Msg{Op: "end", Wait: wait}); err != nil {
		k.Log.Warn("keeper: starting the server", "err", err)
	}
	go func() {
		for {
			m, err := l.Recv()
			k.events <- event{c: c, msg: m, err: err}
			if err != nil {
				l.Close()
				return
			}
		}
	}()
	k.Log.Info("keeper: server started", "pid", cmd.Process.Pid, "items", len(k.kept), "upgrade", wait)
	return c, nil
}

// handle takes one message of server c.
func (k *Keeper) handle(c *child, m Msg) {
	switch m.Op {
	case "keep":
		k.noteChange(c, m.Name)
		it := k.kept[m.Name]
		if it == nil {
			it = &item{}
			k.kept[m.Name] = it
		}
		it.kind, it.state = m.Kind, m.State
		if len(m.Files) > 0 {
			closeAll(it.files)
			it.files = m.Files
		}
	case "drop":
		k.noteChange(c, m.Name)
		if it := k.kept[m.Name]; it != nil {
			closeAll(it.files)
			delete(k.kept, m.Name)
		}
	case "upgrade":
		k.beginUpgrade(c)
	case "ready":
		if k.up != nil && c == k.up.new {
			_ = k.up.old.link.Send(Msg{Op: "drain"})
		}
	case "drained":
		if k.up == nil || c != k.up.old {
			return
		}
		k.up.drained = time.Now()
		for name, st := range m.States {
			if it := k.kept[name]; it != nil {
				it.state = st
			}
		}
		k.sendGo(m.States)
	case "serving":
		if k.up != nil && c == k.up.new {
			k.up.pause = time.Since(k.up.drained)
		}
	case "listening":
		if k.up == nil || c != k.up.new {
			return
		}
		k.Log.Info("keeper: upgraded", "old", k.up.old.cmd.Process.Pid, "new", c.cmd.Process.Pid, "pause", k.up.pause)
		k.finish(Msg{Op: "done", PauseMicros: k.up.pause.Microseconds()})
		k.cur = c
	default:
		closeAll(m.Files)
	}
}

// noteChange marks item name changed by server c, if c is the old
// server of an upgrade under way.
func (k *Keeper) noteChange(c *child, name string) {
	if k.up != nil && c == k.up.old {
		k.up.changed[name] = true
	}
}

// sendChanges tells the new server of the items the old one kept or
// dropped since the new one started (a view attached, a listener taken,
// a view dropped while the new one prepared): the item as it is kept
// now, or a drop.
func (k *Keeper) sendChanges() {
	for name := range k.up.changed {
		m := Msg{Op: "drop", Name: name}
		if it := k.kept[name]; it != nil {
			m = Msg{Op: "item", Name: name, Kind: it.kind, State: it.state, Files: it.files}
		}
		if err := k.up.new.link.Send(m); err != nil {
			k.Log.Warn("keeper: telling the new server of an item", "item", name, "op", m.Op, "err", err)
		}
	}
	k.up.changed = map[string]bool{}
}

func (k *Keeper) sendGo(states map[string]json.RawMessage) {
	k.sendChanges()
	if err := k.up.new.link.Send(Msg{Op: "go", States: states}); err != nil {
		k.Log.Warn("keeper: telling the new server to go", "err", err)
	}
}

// beginUpgrade starts a new server to take over from the current one.
func (k *Keeper) beginUpgrade(asked *child) {
	if k.up != nil || k.cur == nil {
		if asked != nil {
			_ = asked.link.Send(Msg{Op: "done", Error: "an upgrade is under way already"})
		}
		return
	}
	n, err := k.start(true)
	if err != nil {
		if asked != nil {
			_ = asked.link.Send(Msg{Op: "done", Error: fmt.Sprintf("starting the new server: %v", err)})
		}
		return
	}
	k.up = &upgrade{old: k.cur, new: n, asked: asked, changed: map[string]bool{}}
}

// finish ends the upgrade, telling whoever asked.
func (k *Keeper) finish(m Msg) {
	if k.up.asked != nil {
		_ = k.up.asked.link.Send(m)
	}
	// The old server ends on done once it drained (else it serves on).
	if k.up.old != k.up.asked && (m.Error == "" || !k.up.drained.IsZero()) {
		_ = k.up.old.link.Send(m)
	}
	k.up = nil
}

// exited takes the end of server c; true: the keeper is done.
func (k *Keeper) exited(c *child, state error, stopping bool) bool {
	k.Log.Info("keeper: server exited", "pid", c.cmd.Process.Pid, "status", fmt.Sprint(state))
	if stopping {
		return c == k.cur
	}
	if up := k.up; up != nil {
		switch c {
		case up.new: // the upgrade failed; the old one serves on
			if up.drained.IsZero() {
				k.finish(Msg{Op: "done", Error: fmt.Sprintf("the new server exited: %v", state)})
				return false
			}
			// It died after the old one drained: start another, and
			// let the old one go.
			k.finish(Msg{Op: "done", Error: fmt.Sprintf("the new server exited: %v; another takes over", state)})
			k.cur = nil
		case up.old:
			if up.drained.IsZero() { // the old one died mid-upgrade: the new one takes what is kept
				k.sendGo(nil)
			}
			return false
		}
	}
	if c != k.cur && k.cur != nil {
		return false
	}
	// A crash: a new server takes the kept connections up. One that
	// dies at once is not restarted in a tight loop.
	if time.Since(c.started) < time.Second {
		time.Sleep(time.Second)
	}
	n, err := k.start(false)
	if err != nil {
		k.Log.Error("keeper: restarting the server", "err", err)
		return true
	}
	k.cur = n
	return false
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
