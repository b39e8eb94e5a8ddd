// Package daemon serves the views of many containers from one process:
// each on a FUSE mount of its own (the kernel's dentry cache is per
// mount), attached and detached over the control socket, and dropped
// when its container no longer holds it.
package daemon

import (
	"log/slog"
	"os"
	"sort"
	"sync"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/access/proc"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/fs"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/translate/host"
)

// Daemon is the views it serves, by name.
type Daemon struct {
	procs   *proc.Procs
	ident   *access.Identifier
	metrics *metrics.Metrics
	watcher *host.Watcher
	log     *slog.Logger

	mu    sync.Mutex
	views map[string]*served
}

type served struct {
	views   *serve.Views
	mounted *fs.Mounted
	owner   int
}

// New makes a daemon that serves nothing yet; w relays events to all
// its views.
func New(procs *proc.Procs, m *metrics.Metrics, w *host.Watcher, log *slog.Logger) *Daemon {
	return &Daemon{procs: procs, ident: access.NewIdentifier(procs), metrics: m, watcher: w, log: log, views: map[string]*served{}}
}

// Handle answers one control request from host process peer.
func (d *Daemon) Handle(req control.Request, _ int) (control.Answer, *os.File) {
	switch req.Op {
	case "attach":
		f, err := d.attach(req)
		if err != nil {
			_, usage := err.(serve.UsageError)
			return control.Answer{Error: err.Error(), Usage: usage}, nil
		}
		return control.Answer{}, f
	case "detach":
		if !d.Detach(req.Name) {
			return control.Answer{Error: "no view " + req.Name, Usage: true}, nil
		}
		return control.Answer{}, nil
	case "list":
		return control.Answer{Views: d.List()}, nil
	case "lookup", "enter":
		d.mu.Lock()
		s := d.views[req.Name]
		d.mu.Unlock()
		if s == nil {
			return control.Answer{Error: "no container " + req.Name, Usage: true}, nil
		}
		if req.Op == "enter" {
			if err := s.views.Enter(req.Pid); err != nil {
				return control.Answer{Error: err.Error()}, nil
			}
		}
		return control.Answer{Init: s.owner}, nil
	}
	return control.Answer{Error: "the daemon answers attach, detach, list, lookup and enter, not " + req.Op, Usage: true}, nil
}

// attach serves a new view and returns its mount, detached, for the
// asker to move into the container's mount namespace.
func (d *Daemon) attach(req control.Request) (*os.File, error) {
	if req.Name == "" || req.Owner <= 0 {
		return nil, serve.UsageError{Msg: "attach needs a name and an owner"}
	}
	d.mu.Lock()
	_, taken := d.views[req.Name]
	d.mu.Unlock()
	if taken {
		return nil, serve.UsageError{Msg: "a view named " + req.Name + " is served already"}
	}
	views, err := serve.Open(d.procs, serve.Options{Name: req.Name, Owner: req.Owner, HostDir: req.Cgroup, Shared: req.Shared, Log: d.log, Watcher: d.watcher})
	if err != nil {
		return nil, err
	}
	mounted, err := views.Serve(d.ident, d.metrics.For(req.Name))
	if err != nil {
		views.Close()
		return nil, err
	}
	s := &served{views: views, mounted: mounted, owner: req.Owner}
	d.mu.Lock()
	if _, taken := d.views[req.Name]; taken {
		d.mu.Unlock()
		mounted.Stop()
		views.Close()
		return nil, serve.UsageError{Msg: "a view named " + req.Name + " is served already"}
	}
	d.views[req.Name] = s
	d.mu.Unlock()
	go func() {
		// Once the container holds the view no more (its mount namespace
		// is gone) or it is detached, the connection ends.
		<-mounted.Done()
		d.mu.Lock()
		if d.views[req.Name] == s {
			delete(d.views, req.Name)
		}
		d.mu.Unlock()
		views.Close()
		d.log.Info("dropped", "view", req.Name)
	}()
	d.log.Info("attached", "view", req.Name, "owner", req.Owner)
	return mounted.Take(), nil
}

// Detach stops serving the view name; the container sees ENOTCONN.
func (d *Daemon) Detach(name string) bool {
	d.mu.Lock()
	s := d.views[name]
	d.mu.Unlock()
	if s == nil {
		return false
	}
	s.mounted.Stop()
	return true
}

// List lists the views served, by name.
func (d *Daemon) List() []control.ViewInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]control.ViewInfo, 0, len(d.views))
	for name, s := range d.views {
		out = append(out, control.ViewInfo{Name: name, Owner: s.owner})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close stops serving every view.
func (d *Daemon) Close() {
	d.mu.Lock()
	all := make([]*served, 0, len(d.views))
	for _, s := range d.views {
		all = append(all, s)
	}
	d.mu.Unlock()
	for _, s := range all {
		s.mounted.Stop()
	}
}
