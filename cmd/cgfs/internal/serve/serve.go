// Package serve serves one container's cgroup tree: it takes the owner
// process, opens the host hierarchies for it (refusing any where the
// owner has no cgroup of its own), and serves the views on a FUSE mount
// that is born detached, to be moved onto a path or into the
// container's own mount namespace.
package serve

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/fs"
	"github.com/cgfs/cgfs/fuseconn"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/host"
	"github.com/cgfs/cgfs/translate/layout"
	"github.com/cgfs/cgfs/translate/pidns"
)

// Options is what to serve for one container.
type Options struct {
	// Name is the view's name in logs, metrics and the daemon's list; ""
	// names it after HostDir or the owner.
	Name string
	// Owner is a process of the container; 0 serves the server's own
	// namespaces (the host's).
	Owner int
	// HostDir serves one cgroup v2 directory at the mount root; "" serves
	// the owner's cgroup in every hierarchy the host mounts.
	HostDir string
	// Shared names hierarchies to serve read-only although the owner has
	// no cgroup of its own there (their layout names; "." for HostDir's
	// or a cgroup v2 only host's).
	Shared []string
	// MaxOpen and V1Max are the container's bounds; 0 takes the
	// defaults (translate.DefaultOpenFiles, DefaultV1Descendants).
	// MaxOpen is taken only without a Budget.
	MaxOpen, V1Max int
	// Budget is the container's share of the server, which its views
	// (its own and the nested ones) draw on together; nil gives the
	// views one of their own, of MaxOpen files and default bounds.
	Budget *Budget
	// Nested: Owner is a thread of the container that mounts cgroupfs
	// (a nested runtime), and the views belong to the user namespace
	// that owns its cgroup namespace, as a kernel cgroupfs mount would
	// (access.CgroupNSOwner); what host root owns shows as RootShownAs
	// (the container's root), and privilege over that namespace
	// overrides the mode only of files whose ids it maps.
	Nested      bool
	RootShownAs [2]uint32
	// Debug logs every FUSE request.
	Debug bool
	Log   *slog.Logger
	// Watcher relays the kernel's changes of events files (inotify
	// IN_MODIFY) to the container's watchers; nil relays none. One
	// serves a whole process.
	Watcher *host.Watcher
	// Dirs, when set, are the host directories to serve, by hierarchy
	// name (Views.Dirs of an earlier server's views), instead of the
	// owner's cgroups now: the owner may have moved since (into a child
	// cgroup, into a hidden leaf).
	Dirs map[string]string
	// TakingOver: another server serves these views until this one takes
	// their connections over; it leaves their hidden leaves alone.
	TakingOver bool
	// Outer, for nested views, is the container's own views (nil while
	// it has none). A nested view is rooted where the kernel roots a
	// cgroupfs mount, at the caller's cgroup namespace root, where that
	// lies within the container's directories (elsewhere at the caller's
	// cgroup); and the tasks its root may hold are the container's, of
	// its pid namespace or below (the caller may be in a pid namespace of
	// its own, as systemd-nspawn's payload is, and its cgroup the
	// container's in a hierarchy its runtime leaves alone).
	Outer func() *Views
}

// UsageError is a mistake in what was asked: a command exits 2 for it.
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// Views are the views of one container and what they hold open. Close
// releases them.
type Views struct {
	Name     string
	Owner    *access.Owner
	opts     Options
	views    []fs.ViewAt
	symlinks map[string]string
	hosts    []*host.Host
	movers   *pidns.Pool
	procs    *proc.Procs
	log      *slog.Logger
	dirs     map[string]string        // host directory by hierarchy name
	readOnly map[*translate.View]bool // served read-only (Options.Shared)
}

// Open takes the owner (the server's own namespaces without one) and
// opens the views o asks for.
func Open(procs *proc.Procs, o Options) (*Views, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	v := &Views{Name: o.Name, opts: o, procs: procs, log: o.Log, dirs: map[string]string{}, readOnly: map[*translate.View]bool{}}
	if o.Budget == nil {
		v.opts.Budget = NewBudget(Bounds{OpenFiles: o.MaxOpen})
	}
	var err error
	switch {
	case o.Nested:
		if v.Owner, err = access.CgroupNSOwner(procs, o.Owner); err != nil {
			return nil, err
		}
	case o.Owner != 0:
		if v.Owner, err = access.OwnerOf(procs, o.Owner); err != nil {
			return nil, UsageError{fmt.Sprintf("--owner %d: %v", o.Owner, err)}
		}
	default:
		if v.Owner, err = access.SelfOwner(procs); err != nil {
			return nil, err
		}
	}
	if err := v.open(); err != nil {
		v.Close()
		return nil, err
	}
	// Leaves left by an earlier server that are no longer needed are
	// folded back before anyone looks: in the views the container may
	// change. A hierarchy served read-only is not the container's, nor
	// are the leaves below it (another server may be making one, which
	// looks unneeded until its controllers are enabled).
	for _, va := range v.views {
		if o.TakingOver {
			break
		}
		if v.readOnly[va.View] {
			continue
		}
		if err := va.View.Reconcile(); err != nil {
			v.log.Warn("reconciling hidden leaves", "hierarchy", va.Dir, "err", err)
		}
	}
	return v, nil
}

