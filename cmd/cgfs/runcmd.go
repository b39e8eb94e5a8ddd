package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/launch"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

const runUsage = `usage: cgfs run [--name N] [--parent P] [--memory BYTES] [--pids N] [--cpus N] [--map HOSTID:COUNT] [--rootfs DIR] [--net own|host] [--metrics ADDR] [--delegated] -- CMD...

Starts CMD as root of new user (0 -> HOSTID, COUNT ids; default
100000:65536), mount, pid, cgroup, uts, ipc and network (--net own: only
its loopback; --net host shares the host's) namespaces, in a cgroup of
its own (P/N below every hierarchy's root; default cgfs/cgfs-PID) with the
limits set on it, its /sys/fs/cgroup that cgroup's view and a fresh /proc;
the host's file system otherwise, or DIR as its root. Exits with CMD's
status and removes what it made.
`

type runOptions struct {
	launch.Options
	metrics   string
	delegated bool // --delegated: the user's own cgroup, no daemon
}

func parseRun(args []string, stderr io.Writer) (runOptions, error) {
	var o runOptions
	fl := flag.NewFlagSet("run", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, runUsage) }
	fl.StringVar(&o.Name, "name", fmt.Sprintf("cgfs-%d", os.Getpid()), "the container's `name` (its cgroup and hostname)")
	fl.StringVar(&o.Parent, "parent", "cgfs", "the `cgroup` below every hierarchy's root that holds containers")
	limits := limitFlags(fl)
	idmap := fl.String("map", "100000:65536", "the host ids the container's 0.. map to, `HOSTID:COUNT`")
	fl.StringVar(&o.Rootfs, "rootfs", "", "the container's root file system `DIR` (the host's by default)")
	netMode := fl.String("net", "own", "the container's network: `own` (a namespace of its own with only its loopback up; none is the same) or host (the host's)")
	fl.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics")
	fl.BoolVar(&o.delegated, "delegated", false, "an ordinary user's container in the cgroup v2 subtree delegated to the user, with no daemon (the default when no daemon serves users)")
	if err := fl.Parse(args); err != nil {
		return o, usageError{err.Error()}
	}
	if os.Geteuid() != 0 {
		// A user's container is the daemon's to place and its ids the
		// user's own.
		var rootOnly []string
		fl.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "parent", "map", "metrics":
				rootOnly = append(rootOnly, "--"+f.Name)
			}
		})
		if len(rootOnly) > 0 {
			return o, usageError{fmt.Sprintf("%s: root's alone (a user's container is placed by the daemon, maps the user's own ids and /etc/subuid range, and the daemon's metrics count it)", strings.Join(rootOnly, ", "))}
		}
	}
	o.Cmd = fl.Args()
	if len(o.Cmd) == 0 {
		fl.Usage()
		return o, usageError{"expected a command after --"}
	}
	if err := checkName(o.Name); err != nil {
		return o, err
	}
	if userNameRE.MatchString(o.Name) && filepath.Clean(o.Parent) == "cgfs" {
		return o, usageError{fmt.Sprintf("--name %s: cgfs/user-N holds user N's containers (the daemon's)", o.Name)}
	}
	var err error
	if o.Parent, err = checkParent(o.Parent); err != nil {
		return o, err
	}
	if o.Limits, err = limits(); err != nil {
		return o, err
	}
	switch *netMode {
	case "own", "none":
		o.Net = launch.NetOwn
	case "host":
		o.Net = launch.NetHost
	default:
		return o, usageError{"--net wants own, none or host, not " + *netMode}
	}
	h, c, ok := strings.Cut(*idmap, ":")
	o.Map.HostID, err = strconv.Atoi(h)
	if !ok || err != nil {
		return o, usageError{"--map wants HOSTID:COUNT, not " + *idmap}
	}
	if o.Map.Count, err = strconv.Atoi(c); err != nil || o.Map.Count < 1 || o.Map.HostID < 1 {
		return o, usageError{"--map wants HOSTID:COUNT with both above 0, not " + *idmap}
	}
	if int64(o.Map.HostID)+int64(o.Map.Count) > 1<<32-1 {
		return o, usageError{"--map " + *idmap + " goes past the last id, 4294967294"}
	}
	return o, nil
}

