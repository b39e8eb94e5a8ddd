package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	osuser "os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/daemon"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/keeper"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

const daemonUsage = `usage: cgfs daemon [--keep] [--socket PATH] [--seccomp-socket PATH] [--lxc-seccomp-socket PATH] [--metrics ADDR]
                   [--max-open-files N] [--max-nested-views N] [--max-relay-watches N] [--max-pid-helpers N] [--max-in-flight N]
       cgfs attach --name N --owner PID [--cgroup DIR] [--shared NAME]... --target PATH [--in PID] [--socket PATH]
       cgfs detach [--socket PATH] NAME
       cgfs list [--socket PATH]
       cgfs upgrade [--socket PATH]

The daemon serves many containers' views, each on its own FUSE mount.
attach asks it for a new view of the container PID is in and puts it at
PATH in this process's mount namespace (or in the mount namespace of
process --in, through nsenter); detach stops serving one; list lists
them. Only root may ask. OCI runtimes hand the daemon their containers'
seccomp listeners at --seccomp-socket (runc's seccomp.listenerPath), LXC
its notifications at --lxc-seccomp-socket (lxc.seccomp.notify.proxy);
the daemon answers them as cgfs run's agent does.

The --max-* flags bound what each container may hold of the daemon, its
own view and its nested runtimes' views together: files open (ENFILE
beyond), nested views (ENOSPC), events files relayed to its inotify
watchers, helpers in its pid namespaces (EAGAIN), requests served at
once (more wait).

With --keep a small keeper process runs the daemon and holds a copy of
every view's FUSE connection and every seccomp listener: a daemon that
dies is replaced at once, and no container's mount goes away. upgrade
(or SIGHUP to the keeper) starts the cgfs binary now installed as a new
daemon and hands everything over to it; requests wait for the pause (it
says how long) and none fails.
`

