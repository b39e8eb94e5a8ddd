package launch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/agent"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/mimic"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/layout"
)

// IDMap maps the container's ids 0.. onto Count host ids from HostID.
type IDMap struct{ HostID, Count int }

// Net is a container's network namespace.
type Net string

const (
	// NetOwn (the default): a network namespace of its own with its
	// loopback up and nothing else, as unshare -n gives (and docker's
	// --network none). Nothing the host listens on (the daemon's
	// metrics among them) is reachable, and a sysfs of the container's
	// own may be mounted (it needs a network namespace the container's
	// user namespace owns).
	NetOwn Net = "own"
	// NetHost shares the host's network namespace.
	NetHost Net = "host"
)

// Options is what cgfs run starts.
type Options struct {
	Name   string
	Parent string // the container's cgroup is Parent/Name below each hierarchy's root
	Limits cgroups.Limits
	Map    IDMap
	Rootfs string   // "" shows the host's file system
	Net    Net      // the network namespace
	Cmd    []string // what runs as the container's init
	Log    *slog.Logger
	// Stderr is told why the container's init was killed, where its
	// cgroups' events say (nil: nowhere).
	Stderr io.Writer
	// View gives the container its view once its init exists: a
	// detached mount to move onto /sys/fs/cgroup, and a stop to call
	// when the container is gone.
	View func(init int) (mount *os.File, stop func(), err error)
	// Placed, if set, is called once the init put the view in place
	// (View may set it).
	Placed func()
	// Started is told the container init's host pid once it runs, and
	// how to answer the seccomp listener of a process that joins the
	// container later (cgfs exec); its return is called at the end.
	Started func(init int, agents func(listener *os.File)) (end func())
	// Nested serves a view of the cgroups of host thread tid (a
	// process of the container that mounts cgroupfs, allowed to as the
	// kernel allows it), detached; it is dropped when its mounts are
	// gone. Nil lets the kernel answer those mounts.
	Nested func(tid int) (view *os.File, done <-chan struct{}, err error)
	// Notifications, if set, is given a count of the seccomp
	// notifications the container's agents handled, for the metrics.
	Notifications func(count func() uint64)
	// User, for an unprivileged caller, is the daemon that makes the
	// container's cgroups and puts its init in them; nil: this process
	// (host root) does. Map is then ignored for UserMaps.
	User UserDaemon
	// Delegated, when set, is a cgroup v2 directory delegated to the
	// ordinary user this process serves as root of a user namespace of
	// its own (cgfs run with no daemon): the container's cgroup is
	// made there alone (cgroups.MakeDelegated), on the v2 hierarchy
	// mounted at DelegatedMount.
	Delegated, DelegatedMount string
	// UserMaps are the container's id maps for a user, written by
	// shadow's newuidmap and newgidmap (its own id and its subordinate
	// ranges).
	UserMaps *IDMaps
}

// UserDaemon is what the cgfs daemon does for an unprivileged user's
// container (its user socket).
type UserDaemon interface {
	// Create makes the container's cgroups, limited within the admin's
	// policy.
	Create(name string, lim cgroups.Limits) error
	// Update sets the container's limits anew, within the policy.
	Update(lim cgroups.Limits) error
	// Adopt puts the container's init (the host process init, paused
	// before it runs anything) into them: the user proves it its own
	// with descriptors it opens.
	Adopt(init int) error
	// Agent hands a seccomp listener of the container's processes to
	// the daemon, which answers it.
	Agent(listener *os.File) error
	// Remove ends the container and removes its cgroups.
	Remove() error
}

// IDMaps are a user's container's id maps: container id, host id,
// count, as newuidmap takes them.
type IDMaps struct{ UID, GID []syscall.SysProcIDMap }