// IndexLeaves reads the hidden leaves afresh (see Options.TakingOver):
// the server taking over does so once the other has drained.
func (v *Views) IndexLeaves() error {
	for _, va := range v.views {
		if err := va.View.IndexLeaves(); err != nil {
			return fmt.Errorf("hierarchy %s: %w", va.Dir, err)
		}
	}
	return nil
}

// Leaves are each view's cgroups with a hidden leaf, by the view's
// directory in the mount (translate.View.LeafDirs): what a server that
// drained hands the one taking over, which then need not walk the trees.
func (v *Views) Leaves() map[string][]string {
	m := make(map[string][]string, len(v.views))
	for _, va := range v.views {
		m[va.Dir] = va.View.LeafDirs()
	}
	return m
}

// SetLeaves takes Leaves of the server that drained; a view it does not
// name reads its leaves afresh.
func (v *Views) SetLeaves(m map[string][]string) error {
	for _, va := range v.views {
		dirs, ok := m[va.Dir]
		if !ok {
			if err := va.View.IndexLeaves(); err != nil {
				return fmt.Errorf("hierarchy %s: %w", va.Dir, err)
			}
			continue
		}
		va.View.SetLeafDirs(dirs)
	}
	return nil
}

// Budget is the container's budget the views draw on.
func (v *Views) Budget() *Budget { return v.opts.Budget }

// RootShownAs is what the views show host root's files as: the owner
// namespace's root (host ids), which the container's nested views show
// them as too (Options.RootShownAs).
func (v *Views) RootShownAs() [2]uint32 {
	if v.Owner.IDs == nil {
		return [2]uint32{}
	}
	u, g := v.Owner.IDs.RootPair()
	return [2]uint32{uint32(u), uint32(g)}
}

// Dirs are the host directories served, by hierarchy name (see
// Options.Dirs).
func (v *Views) Dirs() map[string]string { return v.dirs }

// Close releases what the views hold.
func (v *Views) Close() {
	if v.movers != nil {
		v.movers.Close()
	}
	for _, va := range v.views {
		va.View.Close()
	}
	for _, h := range v.hosts {
		h.Close()
	}
	v.hosts = nil
	if v.Owner != nil {
		v.Owner.Close()
	}
}

// Serve serves the views on a new, detached FUSE mount.
func (v *Views) Serve(ident *access.Identifier, counts *metrics.Counts) (*fuseconn.Conn, error) {
	return v.ServeResumed(ident, counts, nil)
}

// ServeResumed serves the views on the connection r an earlier server
// made (see fuseconn.Resume); nil makes a new one.
func (v *Views) ServeResumed(ident *access.Identifier, counts *metrics.Counts, r *fuseconn.Resume) (*fuseconn.Conn, error) {
	return fs.Serve(fs.Config{
		Views:      v.views,
		Symlinks:   v.symlinks,
		Identifier: ident,
		Metrics:    counts,
		Log:        v.log,
		Debug:      v.opts.Debug,
		Watcher:    v.opts.Watcher,
		Owner:      v.opts.Owner,
		Resume:     r,
		Shared:     v.opts.Budget.fs,
	})
}

// Enter puts host process pid into the container's cgroup in every
// hierarchy, as one of the container's own (its root, or its hidden
// leaf when the root enables domain controllers).
func (v *Views) Enter(pid int) error {
	for _, va := range v.views {
		if err := va.View.Enter(pid); err != nil {
			return fmt.Errorf("hierarchy %s: %w", va.Dir, err)
		}
	}
	return nil
}