// runAsUser is `cgfs run` by an unprivileged user: the daemon makes its
// container's cgroups (within the admin's policy), adopts its init,
// serves its view and answers its seccomp listeners.
func runAsUser(o runOptions, log *slog.Logger) (int, error) {
	socket := control.UserSocketPath()
	if _, err := os.Stat(socket); err != nil || o.delegated {
		// No daemon serves users: a cgroup delegated to the user will
		// do.
		mount, dir, derr := ownCgroup()
		if derr == nil {
			return runDelegated(o, mount, dir, log)
		}
		if o.delegated {
			return 0, fmt.Errorf("--delegated: %w (run cgfs where a cgroup v2 subtree is delegated to you: systemd-run --user --scope -p Delegate=yes cgfs run ..., or an admin's chown)", derr)
		}
		return 0, userSocketErr(socket, fmt.Errorf("%s: %w; nor is a cgroup delegated to you: %v", socket, control.ErrNotRunning, derr))
	}
	maps, err := userMaps()
	if err != nil {
		return 0, err
	}
	o.Log, o.Stderr = log, os.Stderr
	o.User = &userDaemon{socket: socket}
	o.UserMaps = maps
	var confirm func(ok bool)
	o.View = func(init int) (*os.File, func(), error) {
		view, placed, err := userView(socket, o.Name)
		if err != nil {
			return nil, nil, err
		}
		confirm = placed
		return view, func() { placed(false) }, nil
	}
	o.Placed = func() {
		if confirm != nil {
			confirm(true)
		}
	}
	return launch.Run(o.Options)
}

// checkParent is the parent cgroup path, relative to each hierarchy's
// root and never above it.
func checkParent(p string) (string, error) {
	clean := strings.TrimPrefix(filepath.Clean("/"+p), "/")
	if clean == "" || strings.ContainsAny(p, "\n\x00") || p != strings.TrimPrefix(p, "../") || strings.Contains("/"+p+"/", "/../") {
		return "", usageError{fmt.Sprintf("--parent %q: a cgroup path below the hierarchy roots, without .. or newline", p)}
	}
	return clean, nil
}

// userNameRE is the daemon's name for a user's parent cgroup.
var userNameRE = regexp.MustCompile(`^user-[0-9]+$`)

// checkName refuses a container name that is no plain cgroup name.
func checkName(n string) error {
	if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\n\x00") || len(n) > 64 {
		return usageError{fmt.Sprintf("--name %q: a name is up to 64 bytes, without / or newline", n)}
	}
	return nil
}

// parseBytes parses 67108864, 64K, 64M, 1G.
func parseBytes(s string) (int64, error) { return users.ParseBytes(s) }