// Run starts the container and waits for it; it returns the command's
// exit status (128+N for a signal N), and removes what it made.
//
// The task limit (Limits.Pids) is set once the init is about to become
// the command, never while cgfs's own init runs: its Go runtime's
// threads are tasks of the container's cgroup (the kernel counts them
// when the init joins, and refuses it more), and the exec leaves one.
// So pids.max 1 lets the command run alone, as the kernel would.
func Run(o Options) (code int, err error) {
	// Caught from the start, so that a signal while the container is
	// made does not end cgfs run before it removes what it made; they
	// reach the container once it runs.
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sig)
	procs, err := proc.Open("/proc")
	if err != nil {
		return 0, err
	}
	var cg *cgroups.Set
	var mounts []mimic.Mount
	atStart := o.Limits
	atStart.Pids = 0 // set before the exec (setTaskLimit)
	if o.User == nil {
		if o.Delegated != "" {
			cg, err = cgroups.MakeDelegated(o.DelegatedMount, o.Delegated, o.Name, atStart)
		} else {
			cg, err = cgroups.Make(procs, o.Parent, o.Name, atStart)
		}
		if err != nil {
			return 0, err
		}
		mounts = cg.Mounts
		defer func() {
			if err := cg.Remove(); err != nil {
				o.Log.Error("removing the container's cgroups", "err", err)
			}
		}()
	} else {
		if mounts, err = hostMounts(procs); err != nil {
			return 0, err
		}
		if err := o.User.Create(o.Name, atStart); err != nil {
			return 0, err
		}
		defer func() {
			if err := o.User.Remove(); err != nil {
				o.Log.Error("removing the container", "err", err)
			}
		}()
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	conn, child := os.NewFile(uintptr(fds[0]), "init"), os.NewFile(uintptr(fds[1]), "init")
	defer conn.Close()
	// A terminal on stdin gets the container one of its own: from its
	// own devpts with --rootfs (the init makes it and hands back its
	// master), else from the host's.
	onTerminal := IsTerminal(os.Stdin)
	console := onTerminal && o.Rootfs != ""
	cfg, _ := json.Marshal(initConfig{Name: o.Name, Rootfs: o.Rootfs, Cmd: o.Cmd, Env: containerEnv(), Mounts: mounts,
		OwnNet: o.Net != NetHost, Console: console, WaitMaps: o.User != nil})
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = []string{initEnv + "=" + string(cfg)}
	cmd.ExtraFiles = []*os.File{child}
	attr := &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID |
			syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: o.Map.HostID, Size: o.Map.Count}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: o.Map.HostID, Size: o.Map.Count}},
		GidMappingsEnableSetgroups: true,
		Credential:                 &syscall.Credential{Uid: 0, Gid: 0},
		Pdeathsig:                  syscall.SIGKILL,
	}
	if o.Net != NetHost {
		attr.Cloneflags |= syscall.CLONE_NEWNET
	}
	if o.User != nil {
		// A user maps ids with newuidmap once the init exists, and the
		// daemon puts it into its cgroups.
		attr.UidMappings, attr.GidMappings, attr.Credential = nil, nil, nil
		attr.GidMappingsEnableSetgroups = false
	} else if cg.V2 != "" {
		// cgroup v2 places the init at clone time; v1 ones after.
		fd, err := unix.Open(cg.V2, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		defer unix.Close(fd)
		attr.UseCgroupFD, attr.CgroupFD = true, fd
	}
	var term *terminal
	switch {
	case console:
		attr.Setsid = true // the init makes its console its controlling terminal
		defer func() {
			if term != nil {
				term.close()
			}
		}()
	case onTerminal:
		if term, err = newTerminal(o.Map.HostID); err != nil {
			return 0, err
		}
		defer term.close()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = term.slave, term.slave, term.slave
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
	default:
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	}
	cmd.SysProcAttr = attr
	release, err := StartKept(cmd)
	defer release()
	if err != nil {
		child.Close()
		return 0, fmt.Errorf("starting the container: %w", err)
	}
	child.Close()
	init := cmd.Process.Pid
	// running: the init became the command (or died after it said it
	// would); until then, a failure ends the init, and one the init's
	// death explains is said as that.
	running, execing := false, false
	defer func() {
		if !running {
			ws := endInit(cmd, conn)
			if err != nil && ws.Signaled() {
				err = o.killedAtStart(ws.Signal(), cg, err)
			}
		}
	}()
	if o.User == nil {
		if err := cg.JoinV1(init); err != nil {
			return 0, err
		}
	} else {
		if err := MapIDs(init, o.UserMaps); err != nil {
			return 0, err
		}
		if err := o.User.Adopt(init); err != nil {
			return 0, err
		}
		// Mapped and in its cgroups: the init goes on as root of its
		// namespaces.
		if _, err := conn.Write([]byte("mapped")); err != nil {
			return 0, fmt.Errorf("starting the container: %w", err)
		}
	}
	mount, stop, err := o.View(init)
	if err != nil {
		return 0, err
	}
	defer stop()
	var viewStat unix.Stat_t
	if err := unix.Fstat(int(mount.Fd()), &viewStat); err != nil {
		mount.Close()
		return 0, err
	}
	// The init puts the view in place, hands over its seccomp listener
	// and execs the command; the exec closes its end, an error comes as
	// a message.
	if err := unix.Sendmsg(int(conn.Fd()), []byte("view"), unix.UnixRights(int(mount.Fd())), nil, 0); err != nil {
		mount.Close()
		return 0, fmt.Errorf("handing the view to the container: %w", err)
	}
	mount.Close()
	var (
		agentCfg agent.Config
		agentsMu sync.Mutex
		agents   []*agent.Agent
	)
	defer func() {
		agentsMu.Lock()
		defer agentsMu.Unlock()
		for _, a := range agents {
			a.Close()
		}
	}()
	serveAgent := func(listener *os.File) {
		if o.User != nil {
			// The daemon answers a user's container (this process may
			// mount nothing).
			if err := o.User.Agent(listener); err != nil {
				o.Log.Error("the daemon does not answer the container's seccomp listener", "err", err)
			}
			listener.Close()
			return
		}
		agentsMu.Lock()
		defer agentsMu.Unlock()
		agents = append(agents, agent.Serve(listener, agentCfg))
	}
	if o.Notifications != nil {
		o.Notifications(func() uint64 {
			agentsMu.Lock()
			defer agentsMu.Unlock()
			var n uint64
			for _, a := range agents {
				n += a.Stats().Handled()
			}
			return n
		})
	}
	for {
		msg, listener, err := readMsg(conn)
		if err == nil && msg == "console" && listener != nil && console && term == nil {
			term = terminalOf(listener)
			continue
		}
		if err == nil && msg == "agent" && listener != nil {
			magic := mimic.NewSet(mounts)
			magic.Add(viewStat.Dev)
			cfg := agent.Config{Magic: magic.Magic, Log: o.Log}
			if o.Nested != nil {
				serve := func(c agent.Caller) (*os.File, <-chan struct{}, error) { return o.Nested(c.Tid) }
				cfg.Mounter = (&mimic.Nester{Serve: serve, Ident: access.NewIdentifier(procs), Set: magic, Mounts: mounts, Log: o.Log}).Mount
			}
			agentCfg = cfg
			serveAgent(listener)
			if err := o.setTaskLimit(cg); err != nil {
				return 0, err
			}
			if _, err := conn.Write([]byte("go")); err != nil {
				return 0, fmt.Errorf("starting the container: %w", err)
			}
			continue
		}
		if err == nil && msg == "exec" {
			// The init becomes the command: its end from here on is the
			// command's, unless the exec fails (it says so).
			execing = true
			continue
		}
		if err != nil || msg != "" {
			if err == nil {
				err = errors.New(msg)
			}
			return 0, fmt.Errorf("starting the container: %w", err)
		}
		break
	}
	if !execing {
		// The init ended without a word: it was killed before it could
		// say it would become the command.
		return 0, errors.New("starting the container: the container's init ended before it ran the command")
	}
	running = true
	if o.Placed != nil {
		o.Placed()
	}
	if o.Started != nil {
		defer o.Started(init, serveAgent)()
	}
	stopSignals := forwardSignals(sig, cmd.Process, o.Log)
	defer stopSignals()
	if term != nil {
		term.copy()
	}
	werr := cmd.Wait()
	if ee := (*exec.ExitError)(nil); errors.As(werr, &ee) && cg != nil {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && o.Stderr != nil {
			if why := hitsText(hitsFor(ws.Signal(), cg)); why != "" {
				fmt.Fprintf(o.Stderr, "cgfs run: the container's init was killed (%s): %s\n", unix.SignalName(ws.Signal()), why)
			}
		}
	}
	return ExitStatus(werr)
}