// EnterNS puts the task numbered n in the owner's pid namespace into
// the container's cgroup in every hierarchy (its root, or its hidden
// leaf), from inside that namespace.
func (v *Views) EnterNS(n int) error {
	for _, va := range v.views {
		if err := va.View.EnterOwn(n); err != nil {
			return fmt.Errorf("hierarchy %s: %w", va.Dir, err)
		}
	}
	return nil
}

// outer opens the root of a hierarchy's mount, for putting back a task
// moved in by a reused id; nil if the server's mount is not the
// hierarchy's root.
func (v *Views) outer(h layout.Hierarchy) *host.Host {
	if h.Root != "/" {
		return nil
	}
	r, err := host.Open(h.MountPoint)
	if err != nil {
		v.log.Warn("cannot open the hierarchy's root", "mount", h.MountPoint, "err", err)
		return nil
	}
	v.hosts = append(v.hosts, r)
	return r
}

func (v *Views) open() error {
	o := v.opts
	policy := access.NewPolicy(v.Owner.Chain)
	var rootShownAs *[2]uint32
	if o.Nested {
		var mapping access.Mapping = access.IDMapping{IdentityMapping: v.Owner.IDs}
		if v.Owner.IDs == nil {
			mapping = nil // the server's own namespace: every id is mapped
		}
		policy = access.NewNestedPolicy(v.Owner.Chain, mapping)
		rootShownAs = &o.RootShownAs
	}
	limits := o.Budget.files // one container: shared by its views
	if o.Owner != 0 {
		// Tasks are moved from inside the container's pid namespaces.
		var err error
		if v.movers, err = pidns.NewPool(v.procs, v.Owner.PidNS, v.Owner.Thread, o.Budget.helpers); err != nil {
			return err
		}
	}
	if o.HostDir != "" {
		if v.Name == "" {
			v.Name = o.HostDir
		}
		h, err := host.Open(o.HostDir)
		if err != nil || !h.IsCgroup2() {
			if h != nil {
				h.Close()
			}
			return UsageError{fmt.Sprintf("cannot serve %s: it is not a directory on a cgroup2 filesystem", o.HostDir)}
		}
		v.hosts = append(v.hosts, h)
		cgPath, mount, err := layout.Locate(o.HostDir)
		if err != nil {
			return UsageError{fmt.Sprintf("cannot serve %s: %v", o.HostDir, err)}
		}
		view, err := v.view(h, translate.Config{
			Policy: policy, Procs: v.procs, IDs: v.Owner.IDs, RootShownAs: rootShownAs,
			CgroupPath: cgPath, Delegate: delegateFiles(v.log), Limits: limits,
			Movers: v.movers, Outer: v.outer(mount),
		}, ".")
		if err != nil {
			return err
		}
		v.views = []fs.ViewAt{{View: view}}
		return nil
	}
	l, err := layout.Discover(v.procs)
	if err != nil {
		return err
	}
	v.symlinks = l.Symlinks
	if v.Name == "" {
		v.Name = fmt.Sprintf("owner:%d", o.Owner)
	}
	owner := o.Owner
	if owner == 0 {
		owner = os.Getpid()
	}
	for i, hier := range l.Hierarchies {
		dir, cgPath, err := hier.DirOf(v.procs, owner)
		if d, ok := o.Dirs[hier.Name]; ok {
			rel, rerr := filepath.Rel(hier.MountPoint, d)
			if rerr != nil || strings.HasPrefix(rel, "..") {
				err = fmt.Errorf("%s is outside %s", d, hier.MountPoint)
			} else {
				dir, cgPath, err = d, filepath.Join(hier.Root, rel), nil
			}
		}
		if err != nil {
			return UsageError{fmt.Sprintf("--owner %d: %v", o.Owner, err)}
		}
		h, err := host.Open(dir)
		if err != nil {
			return err
		}
		v.hosts = append(v.hosts, h)
		cfg := translate.Config{
			Policy: policy, Procs: v.procs, IDs: v.Owner.IDs, RootShownAs: rootShownAs, V1: hier.V1,
			Controllers: hier.Controllers, CgroupPath: cgPath, Limits: limits,
			V1Descendants: o.V1Max, Movers: v.movers, Outer: v.outer(hier),
		}
		if !hier.V1 {
			cfg.Delegate = delegateFiles(v.log)
		}
		if hier.Name != "" {
			// Hierarchies side by side: keep their inode numbers apart.
			cfg.InoBase = uint64(i+1) << 48
		}
		name := hier.Name
		if name == "" {
			name = "."
		}
		view, err := v.view(h, cfg, name)
		if err != nil {
			return err
		}
		v.views = append(v.views, fs.ViewAt{Dir: hier.Name, View: view})
		v.dirs[hier.Name] = dir
		v.log.Debug("hierarchy", "view", v.Name, "name", hier.Name, "dir", dir, "v1", hier.V1)
	}
	return nil
}