// runCmd is `cgfs run`.
func runCmd(o runOptions, log *slog.Logger) (int, error) {
	defer startProfile()()
	if os.Geteuid() != 0 {
		return runAsUser(o, log)
	}
	if o.delegated && o.Delegated == "" {
		return 0, usageError{"--delegated is for an ordinary user (root's containers are made below --parent)"}
	}
	// The server of a user's delegated cgroup (root of the user's own
	// user namespace) asks no daemon and answers no cgfs exec.
	delegated := o.Delegated != ""
	procs, err := proc.Open("/proc")
	if err != nil {
		return 0, err
	}
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, procs)
	if o.metrics != "" {
		ln, err := listenMetrics(o.metrics, net.Listen, reg, m, log)
		if err != nil {
			return 0, err
		}
		defer ln.Close()
	}
	o.Log, o.Stderr = log, os.Stderr
	var views *serve.Views
	daemonServes := false
	// What the container may hold of this process: its view (unless the
	// daemon serves it) and its nested runtimes' views together.
	budget := serve.NewBudget(serve.Bounds{})
	// confirm tells the daemon whether the init put its view in place.
	var confirm func(ok bool)
	o.Placed = func() {
		if confirm != nil {
			confirm(true)
		}
	}
	o.View = func(init int) (*os.File, func(), error) {
		// The daemon serves the view when one runs; else this process.
		a, view, placed, err := control.AskConfirm(control.DaemonSocket(), control.Request{Op: "attach", Name: o.Name, Owner: init})
		if delegated {
			err = control.ErrNotRunning
		}
		if err == nil {
			if err := a.Err(); err != nil {
				placed(false)
				return nil, nil, err
			}
			daemonServes = true
			log.Info("the daemon serves the view", "name", o.Name)
			// The daemon drops the view with the container, or at once
			// if the init does not put it in place.
			confirm = placed
			return view, func() { placed(false) }, nil
		}
		if !errors.Is(err, control.ErrNotRunning) {
			log.Warn("asking the daemon; serving the view here", "err", err)
		}
		w, err := host.NewWatcher()
		if err != nil {
			return nil, nil, err
		}
		so := serve.Options{Name: o.Name, Owner: init, Log: log, Watcher: w, Budget: budget}
		if delegated {
			// Its cgroup v2 cgroup alone (on a hybrid host too: the
			// user owns nothing on v1).
			so.HostDir = filepath.Join(o.Delegated, o.Name)
		}
		views, err = serve.Open(procs, so)
		if err != nil {
			w.Close()
			return nil, nil, err
		}
		served, err := views.Serve(access.NewIdentifier(procs), m.For(o.Name))
		if err != nil {
			views.Close()
			w.Close()
			return nil, nil, err
		}
		unlist := m.Add(views.MetricsView(o.Name, served))
		return served.Take(), func() { unlist(); served.Stop(); views.Close(); w.Close() }, nil
	}
	// Views for the container's nested runtimes, served here.
	w, err := host.NewWatcher()
	if err != nil {
		return 0, err
	}
	defer w.Close()
	// The container's root is host id o.Map.HostID: what host root owns
	// shows as its in the container's view, and in the nested ones.
	root := uint32(o.Map.HostID)
	nested := serve.NewNested(procs, serve.Options{Name: o.Name, Log: log, Watcher: w, Budget: budget,
		RootShownAs: [2]uint32{root, root}, Outer: func() *serve.Views {
			return views // nil while the daemon serves the container
		}}, m.For(o.Name))
	defer nested.Close()
	o.Nested = nested.ServeDone
	o.Notifications = func(count func() uint64) {
		m.AddSource(metrics.Source{Name: "cgfs_seccomp_notifications_total", Counter: true,
			Help: "Seccomp notifications of the container's processes its agents handled.",
			Read: func() float64 { return float64(count()) }})
	}
	o.Started = func(init int, agents func(*os.File)) func() {
		if daemonServes || delegated {
			return func() {} // cgfs exec asks the daemon, or finds none
		}
		// cgfs exec finds the container here.
		ln, err := control.Serve(control.RunSocket(o.Name), func(req control.Request, _ int) (control.Answer, *os.File) {
			switch req.Op {
			case "list":
				return control.Answer{Views: []control.ViewInfo{{Name: o.Name, Owner: init}}}, nil
			case "agent":
				if req.Name != o.Name || req.File == nil {
					if req.File != nil {
						req.File.Close()
					}
					return control.Answer{Error: "agent needs this container's name and a seccomp listener", Usage: true}, nil
				}
				agents(req.File)
				return control.Answer{}, nil
			case "lookup", "enter":
				if req.Name != o.Name {
					return control.Answer{Error: "no container " + req.Name + " here", Usage: true}, nil
				}
				if req.Op == "enter" {
					if err := views.Enter(req.Pid); err != nil {
						return control.Answer{Error: err.Error()}, nil
					}
				}
				return control.Answer{Init: init}, nil
			}
			return control.Answer{Error: "cgfs run answers list, lookup and enter, not " + req.Op, Usage: true}, nil
		}, log)
		if err != nil {
			log.Error("cgfs exec will not find the container", "err", err)
			return func() {}
		}
		return func() {
			ln.Close()
			_ = os.Remove(control.RunSocket(o.Name))
		}
	}
	return launch.Run(o.Options)
}
