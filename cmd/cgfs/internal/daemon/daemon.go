// Package daemon serves the views of many containers from one process:
// each on a FUSE mount of its own (the kernel's dentry cache is per
// mount), attached and detached over the control socket, and dropped
// when its container no longer holds it.
package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/agent"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/mimic"
	"github.com/cgfs/cgfs/translate/layout"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/keeper"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/fuseconn"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

// Daemon is the views it serves, by name.
type Daemon struct {
	procs   *proc.Procs
	ident   *access.Identifier
	metrics *metrics.Metrics
	watcher *host.Watcher
	log     *slog.Logger

	// set is every view's device, for the statfs answers of the
	// seccomp agents the daemon serves (OCI runtimes' listeners); set,
	// mounts and agentCfg are set once, by ServeSeccomp, under mu.
	set    *mimic.Set
	mounts []mimic.Mount // the host's layout, as the kernel mounts it

	// bounds are what each container may hold of the daemon (its own
	// view and its nested views together).
	bounds serve.Bounds

	agentCfg agent.Config // Mounter per container (mounterFor)

	mu     sync.Mutex
	views  map[string]*served
	agents []*agent.Agent
	// agentsEnded: what the agents that ended handled (agentStats).
	agentsEnded uint64
	users       *userState // nil: no user socket (users.go)

	// Under a keeper (handover.go).
	link        *keeper.Link
	linkMu      sync.Mutex
	kept        int             // agents kept so far, for their names
	handing     bool            // drained for the next server
	upgradeWait chan keeper.Msg // the upgrade asked for, until done
	restoring   []keeper.Msg    // kept listeners, served by Restore
	// ops is held (read) by each request that changes what is served,
	// and by a drain (write), which thus waits for those under way.
	ops           sync.RWMutex
	sockets       map[string]keeper.Msg // kept listening sockets, for Listen (sockets.go)
	stopListening func()
	over          chan struct{}
	overOnce      sync.Once
}

type served struct {
	views   *serve.Views
	mounted *fuseconn.Conn
	// nested serves the container's nested runtimes' cgroupfs mounts,
	// from the container's budget as views does.
	nested *serve.Nested
	owner  int
	// req is what attached it, and ownerStart the owner's start time
	// (so that a server taking over never serves a reused pid).
	req        control.Request
	ownerStart uint64
	// dropped is closed once the view is dropped: off the list, its
	// name free, its metrics and nested views gone.
	dropped chan struct{}
	// counts are its views' and nested views' counters (labelOf(req)).
	counts *metrics.Counts
	// keepMu orders what the keeper is told of it: a keep (keepView)
	// before its drop, never after (unkept).
	keepMu sync.Mutex
	unkept bool
	// unset takes its device out of the daemon's statfs set (d.mu
	// held; nil until it is in).
	unset func()
}

// labelOf is the container's name in metrics: its Label if the asker
// gave one (a pod's namespace/pod/container, a user's USER/NAME), else
// its name.
func labelOf(req control.Request) string {
	if req.Label != "" {
		return req.Label
	}
	return req.Name
}

func (s *served) label() string { return labelOf(s.req) }

// labelUsedLocked tells whether a served view is shown in metrics as
// label (d.mu held).
func (d *Daemon) labelUsedLocked(label string) bool {
	for name, s := range d.views {
		if name == label || s.label() == label {
			return true
		}
	}
	return false
}

// dropWait bounds how long a request that drops a view (detach, a view
// not put in place) waits for it to be gone before it answers.
const dropWait = 10 * time.Second

// stop stops serving s and waits (within dropWait) until it is dropped,
// so that whoever asked sees it gone when answered.
func (s *served) stop() {
	s.mounted.Stop()
	select {
	case <-s.dropped:
	case <-time.After(dropWait):
	}
}