// daemonCmd is `cgfs daemon`: it serves views until SIGINT or SIGTERM.
func daemonCmd(args []string, log *slog.Logger, stderr io.Writer) error {
	fl := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, daemonUsage) }
	socket := fl.String("socket", control.DaemonSocket(), "listen on the unix socket `PATH`")
	metricsAddr := fl.String("metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics")
	seccompSocket := fl.String("seccomp-socket", "", "take OCI runtimes' seccomp listeners (runc's seccomp.listenerPath) at `PATH` (default: seccomp.sock beside --socket)")
	lxcSocket := fl.String("lxc-seccomp-socket", "", "answer LXC's seccomp notifications (lxc.seccomp.notify.proxy) at `PATH` (default: lxc-seccomp.sock beside --socket)")
	keep := fl.Bool("keep", false, "run under a keeper that holds every connection across restarts and upgrades")
	userSocket := fl.String("user-socket", "", "serve unprivileged users' own containers at the unix socket `PATH` (e.g. /run/cgfs/user.sock; none without it)")
	userGroup := fl.String("user-group", "", "only members of group `NAME` may use the user socket (default: every user)")
	userPolicy := fl.String("user-policy", "/etc/cgfs/users.conf", "the admin's limits and bounds per user, a root-owned `FILE` (missing: the defaults)")
	userParent := fl.String("user-parent", "cgfs", "the `cgroup` below every hierarchy's root that holds the users' (user-UID/NAME)")
	bounds, checkBounds := boundsFlags(fl)
	if err := fl.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if err := checkBounds(); err != nil {
		return err
	}
	if *keep && os.Getenv(keeper.Env) == "" {
		return runKeeper(args, log)
	}
	link, err := keeper.Dial()
	if err != nil {
		return err
	}
	procs, err := proc.Open("/proc")
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	w, err := host.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	m := newMetrics(reg, procs)
	d := daemon.New(procs, m, w, *bounds, log)
	// handed: the next server serves everything, sockets included.
	handed := false
	defer func() {
		if !handed {
			d.Close()
		}
	}()
	if *userSocket != "" {
		// Before what a keeper kept: users' containers among it.
		policy, err := users.Load(*userPolicy)
		if err != nil {
			return usageError{fmt.Sprintf("--user-policy: %v", err)}
		}
		parent, err := checkParent(*userParent)
		if err != nil {
			return err
		}
		d.ServeUsers(daemon.UserConfig{Policy: policy, Parent: parent})
	}
	if link != nil {
		if err := d.TakeUp(link); err != nil {
			return err
		}
	}
	var listeners []io.Closer
	d.SetListeners(func() {
		for _, l := range listeners {
			l.Close()
		}
	})
	// Under a keeper every socket is one it holds a copy of, so that the
	// next server listens on it too (daemon.Listen).
	unixListen := func(network, path string) (*net.UnixListener, error) {
		ln, err := d.Listen(network, path)
		if err != nil {
			return nil, err
		}
		return ln.(*net.UnixListener), nil
	}
	if *metricsAddr != "" {
		ln, err := listenMetrics(*metricsAddr, d.Listen, reg, m, log)
		if err != nil {
			return err
		}
		defer ln.Close()
		listeners = append(listeners, ln)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	ln, err := unixListen("unixpacket", *socket)
	if err != nil {
		return err
	}
	control.ServeOn(ln, d.Handle, log)
	listeners = append(listeners, ln)
	defer func() {
		ln.Close()
		if !handed {
			_ = os.Remove(*socket)
		}
	}()
	if *seccompSocket == "" {
		*seccompSocket = filepath.Join(filepath.Dir(*socket), "seccomp.sock")
	}
	sln, err := unixListen("unix", *seccompSocket)
	if err != nil {
		return fmt.Errorf("--seccomp-socket %s: %w", *seccompSocket, err)
	}
	listeners = append(listeners, sln)
	defer func() {
		sln.Close()
		if !handed {
			_ = os.Remove(*seccompSocket)
		}
	}()
	if err := d.ServeSeccomp(sln); err != nil {
		return fmt.Errorf("--seccomp-socket %s: %w", *seccompSocket, err)
	}
	if *lxcSocket == "" {
		*lxcSocket = filepath.Join(filepath.Dir(*socket), "lxc-seccomp.sock")
	}
	lln, err := unixListen("unixpacket", *lxcSocket)
	if err != nil {
		return fmt.Errorf("--lxc-seccomp-socket %s: %w", *lxcSocket, err)
	}
	lxc, err := d.ServeLXCProxy(lln)
	if err != nil {
		lln.Close()
		return fmt.Errorf("--lxc-seccomp-socket %s: %w", *lxcSocket, err)
	}
	listeners = append(listeners, lxc)
	defer func() {
		lxc.Close()
		if !handed {
			_ = os.Remove(*lxcSocket)
		}
	}()
	if *userSocket != "" {
		uln, err := unixListen("unixpacket", *userSocket)
		if err != nil {
			return fmt.Errorf("--user-socket %s: %w", *userSocket, err)
		}
		if err := openUserSocket(*userSocket, *userGroup); err != nil {
			uln.Close()
			return fmt.Errorf("--user-socket %s: %w", *userSocket, err)
		}
		control.ServeUsers(uln, d.HandleUser, control.UserBounds{Conns: 8, Rate: 100, Burst: 200, Refused: d.UserRefused, Owner: d.SubordinateOwner}, log)
		listeners = append(listeners, uln)
		defer func() {
			uln.Close()
			if !handed {
				_ = os.Remove(*userSocket)
			}
		}()
		log.Info("serving users", "socket", *userSocket, "group", *userGroup, "policy", *userPolicy)
	}
	if n := d.Restore(activation.Files(true)); n > 0 {
		log.Info("took up seccomp listeners kept for this server", "listeners", n)
	}
	d.Listening()
	log.Info("daemon listening", "socket", *socket, "seccomp", *seccompSocket, "lxc-seccomp", *lxcSocket)
	_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyReady) // Type=notify
	select {
	case s := <-sig:
		log.Info("stopping", "signal", s.String(), "views", len(d.List()))
		_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	case <-d.HandedOver():
		handed = true
		log.Info("handed over to the next server")
	}
	return nil
}

// openUserSocket lets users reach the socket at path: every user, or
// the members of group alone; its directory is made passable (the
// root-only sockets beside it stay 0600).
func openUserSocket(path, group string) error {
	mode, gid := os.FileMode(0o666), -1
	if group != "" {
		g, err := osuser.LookupGroup(group)
		if err != nil {
			return err
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return err
		}
		mode = 0o660
	}
	if err := os.Chown(path, 0, gid); err != nil {
		return err
	}
	if err := os.Chmod(path, mode); err != nil {
		return err
	}
	return os.Chmod(filepath.Dir(path), 0o711)
}

