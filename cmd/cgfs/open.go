package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/access/proc"
	"github.com/cgfs/cgfs/fs"
	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/host"
	"github.com/cgfs/cgfs/translate/layout"
	"github.com/cgfs/cgfs/translate/pidns"
)

// openedViews are the views of one mount and what they hold open.
type openedViews struct {
	views    []fs.ViewAt
	symlinks map[string]string
	name     string // for logs and metrics
	hosts    []*host.Host
	movers   *pidns.Pool
}

func (o *openedViews) close() {
	if o.movers != nil {
		o.movers.Close()
	}
	for _, h := range o.hosts {
		h.Close()
	}
}

// outer opens the root of a hierarchy's mount, for putting back a task
// moved in by a reused id; nil if the server's mount is not the
// hierarchy's root.
func (o *openedViews) outer(h layout.Hierarchy, log *slog.Logger) *host.Host {
	if h.Root != "/" {
		return nil
	}
	r, err := host.Open(h.MountPoint)
	if err != nil {
		log.Warn("cannot open the hierarchy's root", "mount", h.MountPoint, "err", err)
		return nil
	}
	o.hosts = append(o.hosts, r)
	return r
}

// openViews opens what opts asks to serve: one cgroup v2 directory at
// the mount root, or the owner's cgroup in every hierarchy the host
// mounts, laid out as the host lays them out.
func openViews(opts mountOptions, owner *access.Owner, procs *proc.Procs, log *slog.Logger) (*openedViews, error) {
	o := &openedViews{name: opts.hostDir}
	policy := access.NewPolicy(owner.Chain)
	limits := &translate.Limits{OpenFiles: opts.maxOpen} // one container: shared by its views
	if opts.owner != 0 {
		// Tasks are moved from inside the container's pid namespaces.
		var err error
		if o.movers, err = pidns.NewPool(procs, owner.PidNS, owner.Thread); err != nil {
			return nil, err
		}
	}
	if opts.hostDir != "" {
		h, err := host.Open(opts.hostDir)
		if err != nil || !h.IsCgroup2() {
			if h != nil {
				h.Close()
			}
			o.close()
			return nil, usageError{fmt.Sprintf("cannot serve %s: it is not a directory on a cgroup2 filesystem", opts.hostDir)}
		}
		o.hosts = append(o.hosts, h)
		cgPath, mount, err := layout.Locate(opts.hostDir)
		if err != nil {
			o.close()
			return nil, usageError{fmt.Sprintf("cannot serve %s: %v", opts.hostDir, err)}
		}
		cfg := translate.Config{
			Policy: policy, Procs: procs, IDs: owner.IDs,
			CgroupPath: cgPath, Delegate: delegateFiles(log), Limits: limits,
			Movers: o.movers, Outer: o.outer(mount, log),
		}
		v, err := openView(h, cfg, ".", opts, owner, log)
		if err != nil {
			o.close()
			return nil, err
		}
		o.views = []fs.ViewAt{{View: v}}
		return o, nil
	}
	l, err := layout.Discover(procs)
	if err != nil {
		o.close()
		return nil, err
	}
	o.symlinks = l.Symlinks
	o.name = fmt.Sprintf("owner:%d", opts.owner)
	for i, hier := range l.Hierarchies {
		dir, cgPath, err := hier.DirOf(procs, opts.owner)
		if err != nil {
			o.close()
			return nil, usageError{fmt.Sprintf("--owner %d: %v", opts.owner, err)}
		}
		h, err := host.Open(dir)
		if err != nil {
			o.close()
			return nil, err
		}
		o.hosts = append(o.hosts, h)
		cfg := translate.Config{
			Policy: policy, Procs: procs, IDs: owner.IDs, V1: hier.V1,
			Controllers: hier.Controllers, CgroupPath: cgPath, Limits: limits,
			V1Descendants: opts.v1Max, Movers: o.movers, Outer: o.outer(hier, log),
		}
		if !hier.V1 {
			cfg.Delegate = delegateFiles(log)
		}
		if hier.Name != "" {
			// Hierarchies side by side: keep their inode numbers apart.
			cfg.InoBase = uint64(i+1) << 48
		}
		name := hier.Name
		if name == "" {
			name = "."
		}
		v, err := openView(h, cfg, name, opts, owner, log)
		if err != nil {
			o.close()
			return nil, err
		}
		o.views = append(o.views, fs.ViewAt{Dir: hier.Name, View: v})
		log.Info("hierarchy", "name", hier.Name, "dir", dir, "v1", hier.V1)
	}
	return o, nil
}

// openView makes the view of one hierarchy, called name in messages and
// --shared. A container owner must have a cgroup of its own there: not
// the hierarchy's root, and holding no process outside the owner's
// namespaces, or the container could reconfigure, freeze and join host
// processes. Unless --shared names the hierarchy, that is refused; with
// it the hierarchy is served read-only.
func openView(h *host.Host, cfg translate.Config, name string, opts mountOptions, owner *access.Owner, log *slog.Logger) (*translate.View, error) {
	v, err := translate.New(h, cfg)
	if err != nil || opts.owner == 0 {
		return v, err // a view of the host's own needs no such care
	}
	why := ""
	if cfg.CgroupPath == "/" {
		why = "the owner's cgroup is the hierarchy's root"
	} else if tid, found, err := v.Foreign(owner.Thread); err != nil {
		return nil, err
	} else if found {
		why = fmt.Sprintf("the owner's cgroup %s holds task %d, which is outside the owner's namespaces", cfg.CgroupPath, tid)
	}
	switch {
	case why == "":
		return v, nil
	case opts.shared.has(name):
		log.Warn("serving read-only: the owner has no cgroup of its own here", "hierarchy", name, "why", why)
		cfg.ReadOnly = true
		return translate.New(h, cfg)
	}
	return nil, usageError{fmt.Sprintf("--owner %d: hierarchy %s: %s; give the container a cgroup of its own there, or pass --shared %s to serve it read-only",
		opts.owner, name, why, name)}
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
