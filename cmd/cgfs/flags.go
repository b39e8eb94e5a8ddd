package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/fs"
	"github.com/cgfs/cgfs/translate"
	"github.com/cgfs/cgfs/translate/pidns"
)

const usage = `usage: cgfs mount [--cgroup HOSTDIR] [--owner PID] [--name NAME] [--shared NAME]... [--max-open-files N] [--v1-max-descendants N] [--metrics ADDR] [--debug] MOUNTPOINT

With --cgroup, serves the host cgroup v2 directory HOSTDIR at MOUNTPOINT as
the root of a cgroup tree. Without it, serves the cgroups of process PID in
every hierarchy the host mounts, laid out as the host lays out
/sys/fs/cgroup (v2 only, v1 or hybrid). Runs until SIGINT or SIGTERM.

A hierarchy where the owner has no cgroup of its own (its cgroup is the
hierarchy's root, or holds processes outside its namespaces) is refused,
unless --shared NAME names it (its directory in the layout, or "." for
--cgroup's and a cgroup v2 only host's): then it is served read-only.
`

// mountOptions is what `cgfs mount` was asked to do.
type mountOptions struct {
	hostDir    string   // --cgroup
	owner      int      // --owner; 0 for none
	metrics    string   // --metrics
	name       string   // --name
	maxOpen    int      // --max-open-files
	shared     []string // --shared
	v1Max      int      // --v1-max-descendants
	debug      bool
	mountpoint string
}

// parseMount parses `mount` and its flags.
func parseMount(args []string, stderr io.Writer) (mountOptions, error) {
	var o mountOptions
	fl := flag.NewFlagSet("mount", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, usage) }
	fl.StringVar(&o.hostDir, "cgroup", "", "host cgroup v2 `directory` to serve as the view's root")
	fl.IntVar(&o.owner, "owner", 0, "`pid` of a process of the container that owns the view")
	fl.BoolVar(&o.debug, "debug", false, "log every FUSE request")
	fl.Var((*names)(&o.shared), "shared", "serve hierarchy `NAME` read-only although the owner has no cgroup of its own there (repeatable)")
	fl.IntVar(&o.v1Max, "v1-max-descendants", translate.DefaultV1Descendants, "how many cgroups the container may make below each cgroup v1 view root (EAGAIN beyond)")
	fl.IntVar(&o.maxOpen, "max-open-files", translate.DefaultOpenFiles, "how many files the container may hold open in its views at once (ENFILE beyond)")
	fl.StringVar(&o.name, "name", "view", "the container's `name` in logs and metrics")
	fl.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (e.g. 127.0.0.1:9464; port 0 picks one)")
	if err := fl.Parse(args[1:]); err != nil {
		return o, usageError{err.Error()}
	}
	if fl.NArg() != 1 {
		fl.Usage()
		return o, usageError{"expected one MOUNTPOINT"}
	}
	o.mountpoint = fl.Arg(0)
	if o.v1Max < 1 {
		return o, usageError{"--v1-max-descendants must be at least 1"}
	}
	if o.maxOpen < 1 {
		return o, usageError{"--max-open-files must be at least 1"}
	}
	if o.hostDir == "" && o.owner == 0 {
		fl.Usage()
		return o, usageError{"--cgroup HOSTDIR or --owner PID is required"}
	}
	return o, nil
}

// names is a repeatable flag.
type names []string

func (n *names) String() string { return fmt.Sprint(*n) }

func (n *names) Set(s string) error {
	*n = append(*n, s)
	return nil
}

// boundsFlags adds the flags of what each container may hold of the
// server (its own view and its nested views together) to fl; check
// checks them once fl is parsed.
func boundsFlags(fl *flag.FlagSet) (b *serve.Bounds, check func() error) {
	b = &serve.Bounds{}
	fl.IntVar(&b.OpenFiles, "max-open-files", translate.DefaultOpenFiles, "files each container may hold open in its views at once (ENFILE beyond)")
	fl.IntVar(&b.NestedViews, "max-nested-views", serve.DefaultNestedViews, "cgroupfs mounts of its nested runtimes each container may hold at once (ENOSPC beyond)")
	fl.IntVar(&b.RelayWatches, "max-relay-watches", fs.MaxRelayWatches, "events files whose changes are relayed to each container's inotify watchers (no events beyond)")
	fl.IntVar(&b.PidHelpers, "max-pid-helpers", pidns.MaxHelpers, "helper processes in each container's pid namespaces (EAGAIN beyond)")
	fl.IntVar(&b.InFlight, "max-in-flight", fs.MaxInFlight, "FUSE requests of each container served at once (more wait)")
	return b, func() error {
		for _, f := range []struct {
			name string
			n    int
		}{{"max-open-files", b.OpenFiles}, {"max-nested-views", b.NestedViews}, {"max-relay-watches", b.RelayWatches},
			{"max-pid-helpers", b.PidHelpers}, {"max-in-flight", b.InFlight}} {
			if f.n < 1 {
				return usageError{fmt.Sprintf("--%s must be at least 1", f.name)}
			}
		}
		return nil
	}
}