// setTaskLimit sets the container's task limit, if it has one (see Run).
func (o *Options) setTaskLimit(cg *cgroups.Set) error {
	if o.Limits.Pids <= 0 {
		return nil
	}
	var err error
	if cg != nil {
		err = cg.Limit(cgroups.Limits{Pids: o.Limits.Pids})
	} else {
		err = o.User.Update(o.Limits)
	}
	if err != nil {
		return fmt.Errorf("--pids %d: %w", o.Limits.Pids, err)
	}
	return nil
}

// endInit ends an init that did not become the command and reaps it:
// the end of its connection makes it exit (what it was doing fails), or
// it was killed already; one that still runs after a while is killed.
// It returns how the init ended.
func endInit(cmd *exec.Cmd, conn *os.File) syscall.WaitStatus {
	conn.Close()
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // how it ended is in cmd.ProcessState
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	var ws syscall.WaitStatus
	if cmd.ProcessState != nil {
		ws, _ = cmd.ProcessState.Sys().(syscall.WaitStatus)
	}
	return ws
}

// killedAtStart is the error of a start that failed with err while the
// container's init was killed by sig, before it ran the command: where
// the cgroups' events say a limit was hit, the limit is named first
// (the container cannot start within it), and err (what failed then)
// follows if the kernel refused it, with its errno.
func (o *Options) killedAtStart(sig syscall.Signal, cg *cgroups.Set, err error) error {
	hits := hitsFor(sig, cg)
	msg := fmt.Sprintf("the container's init was killed (%s) before it ran the command", unix.SignalName(sig))
	if why := hitsText(hits); why != "" {
		msg += ": " + why
	}
	var limit string
	for _, h := range hits {
		switch {
		case h.Memory() && o.Limits.Memory > 0 && limit == "":
			limit = fmt.Sprintf("--memory %d", o.Limits.Memory)
		case !h.Memory() && o.Limits.Pids > 0 && limit == "":
			limit = fmt.Sprintf("--pids %d", o.Limits.Pids)
		}
	}
	if limit != "" {
		msg = limit + ": too little for cgfs run to start the container: " + msg
	}
	// What failed then is said where the kernel refused it: anything
	// else judged a dead init (on v1, an exiting task's cgroups read as
	// the hierarchy's roots).
	if errno := syscall.Errno(0); errors.As(err, &errno) {
		msg += fmt.Sprintf("; what failed then: %v (%s)", err, unix.ErrnoName(errno))
	}
	return errors.New(msg)
}