// runKeeper is `cgfs daemon --keep`: a keeper that runs the daemon (the
// binary installed at its path, as it is when each one starts) with the
// other arguments, and keeps its connections (see package keeper).
func runKeeper(args []string, log *slog.Logger) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var rest []string
	for _, a := range args {
		if a != "--keep" && a != "-keep" {
			rest = append(rest, a)
		}
	}
	k := &keeper.Keeper{Log: log, Command: func() *exec.Cmd {
		cmd := exec.Command(exe, append([]string{"daemon"}, rest...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd
	}}
	return k.Run()
}

// attachOptions is what attach asks.
type attachOptions struct {
	req    control.Request
	target string
	in     int
	socket string
	// root, with in, is the directory target is resolved in, in that
	// mount namespace: a container's root file system (the OCI hook's,
	// before pivot_root). "" is the namespace's own root.
	root string
}

func parseAttach(args []string, stderr io.Writer) (attachOptions, error) {
	var o attachOptions
	fl := flag.NewFlagSet("attach", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, daemonUsage) }
	fl.StringVar(&o.req.Name, "name", "", "the view's `name`")
	fl.IntVar(&o.req.Owner, "owner", 0, "`pid` of a process of the container")
	fl.StringVar(&o.req.Cgroup, "cgroup", "", "serve the cgroup v2 `DIR` (default: the owner's cgroups)")
	fl.Var((*names)(&o.req.Shared), "shared", "serve hierarchy `NAME` read-only (repeatable)")
	fl.StringVar(&o.target, "target", "", "where to put the view, `PATH`")
	fl.IntVar(&o.in, "in", 0, "put it in the mount namespace of process `PID`")
	fl.StringVar(&o.socket, "socket", control.DaemonSocket(), "the daemon's socket `PATH`")
	if err := fl.Parse(args); err != nil {
		return o, usageError{err.Error()}
	}
	if o.req.Name == "" || o.req.Owner <= 0 || o.target == "" {
		fl.Usage()
		return o, usageError{"attach needs --name, --owner and --target"}
	}
	if err := checkName(o.req.Name); err != nil {
		return o, err
	}
	o.req.Op = "attach"
	return o, nil
}

// attach asks the daemon for a view and puts it in place, and tells the
// daemon it did: a view not put in place is dropped (its name free).
func attach(o attachOptions) error {
	a, view, placed, err := control.AskConfirm(o.socket, o.req)
	if err != nil {
		if errors.Is(err, control.ErrNotRunning) {
			return usageError{fmt.Sprintf("the cgfs daemon is not running (%v): start it with cgfs daemon", err)}
		}
		return err
	}
	ok := false
	defer func() { placed(ok) }()
	if err := a.Err(); err != nil {
		return err
	}
	if view == nil {
		return errors.New("the daemon sent no view")
	}
	defer view.Close()
	if o.in == 0 {
		err = moveMount(view, o.target)
	} else {
		err = moveMountIn(view, o.in, o.root, o.target)
	}
	ok = err == nil
	return err
}

// moveMount puts the detached mount view at target in this process's
// mount namespace.
func moveMount(view *os.File, target string) error {
	if err := unix.MoveMount(int(view.Fd()), "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("putting the view at %s: %w", target, err)
	}
	return nil
}

// moveMountIn puts view at target in the mount namespace of process
// pid, target resolved as the container will see it: beneath root (or
// the namespace's root), every symbolic link in it taken as relative to
// that root (openat2 RESOLVE_IN_ROOT), so an image's symlink never leads
// the mount out of its root file system, then moved there by descriptor.
// A thread may enter another mount namespace once it shares its root and
// working directory with no other (unshare(CLONE_FS)); this one does,
// makes the move there, and is never used again (its goroutine stays
// locked to it, so the thread ends with it).
func moveMountIn(view *os.File, pid int, root, target string) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return fmt.Errorf("the mount namespace of %d: %w", pid, err)
	}
	defer ns.Close()
	err = proc.InNamespace(int(ns.Fd()), unix.CLONE_NEWNS, func() error { return moveMountInRoot(view, root, target) })
	if err != nil {
		return fmt.Errorf("in the mount namespace of %d: %w", pid, err)
	}
	return nil
}