// run registers the view s serves as name (the daemon's list, the
// statfs answers, metrics, the keeper) and drops it once its connection
// ends.
func (d *Daemon) run(name string, s *served) error {
	d.mu.Lock()
	if _, taken := d.views[name]; taken || d.handing {
		d.mu.Unlock()
		if taken {
			return serve.UsageError{Msg: "a view named " + name + " is served already"}
		}
		return errHandingOver
	}
	if s.req.Label != "" && d.labelUsedLocked(s.req.Label) {
		// Metrics show each view once: a label shown already (a pod's
		// container restarting while its old view goes) would make
		// every scrape fail. The unique name stands in.
		d.log.Warn("a view's label is shown already: its name stands in", "view", name, "label", s.req.Label)
		s.req.Label = ""
		s.counts.Relabel(name)
	}
	d.views[name] = s
	if d.set != nil {
		s.unset = d.set.Add(s.mounted.Dev())
	}
	d.mu.Unlock()
	d.keepView(name, s)
	if gone := s.mounted.RootLetGo(); gone != nil && d.link != nil {
		go func() {
			// The keeper's copy of the mount's root must not keep the
			// mount alive once the owner is gone: keep the connection
			// alone.
			select {
			case <-gone:
			case <-s.mounted.Done():
				return
			}
			d.mu.Lock()
			handing := d.handing
			d.mu.Unlock()
			if !handing {
				d.keepView(name, s)
			}
		}()
	}
	mv := s.views.MetricsView(s.label(), s.mounted)
	mv.Budget = func() map[string][2]float64 { return s.views.Budget().Held(s.nested) }
	unlist := d.metrics.Add(mv)
	go func() {
		// Once the container holds the view no more (its mount namespace
		// is gone) or it is detached, the connection ends.
		<-s.mounted.Done()
		unlist()
		d.mu.Lock()
		if d.views[name] == s {
			delete(d.views, name)
		}
		if s.unset != nil {
			s.unset()
		}
		d.mu.Unlock()
		s.keepMu.Lock()
		s.unkept = true
		s.keepMu.Unlock()
		d.unkeep(viewItem(name))
		s.nested.Close()
		s.views.Close()
		// Its counters go with it, unless a view served now shows the
		// same label (a pod's container restarted): under d.mu, so that
		// one attached after starts its own.
		d.mu.Lock()
		if !d.labelUsedLocked(s.label()) {
			d.metrics.Forget(s.label())
		}
		d.mu.Unlock()
		d.log.Info("dropped", "view", name)
		close(s.dropped)
	}()
	return nil
}

// New makes a daemon that serves nothing yet; w relays events to all
// its views; each container may hold bounds of it.
func New(procs *proc.Procs, m *metrics.Metrics, w *host.Watcher, bounds serve.Bounds, log *slog.Logger) *Daemon {
	d := &Daemon{procs: procs, ident: access.NewIdentifier(procs), metrics: m, watcher: w, bounds: bounds, log: log, views: map[string]*served{}, over: make(chan struct{})}
	m.AddSource(metrics.Source{Name: "cgfs_seccomp_notifications_total", Counter: true,
		Help: "Seccomp notifications of containers' processes the daemon's agents handled.",
		Read: func() float64 { return float64(d.agentStats()) }})
	return d
}

// newServed is what serves the container of views on mounted: with its
// nested views, from the same budget.
func (d *Daemon) newServed(name string, views *serve.Views, mounted *fuseconn.Conn, budget *serve.Budget, req control.Request, counts *metrics.Counts) *served {
	nested := serve.NewNested(d.procs, serve.Options{Name: name, Log: d.log, Watcher: d.watcher, Budget: budget,
		RootShownAs: views.RootShownAs(), Outer: func() *serve.Views { return views }}, counts)
	return &served{views: views, mounted: mounted, nested: nested, owner: req.Owner, req: req, dropped: make(chan struct{}), counts: counts}
}