// view makes the view of one hierarchy, called name in messages and
// --shared. A container owner must have a cgroup of its own there: not
// the hierarchy's root, and holding no process outside the owner's
// namespaces, or the container could reconfigure, freeze and join host
// processes. Unless --shared names the hierarchy, that is refused; with
// it the hierarchy is served read-only.
func (v *Views) view(h *host.Host, cfg translate.Config, name string) (*translate.View, error) {
	view, err := translate.New(h, cfg)
	if err != nil || v.opts.Owner == 0 {
		return view, err // a view of the host's own needs no such care
	}
	why := ""
	if cfg.CgroupPath == "/" {
		why = "the owner's cgroup is the hierarchy's root"
	} else if slices.Contains(strings.Split(cfg.CgroupPath, "/"), translate.LeafName) {
		// A view rooted in a hidden leaf could make cgroups inside it,
		// which the leaf's own view takes for empty.
		why = "the owner's cgroup is a hidden leaf of cgfs"
	} else if v.opts.TakingOver {
		// The server before this one judged it at attach. Since then a
		// host process may sit there a moment (cgfs exec's stage,
		// before it becomes the container's).
	} else if tid, found, err := view.Foreign(v.tasksOf()); err != nil {
		return nil, err
	} else if found {
		why = fmt.Sprintf("the owner's cgroup %s holds task %d, which is outside the owner's namespaces", cfg.CgroupPath, tid)
	}
	switch {
	case why == "":
		return view, nil
	case has(v.opts.Shared, name):
		v.log.Warn("serving read-only: the owner has no cgroup of its own here", "hierarchy", name, "why", why)
		cfg.ReadOnly = true
		ro, err := translate.New(h, cfg)
		if err == nil {
			v.readOnly[ro] = true
		}
		return ro, err
	}
	return nil, UsageError{fmt.Sprintf("--owner %d: hierarchy %s: %s; give the container a cgroup of its own there, or pass --shared %s to serve it read-only",
		v.opts.Owner, name, why, name)}
}