// moveMountInRoot puts view at target resolved in root ("" for "/") of
// this thread's mount namespace, as a process whose root is root would
// find it.
func moveMountInRoot(view *os.File, root, target string) error {
	if root == "" {
		root = "/"
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("the root file system %s: %w", root, err)
	}
	defer unix.Close(rfd)
	rel := strings.TrimPrefix(filepath.Clean("/"+target), "/")
	if rel == "" {
		rel = "."
	}
	tfd, err := unix.Openat2(rfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return fmt.Errorf("putting the view at /%s inside %s (symbolic links resolved inside it): %w", rel, root, err)
	}
	defer unix.Close(tfd)
	if err := unix.MoveMount(int(view.Fd()), "", tfd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("putting the view at /%s inside %s: %w", rel, root, err)
	}
	return nil
}

// simpleCmd is `cgfs detach`, `cgfs list` and `cgfs upgrade` (the
// daemon's keeper starts the cgfs now installed, which takes every view
// and listener over).
func simpleCmd(op string, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet(op, flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, daemonUsage) }
	socket := fl.String("socket", control.DaemonSocket(), "the daemon's socket `PATH`")
	if err := fl.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	req := control.Request{Op: op}
	if op == "detach" {
		if fl.NArg() != 1 {
			return usageError{"detach NAME"}
		}
		req.Name = fl.Arg(0)
	}
	a, _, err := control.Ask(*socket, req)
	if errors.Is(err, control.ErrNotRunning) {
		return usageError{fmt.Sprintf("the cgfs daemon is not running (%v)", err)}
	}
	if err != nil {
		return err
	}
	if err := a.Err(); err != nil {
		return err
	}
	for _, v := range a.Views {
		fmt.Fprintf(stdout, "%s\t%d\n", v.Name, v.Owner)
	}
	if op == "upgrade" {
		fmt.Fprintf(stdout, "upgraded: the views waited %d µs\n", a.PauseMicros)
	}
	return nil
}

// ociState is what an OCI runtime gives a hook on stdin.
type ociState struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Bundle string `json:"bundle"`
}

// ociHookCmd is `cgfs oci-hook`, a createRuntime hook: it runs in the
// runtime's namespaces as its root once the container's namespaces
// exist, before pivot_root, and puts a view of the container's cgroups at
// the root file system's /sys/fs/cgroup in the container's mount
// namespace, resolved inside the root file system as the container will
// see it (the image's symbolic links lead nowhere outside it).
func ociHookCmd(args []string, stdin io.Reader) error {
	socket := control.DaemonSocket()
	if len(args) == 2 && args[0] == "--socket" {
		socket = args[1]
	}
	var st ociState
	if err := json.NewDecoder(stdin).Decode(&st); err != nil {
		return fmt.Errorf("the container's state on stdin: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(st.Bundle, "config.json"))
	if err != nil {
		return err
	}
	var cfg ociConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s/config.json: %w", st.Bundle, err)
	}
	rootfs := cfg.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(st.Bundle, rootfs)
	}
	if !hostRoot() {
		// A rootless runtime's hook runs as its user (rootless podman's
		// as root of the user's own user namespace): the daemon's user
		// socket makes the container's cgroups.
		lim, err := cfg.limits()
		if err != nil {
			return err
		}
		name := st.ID
		if n, ok := cfg.Annotations["cgfs.name"]; ok {
			name = n
		}
		return hookAsUser(name, st.Pid, rootfs, "/sys/fs/cgroup", lim)
	}
	return attach(attachOptions{
		req:    control.Request{Op: "attach", Name: st.ID, Owner: st.Pid, Label: podLabel(cfg.Annotations)},
		target: "/sys/fs/cgroup",
		root:   rootfs,
		in:     st.Pid,
		socket: socket,
	})
}

// podLabel is a Kubernetes container's name in metrics,
// NAMESPACE/POD/CONTAINER, from what containerd's CRI (or CRI-O) writes
// into its config; "" for a container of no pod.
func podLabel(ann map[string]string) string {
	for _, keys := range [][3]string{
		{"io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.container-name"},
		{"io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.container.name"},
	} {
		ns, pod, ctr := ann[keys[0]], ann[keys[1]], ann[keys[2]]
		if ns != "" && pod != "" && ctr != "" {
			return ns + "/" + pod + "/" + ctr
		}
	}
	return ""
}

// hostRoot tells whether this process is root in the host's user
// namespace (the initial one, which maps every id to itself), not an
// ordinary user nor root of a user namespace of an ordinary user's.
func hostRoot() bool {
	if os.Geteuid() != 0 {
		return false
	}
	b, err := os.ReadFile("/proc/self/uid_map")
	return err == nil && strings.Join(strings.Fields(string(b)), " ") == "0 0 4294967295"
}