// Handle answers one control request from host process peer.
func (d *Daemon) Handle(req control.Request, _ int) (control.Answer, *os.File) {
	switch req.Op {
	case "attach", "detach", "agent", "enter":
		if !d.beginOp() {
			if req.File != nil {
				req.File.Close()
			}
			d.log.Info("asked to retry: the daemon is handing over", "op", req.Op, "name", req.Name)
			return control.Answer{Error: errHandingOver.Error(), Retry: true}, nil
		}
		defer d.ops.RUnlock()
	}
	switch req.Op {
	case "attach":
		f, s, err := d.attach(req)
		if err != nil {
			_, usage := err.(serve.UsageError)
			return control.Answer{Error: err.Error(), Usage: usage, Retry: errors.Is(err, errHandingOver)}, nil
		}
		var a control.Answer
		if req.Confirm {
			// A view its asker did not put in place (a bad target, an
			// asker that died) is no view: nothing served, the name free.
			a.Placed = func(ok bool) {
				if !ok {
					d.log.Warn("dropped: the view was not put in place", "view", req.Name)
					s.stop()
				}
			}
		}
		return a, f
	case "detach":
		if !d.Detach(req.Name) {
			return control.Answer{Error: "no view " + req.Name, Usage: true}, nil
		}
		return control.Answer{}, nil
	case "list":
		return control.Answer{Views: d.List()}, nil
	case "upgrade":
		return d.upgrade(), nil
	case "agent":
		d.mu.Lock()
		_, known := d.views[req.Name]
		ready := d.set != nil
		d.mu.Unlock()
		if !known || !ready || req.File == nil {
			if req.File != nil {
				req.File.Close()
			}
			return control.Answer{Error: "agent needs a container the daemon serves and a seccomp listener", Usage: true}, nil
		}
		d.serveAgent(req.File, req.Name)
		return control.Answer{}, nil
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
func (d *Daemon) attach(req control.Request) (*os.File, *served, error) {
	if req.Name == "" || req.Owner <= 0 {
		return nil, nil, serve.UsageError{Msg: "attach needs a name and an owner"}
	}
	d.mu.Lock()
	_, taken := d.views[req.Name]
	handing := d.handing
	d.mu.Unlock()
	if taken {
		return nil, nil, serve.UsageError{Msg: "a view named " + req.Name + " is served already"}
	}
	if handing {
		return nil, nil, errHandingOver
	}
	budget := serve.NewBudget(d.bounds)
	views, err := serve.Open(d.procs, serve.Options{Name: req.Name, Owner: req.Owner, HostDir: req.Cgroup, Shared: req.Shared,
		Log: d.log, Watcher: d.watcher, Budget: budget})
	if err != nil {
		return nil, nil, err
	}
	counts := d.metrics.For(labelOf(req))
	mounted, err := views.Serve(d.ident, counts)
	if err != nil {
		views.Close()
		return nil, nil, err
	}
	s := d.newServed(req.Name, views, mounted, budget, req, counts)
	if s.ownerStart, err = d.procs.StartTime(req.Owner); err != nil {
		mounted.Stop()
		views.Close()
		return nil, nil, err
	}
	// The mount is the asker's before the view is listed: from then on a
	// detach (or the container's end, or Close) may stop it, which must
	// not close what the asker is handed.
	f := mounted.Take()
	if err := d.run(req.Name, s); err != nil {
		f.Close()
		mounted.Stop()
		views.Close()
		return nil, nil, err
	}
	d.log.Info("attached", "view", req.Name, "owner", req.Owner)
	return f, s, nil
}

// agentStats is how many notifications the daemon's agents handled.
func (d *Daemon) agentStats() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.agentsEnded
	for _, a := range d.agents {
		n += a.Stats().Handled()
	}
	return n
}

// Detach stops serving the view name; the container sees ENOTCONN. It
// returns once the view is dropped.
func (d *Daemon) Detach(name string) bool {
	d.mu.Lock()
	s := d.views[name]
	d.mu.Unlock()
	if s == nil {
		return false
	}
	s.stop()
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
	for _, a := range d.agents {
		a.Close()
	}
	d.agents = nil
	all := make([]*served, 0, len(d.views))
	for _, s := range d.views {
		all = append(all, s)
	}
	d.mu.Unlock()
	for _, s := range all {
		s.nested.Close()
		s.mounted.Stop()
	}
	// The users' containers are the daemon's: nobody else can end them.
	d.mu.Lock()
	u := d.users
	d.mu.Unlock()
	if u != nil {
		u.mu.Lock()
		u.closed = true // no removal begins elsewhere from here on
		u.mu.Unlock()
		for _, c := range u.every() {
			u.removing.Add(1)
			d.removeUserContainer(u, c)
		}
		u.removing.Wait() // and those begun before
	}
}

// ServeSeccomp takes OCI runtimes' seccomp listeners at ln (a unix
// stream socket, runc's seccomp.listenerPath): each connection brings
// the container's state and the listener of its filter, which the daemon
// then answers (statfs on the views it serves as the host's cgroupfs,
// cgroupfs mounts with nested views). Only host root may connect.
func (d *Daemon) ServeSeccomp(ln *net.UnixListener) error {
	l, err := layout.Discover(d.procs)
	if err != nil {
		return err
	}
	var mounts []mimic.Mount
	for _, h := range l.Hierarchies {
		mounts = append(mounts, mimic.MountOf(h))
	}
	d.mu.Lock()
	d.set = mimic.NewSet(mounts)
	d.mounts = mounts
	for _, s := range d.views {
		s.unset = d.set.Add(s.mounted.Dev())
	}
	// With the set, at once: the control socket answers already, and an
	// agent request that finds the set must find its answers.
	d.agentCfg = agent.Config{Magic: d.set.Magic, Log: d.log}
	d.mu.Unlock()
	go control.AcceptEach(ln, d.takeListener)
	return nil
}

// mounterFor answers the cgroupfs mounts of a container's processes with
// nested views of that container, charged to it: the container a
// listener was handed over for, by its view's name, or (name "") the one
// whose init an LXC monitor names (Caller.Init). A caller of no container
// the daemon serves is left to the kernel.
func (d *Daemon) mounterFor(name string) agent.Mounter {
	d.mu.Lock()
	n := &mimic.Nester{Ident: d.ident, Set: d.set, Mounts: d.mounts, Log: d.log}
	d.mu.Unlock()
	n.Serve = func(c agent.Caller) (*os.File, <-chan struct{}, error) {
		d.mu.Lock()
		s := d.views[name]
		if name == "" {
			s = nil
			for _, v := range d.views {
				if c.Init != 0 && v.owner == c.Init {
					s = v
				}
			}
		}
		d.mu.Unlock()
		if s == nil {
			return nil, nil, mimic.ErrDecline
		}
		return s.nested.ServeDone(c.Tid)
	}
	return n.Mount
}

// ServeLXCProxy answers LXC monitors at ln (a unixpacket socket), as
// lxc.seccomp.notify.proxy (LXC keeps each container's listener and
// forwards its notifications): with the same answers as ServeSeccomp's,
// which must have been called first.
func (d *Daemon) ServeLXCProxy(ln *net.UnixListener) (io.Closer, error) {
	d.mu.Lock()
	ready, cfg := d.set != nil, d.agentCfg
	d.mu.Unlock()
	if !ready {
		return nil, errors.New("the LXC proxy needs the seccomp socket served first")
	}
	cfg.Mounter = d.mounterFor("")
	p, err := agent.ServeLXCProxy(ln, cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return p, nil
}

// takeListener reads one runtime's message: the container's state
// (specs.ContainerProcessState, JSON) and its seccomp listener.
func (d *Daemon) takeListener(c *net.UnixConn) {
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil || cred.Uid != 0 {
		d.log.Warn("refused a seccomp listener: only host root may hand one over", "err", err)
		return
	}
	buf, oob := make([]byte, 1<<16), make([]byte, unix.CmsgSpace(4*8))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		d.log.Warn("reading a seccomp listener", "err", err)
		return
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if f, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, f...)
			}
		}
	}
	var st struct {
		Fds   []string `json:"fds"`
		Pid   int      `json:"pid"`
		State struct {
			ID string `json:"id"`
		} `json:"state"`
	}
	if err := json.Unmarshal(buf[:n], &st); err != nil || len(fds) == 0 {
		d.log.Warn("a seccomp listener message without state or descriptor", "err", err, "fds", len(fds))
		for _, fd := range fds {
			unix.Close(fd)
		}
		return
	}
	// The first descriptor runc names seccompFd is the listener.
	listener := -1
	for i, name := range st.Fds {
		if name == "seccompFd" && i < len(fds) {
			listener = fds[i]
		}
	}
	for _, fd := range fds {
		if fd != listener {
			unix.Close(fd)
		}
	}
	if listener < 0 {
		d.log.Warn("a seccomp listener message without seccompFd", "container", st.State.ID)
		return
	}
	unix.CloseOnExec(listener)
	f := os.NewFile(uintptr(listener), "seccomp listener of "+st.State.ID)
	// runc hands its listener over once: systemd's file descriptor
	// store keeps a copy, so that a restarted daemon takes it up again
	// (Restore) instead of the container's notified syscalls failing
	// ENOSYS for want of any holder.
	// Unique among the stored ones: FDSTOREREMOVE drops every
	// descriptor of a name.
	name := fmt.Sprintf("seccomp-%s-%d", st.State.ID, time.Now().UnixNano())
	if err := storeFd(f, name); err != nil {
		if os.Getenv("NOTIFY_SOCKET") != "" {
			d.log.Warn("keeping a seccomp listener in the file descriptor store", "container", st.State.ID, "err", err)
		}
		name = ""
	}
	a := d.serveAgent(f, st.State.ID)
	if name != "" {
		go func() {
			<-a.Done()
			_ = unstoreFd(name)
		}()
	}
	d.log.Info("serving a seccomp listener", "container", st.State.ID, "pid", st.Pid)
}