// tasksOf is the thread whose pid namespace (and those below it) the
// tasks of a view root may be in: the owner's; for a nested view owned
// by the container's own user namespace (its root's caller, as
// privileged over them as the container's root), the container's
// (Options.Outer). A nested view owned by a user namespace made inside
// the container keeps the owner's: it may not be given a root holding
// the container's tasks outside its pid namespace.
func (v *Views) tasksOf() proc.Thread {
	if v.opts.Nested && v.opts.Outer != nil {
		o := v.opts.Outer()
		if o != nil && o.Owner != nil && len(o.Owner.Chain) > 0 && len(v.Owner.Chain) > 0 &&
			o.Owner.Chain[0].NS == v.Owner.Chain[0].NS {
			return o.Owner.Thread
		}
	}
	return v.Owner.Thread
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// delegateFiles lists the files the host lets a delegatee write at its
// root, from /sys/kernel/cgroup/delegate.
func delegateFiles(log *slog.Logger) []string {
	b, err := os.ReadFile("/sys/kernel/cgroup/delegate")
	if err != nil {
		log.Warn("no /sys/kernel/cgroup/delegate; only the core files are writable at a view root", "err", err)
		return nil
	}
	return strings.Fields(string(b))
}

// Nested serves views for one container's nested runtimes: each call
// serves a new detached mount of the cgroups of the container's thread
// that mounts cgroupfs, owned as the kernel owns such a mount, from one
// set of views per thread (by tid and start time) that lives while any
// of its mounts does. They draw on the container's budget, and the
// container holds at most its Bounds.NestedViews of them at once.
type Nested struct {
	procs *proc.Procs
	ident *access.Identifier
	opts  Options
	count *metrics.Counts

	mu     sync.Mutex
	owners map[[2]uint64]*nestedOwner
	live   int
	closed bool
}

type nestedOwner struct {
	views   *Views
	mounts  int
	mounted map[*fuseconn.Conn]bool
}

// NewNested serves the nested views of the container o names (o.Name,
// o.Budget, o.RootShownAs: what host root's files show as in its own
// view), with o's Watcher and Log, counted by count.
func NewNested(procs *proc.Procs, o Options, count *metrics.Counts) *Nested {
	if o.Budget == nil {
		o.Budget = NewBudget(Bounds{OpenFiles: o.MaxOpen})
	}
	o.Nested = true
	return &Nested{procs: procs, ident: access.NewIdentifier(procs), opts: o, count: count, owners: map[[2]uint64]*nestedOwner{}}
}

// Live is how many nested views the container holds, and its bound.
func (n *Nested) Live() (live, max int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.live, n.opts.Budget.Bounds.NestedViews
}

// Serve serves a new view of the cgroups of host thread tid, detached.
// Past the container's bound it is ENOSPC, as the kernel answers a
// mount past fs.mount-max.
func (n *Nested) Serve(tid int) (*os.File, error) {
	f, _, err := n.ServeDone(tid)
	return f, err
}

// ServeDone is Serve, and says when the view's connection ends.
func (n *Nested) ServeDone(tid int) (*os.File, <-chan struct{}, error) {
	start, err := n.procs.StartTime(tid)
	if err != nil {
		return nil, nil, err
	}
	key := [2]uint64{uint64(tid), start}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, nil, errors.New("the container's views are closed")
	}
	if max := n.opts.Budget.Bounds.NestedViews; n.live >= max {
		return nil, nil, fmt.Errorf("the container holds %d nested views, its bound: %w", n.live, unix.ENOSPC)
	}
	o := n.owners[key]
	if o == nil {
		opts := n.opts
		opts.Name, opts.Owner = fmt.Sprintf("%s/nested:%d", opts.Name, tid), tid
		opts.Dirs = n.nsRootDirs(tid)
		v, err := Open(n.procs, opts)
		if err != nil && opts.Dirs != nil {
			// The namespace's root holds tasks of pid namespaces above
			// the caller's (a payload of systemd-nspawn, in a pid
			// namespace of its own, whose cgroup namespace is the
			// container's): a view there would let it manage them.
			// Its own cgroup, as before.
			n.opts.Log.Debug("no nested view at the cgroup namespace root: at the caller's cgroup", "tid", tid, "err", err)
			opts.Dirs = nil
			v, err = Open(n.procs, opts)
		}
		if err != nil {
			return nil, nil, err
		}
		o = &nestedOwner{views: v, mounted: map[*fuseconn.Conn]bool{}}
		n.owners[key] = o
	}
	served, err := o.views.Serve(n.ident, n.count)
	if err != nil {
		if o.mounts == 0 {
			o.views.Close()
			delete(n.owners, key)
		}
		return nil, nil, err
	}
	o.mounts++
	o.mounted[served] = true
	n.live++
	go func() {
		<-served.Done() // the nested container's mount namespace is gone
		n.mu.Lock()
		defer n.mu.Unlock()
		n.live--
		delete(o.mounted, served)
		if o.mounts--; o.mounts == 0 && n.owners[key] == o {
			o.views.Close()
			delete(n.owners, key)
		}
	}()
	return served.Take(), served.Done(), nil
}

// Close stops every nested view (their mounts answer ENOTCONN) and
// releases them.
func (n *Nested) Close() {
	n.mu.Lock()
	n.closed = true
	var mounted []*fuseconn.Conn
	for _, o := range n.owners {
		for m := range o.mounted {
			mounted = append(mounted, m)
		}
	}
	n.mu.Unlock()
	for _, m := range mounted {
		m.Stop() // its goroutine above releases the views with the last
	}
	// What the identifier remembers of the container's callers: a
	// request still under way reads its caller afresh from here on.
	n.ident.Close()
}

// Bounds are what one container may hold of the server, across its own
// view and every nested view of it: a container at a bound gets the
// kernel's errno for that resource while every other container is served
// as before. 0 takes each default.
type Bounds struct {
	// OpenFiles: interface files held open (ENFILE beyond);
	// translate.DefaultOpenFiles.
	OpenFiles int
	// NestedViews: cgroupfs mounts of its nested runtimes served at
	// once, each a FUSE connection of the server's (ENOSPC beyond);
	// DefaultNestedViews.
	NestedViews int
	// RelayWatches: events files whose changes are relayed to its
	// inotify watchers, each a host inotify watch (none beyond);
	// fs.MaxRelayWatches.
	RelayWatches int
	// PidHelpers: helper processes in its pid namespaces (EAGAIN
	// beyond); pidns.MaxHelpers.
	PidHelpers int
	// InFlight: its FUSE requests served at once (more wait);
	// fs.MaxInFlight.
	InFlight int
}

// DefaultNestedViews bounds the nested views of a container that sets
// no bound.
const DefaultNestedViews = 256