// hitsFor are the limits cg's events count as hit that may have killed a
// process by sig: the OOM killer's SIGKILL, or a fork refused (which a
// program may die of by any signal, as Go's runtime aborts).
func hitsFor(sig syscall.Signal, cg *cgroups.Set) []cgroups.Hit {
	if cg == nil {
		return nil
	}
	var out []cgroups.Hit
	for _, h := range cg.Hits() {
		if !h.Memory() || sig == syscall.SIGKILL {
			out = append(out, h)
		}
	}
	return out
}

// hitsText says the limits hits counts as hit, "" for none.
func hitsText(hits []cgroups.Hit) string {
	var out []string
	for _, h := range hits {
		out = append(out, h.String())
	}
	return strings.Join(out, "; ")
}

// StartKept starts cmd from a thread kept until release is called.
// Pdeathsig comes when the thread that started a process ends, not the
// process, and Go ends a thread whose goroutine exits locked to it
// (pidns helpers do, on whatever thread they run).
func StartKept(cmd *exec.Cmd) (release func(), err error) {
	started, kept := make(chan error, 1), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		started <- cmd.Start()
		<-kept
	}()
	var once sync.Once
	return func() { once.Do(func() { close(kept) }) }, <-started
}

// ExitStatus is what cgfs run exits with for what cmd.Wait said: the
// command's status, 128+N for a signal N.
func ExitStatus(err error) (int, error) {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return 0, err
}