// Restore takes up the seccomp listeners a daemon before this one left
// in systemd's file descriptor store (passed back as LISTEN_FDS, named
// seccomp-*), after ServeSeccomp.
func (d *Daemon) Restore(files []*os.File) int {
	n := 0
	// Those a keeper kept.
	for _, m := range d.restoring {
		var st agentState
		if json.Unmarshal(m.State, &st) != nil || len(m.Files) != 1 || d.set == nil {
			for _, f := range m.Files {
				f.Close()
			}
			d.unkeep(m.Name)
			continue
		}
		d.unkeep(m.Name) // serveAgent keeps it again
		d.serveAgent(m.Files[0], st.Container)
		n++
	}
	d.restoring = nil
	for _, f := range files {
		if !strings.HasPrefix(f.Name(), "seccomp-") || d.set == nil {
			continue
		}
		name := f.Name()
		a := d.serveAgent(f, storedContainer(name))
		go func() {
			<-a.Done()
			_ = unstoreFd(name)
		}()
		n++
	}
	return n
}

// storedContainer is the container of a listener stored as name
// (seccomp-ID-TIME).
func storedContainer(name string) string {
	id := strings.TrimPrefix(name, "seccomp-")
	if i := strings.LastIndexByte(id, '-'); i >= 0 {
		id = id[:i]
	}
	return id
}