// Budget is one container's share of the server, which every view of
// it draws on.
type Budget struct {
	Bounds  Bounds // with the defaults filled in
	files   *translate.Limits
	fs      *fs.Shared
	helpers *pidns.Budget
}

// NewBudget is the budget of one container with bounds b.
func NewBudget(b Bounds) *Budget {
	if b.OpenFiles <= 0 {
		b.OpenFiles = translate.DefaultOpenFiles
	}
	if b.NestedViews <= 0 {
		b.NestedViews = DefaultNestedViews
	}
	if b.RelayWatches <= 0 {
		b.RelayWatches = fs.MaxRelayWatches
	}
	if b.PidHelpers <= 0 {
		b.PidHelpers = pidns.MaxHelpers
	}
	if b.InFlight <= 0 {
		b.InFlight = fs.MaxInFlight
	}
	return &Budget{Bounds: b, files: &translate.Limits{OpenFiles: b.OpenFiles},
		fs: fs.NewShared(b.InFlight, b.RelayWatches), helpers: pidns.NewBudget(b.PidHelpers)}
}

// Held is what the container holds now and its bound, by resource as
// metrics name them; nested is its Nested (nil: none).
func (b *Budget) Held(nested *Nested) map[string][2]float64 {
	w, wmax := b.fs.Watches()
	h, hmax := b.helpers.Live()
	m := map[string][2]float64{
		"open_files":    {float64(b.files.Open()), float64(b.Bounds.OpenFiles)},
		"relay_watches": {float64(w), float64(wmax)},
		"pid_helpers":   {float64(h), float64(hmax)},
	}
	if nested != nil {
		n, max := nested.Live()
		m["nested_views"] = [2]float64{float64(n), float64(max)}
	}
	return m
}

// MetricsView is what /metrics reads of these views while m serves them
// for the container called name: their host cgroups, whether they
// answer, their hidden leaves and relayed events.
func (v *Views) MetricsView(name string, m *fuseconn.Conn) *metrics.View {
	mv := &metrics.View{Container: name, V1: map[string]string{}}
	for _, va := range v.views {
		v1, ctrls := va.View.Hierarchy()
		if !v1 {
			mv.V2 = va.View.Dir()
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			mv.V1[c] = va.View.Dir()
		}
	}
	mv.Up = func() bool {
		select {
		case <-m.Done():
			return false
		default:
		}
		for _, va := range v.views {
			if _, err := os.Stat(va.View.Dir()); err != nil {
				return false
			}
		}
		return true
	}
	mv.Leaves = func() (now int, made, folded uint64) {
		for _, va := range v.views {
			n, m, f := va.View.Leaves()
			now, made, folded = now+n, made+m, folded+f
		}
		return now, made, folded
	}
	mv.Relayed = func() uint64 { _, raised := m.Relayed(); return raised }
	mv.Budget = func() map[string][2]float64 { return v.opts.Budget.Held(nil) }
	return mv
}

// nsRootDirs is where the kernel would root a cgroupfs mount of thread
// tid: at its cgroup namespace's root (proc.CgroupNSRoots), as host
// directories by hierarchy name, in each hierarchy where that lies
// within the container's own directories. systemd-nspawn, for one,
// mounts from a cgroup of its own (supervisor) and expects the whole
// tree of its namespace. Hierarchies left out (the caller's namespace
// is the host's there, or above the container's cgroup) are rooted at
// the caller's cgroup, as nothing of the container's reaches above it.
func (n *Nested) nsRootDirs(tid int) map[string]string {
	if n.opts.Outer == nil || n.opts.Outer() == nil {
		return nil
	}
	within := n.opts.Outer().Dirs()
	if len(within) == 0 {
		return nil
	}
	roots, err := n.procs.CgroupNSRoots(tid)
	if err != nil {
		n.opts.Log.Debug("no cgroup namespace root: the nested view is rooted at the caller's cgroup", "tid", tid, "err", err)
		return nil
	}
	l, err := layout.Discover(n.procs)
	if err != nil {
		return nil
	}
	dirs := map[string]string{}
	for _, hier := range l.Hierarchies {
		path, ok := hier.Controllers.In(roots)
		top, mine := within[hier.Name]
		if !ok || !mine {
			continue
		}
		rel, err := filepath.Rel(hier.Root, path)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		if dir := filepath.Join(hier.MountPoint, rel); dir == top || strings.HasPrefix(dir, top+"/") {
			dirs[hier.Name] = dir
		}
	}
	return dirs
}