// hostMounts are the kernel's mounts of every hierarchy the host has,
// as a container's mount table shows them.
func hostMounts(procs *proc.Procs) ([]mimic.Mount, error) {
	l, err := layout.Discover(procs)
	if err != nil {
		return nil, err
	}
	var out []mimic.Mount
	for _, h := range l.Hierarchies {
		out = append(out, mimic.MountOf(h))
	}
	return out, nil
}

// MapIDs writes the user's container's id maps for process pid with
// shadow's newuidmap and newgidmap (set-user-ID root: they check the
// maps against /etc/subuid and /etc/subgid).
func MapIDs(pid int, m *IDMaps) error {
	if m == nil || len(m.UID) == 0 || len(m.GID) == 0 {
		return errors.New("no id maps for the container")
	}
	for _, t := range []struct {
		tool string
		maps []syscall.SysProcIDMap
	}{{"newuidmap", m.UID}, {"newgidmap", m.GID}} {
		path, err := exec.LookPath(t.tool)
		if err != nil {
			return fmt.Errorf("cgfs run as a user maps its container's ids with shadow's newuidmap and newgidmap (Debian's uidmap): %w", err)
		}
		args := []string{strconv.Itoa(pid)}
		for _, r := range t.maps {
			args = append(args, strconv.Itoa(r.ContainerID), strconv.Itoa(r.HostID), strconv.Itoa(r.Size))
		}
		if out, err := exec.Command(path, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %v: %s", t.tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// readMsg reads one message, "" at end of file, and the descriptor
// that came with it, if one did.
func readMsg(f *os.File) (string, *os.File, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(int(f.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", nil, err
		}
		var fd *os.File
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				fd = os.NewFile(uintptr(fds[0]), "from the init")
			}
		}
		return string(buf[:n]), fd, nil
	}
}

// containerEnv is the command's environment: the terminal's type and a
// plain PATH and HOME.
func containerEnv() []string { return Env() }

// Env is the environment of a container's processes: the terminal's
// type, a plain PATH and HOME, and container=cgfs, by which systemd and
// others know they run in a container (as container=lxc, docker,
// systemd-nspawn elsewhere).
func Env() []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "container=cgfs"}
	if t := os.Getenv("TERM"); t != "" {
		env = append(env, "TERM="+t)
	}
	return env
}

// forwardSignals passes the signals cgfs run gets on to the container's
// init (as an ancestor namespace sends them: only those it handles reach
// it, and SIGKILL). An init that ignores them (sleep, or a shell with no
// trap, as PID 1) would never stop, so a second SIGINT, SIGTERM, SIGHUP
// or SIGQUIT kills it, as a second Ctrl-C does in compose.
func forwardSignals(sig <-chan os.Signal, p *os.Process, log *slog.Logger) (stop func()) {
	done := make(chan struct{})
	go func() {
		stops := 0
		for {
			select {
			case s := <-sig:
				switch s {
				case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT:
					stops++
				}
				if stops >= 2 {
					log.Warn("a second signal to stop: killing the container", "signal", s.String())
					s = syscall.SIGKILL
				}
				_ = p.Signal(s)
			case <-done:
				return
			}
		}
	}()
	return func() { close(done) }
}