// storeFd keeps a copy of f in systemd's file descriptor store
// (sd_notify FDSTORE=1 with the descriptor; the unit needs
// FileDescriptorStoreMax).
func storeFd(f *os.File, name string) error {
	return notifyWithFd("FDSTORE=1\nFDNAME="+name, int(f.Fd()))
}

// unstoreFd drops the stored copy called name.
func unstoreFd(name string) error {
	return notifyWithFd("FDSTOREREMOVE=1\nFDNAME="+name, -1)
}

// notifyWithFd sends state to $NOTIFY_SOCKET, with descriptor fd unless
// it is -1.
func notifyWithFd(state string, fd int) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return errors.New("NOTIFY_SOCKET is not set")
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	return unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: path}, 0)
}

// serveAgent answers a seccomp listener of container name's processes
// (a keeper keeps a copy).
func (d *Daemon) serveAgent(listener *os.File, name string) *agent.Agent {
	// The keeper's copy first: once served, the listener is the agent's,
	// which closes it as soon as its filter has no task left.
	keptAs := d.keepAgent(listener, name)
	d.mu.Lock()
	cfg := d.agentCfg
	d.mu.Unlock()
	cfg.Mounter = d.mounterFor(name)
	a := agent.Serve(listener, cfg)
	d.mu.Lock()
	d.agents = append(d.agents, a)
	d.mu.Unlock()
	d.log.Debug("agent", "container", name)
	go func() { // dropped once its filter has no task left
		<-a.Done()
		d.mu.Lock()
		defer d.mu.Unlock()
		for i, x := range d.agents {
			if x == a {
				d.agents = append(d.agents[:i], d.agents[i+1:]...)
				d.agentsEnded += a.Stats().Handled() // a counter never goes down
				break
			}
		}
		if !d.handing { // else the next server answers it
			go d.unkeep(keptAs)
		}
	}()
	return a
}