// ociConfig is what cgfs reads of an OCI bundle's config.json: the root
// file system, and the limits (linux.resources, and the annotations
// cgfs.memory, cgfs.pids and cgfs.cpus, which a rootless runtime passes on
// where it cannot set limits itself).
type ociConfig struct {
	Root struct {
		Path string `json:"path"`
	} `json:"root"`
	Annotations map[string]string `json:"annotations"`
	Linux       struct {
		Resources struct {
			Memory struct {
				Limit *int64 `json:"limit"`
			} `json:"memory"`
			Pids struct {
				Limit int64 `json:"limit"`
			} `json:"pids"`
			CPU struct {
				Quota  *int64  `json:"quota"`
				Period *uint64 `json:"period"`
			} `json:"cpu"`
		} `json:"resources"`
	} `json:"linux"`
}

// limits are the container's limits the config asks for: the
// annotations over linux.resources.
func (c ociConfig) limits() (cgroups.Limits, error) {
	var l cgroups.Limits
	r := c.Linux.Resources
	if r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		l.Memory = *r.Memory.Limit
	}
	if r.Pids.Limit > 0 {
		l.Pids = r.Pids.Limit
	}
	if r.CPU.Quota != nil && *r.CPU.Quota > 0 {
		period := uint64(100000)
		if r.CPU.Period != nil && *r.CPU.Period > 0 {
			period = *r.CPU.Period
		}
		l.CPUs = float64(*r.CPU.Quota) / float64(period)
	}
	var err error
	if v, ok := c.Annotations["cgfs.memory"]; ok {
		if l.Memory, err = users.ParseBytes(v); err != nil {
			return l, usageError{fmt.Sprintf("annotation cgfs.memory=%s: %v", v, err)}
		}
	}
	if v, ok := c.Annotations["cgfs.pids"]; ok {
		if l.Pids, err = strconv.ParseInt(v, 10, 64); err != nil || l.Pids < 0 {
			return l, usageError{fmt.Sprintf("annotation cgfs.pids=%s: a number of at least 0", v)}
		}
	}
	if v, ok := c.Annotations["cgfs.cpus"]; ok {
		if l.CPUs, err = strconv.ParseFloat(v, 64); err != nil || l.CPUs < 0 || math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0) {
			return l, usageError{fmt.Sprintf("annotation cgfs.cpus=%s: a number of CPUs of at least 0", v)}
		}
	}
	return l, nil
}

// lxcHookCmd is `cgfs lxc-hook`, an lxc.hook.start-host hook: it runs in
// the host's namespaces as root once the container is set up, just
// before its init starts (LXC_PID), and puts a view of the container's
// cgroups at /sys/fs/cgroup in the container's mount namespace.
func lxcHookCmd(args []string) error {
	fl := flag.NewFlagSet("lxc-hook", flag.ContinueOnError)
	socket := fl.String("socket", control.DaemonSocket(), "the daemon's `socket` (root's containers)")
	limits := limitFlags(fl)
	// LXC puts the container's name, "lxc" and the hook's kind after
	// what the configuration's line gives.
	if err := fl.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	lim, err := limits()
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(os.Getenv("LXC_PID"))
	if err != nil || pid <= 0 {
		return usageError{"cgfs lxc-hook is an lxc.hook.start-host hook: LXC_PID is not set"}
	}
	name := os.Getenv("LXC_NAME")
	if !hostRoot() {
		// An unprivileged container's hook runs as its user.
		// LXC skips its cgroup keys where it has no cgroup; the
		// hook's flags go over them.
		if p := os.Getenv("LXC_CONFIG_FILE"); p != "" {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			conf, err := lxcLimits(f)
			f.Close()
			if err != nil {
				return err
			}
			lim = over(conf, lim)
		}
		return hookAsUser("lxc-"+name, pid, "", "/sys/fs/cgroup", lim)
	}
	if lim != (cgroups.Limits{}) {
		return usageError{"--memory, --pids and --cpus are for a user's container: LXC sets root's containers' limits from lxc.cgroup2.* itself"}
	}
	return attach(attachOptions{
		req:    control.Request{Op: "attach", Name: "lxc-" + name, Owner: pid},
		target: "/sys/fs/cgroup",
		in:     pid,
		socket: *socket,
	})
}
