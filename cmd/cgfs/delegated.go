package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/launch"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
)

// Delegated mode: cgfs run by an ordinary user who owns a cgroup v2
// subtree already (systemd's Delegate=, or an admin's chown), with no
// daemon and nothing of root's but shadow's newuidmap and newgidmap.
//
// cgfs run (the caller's process) moves itself into the leaf
// cgfs-run of its cgroup (the delegated one: it may then hand
// controllers on to the container's cgroup beside it), and starts
// itself again as the server: root of a user namespace of its own that
// maps root to the user and the user's subordinate ids to themselves,
// with a mount namespace of its own. There it is cgfs run as host root
// would be, within what the user owns: the container's cgroup is made
// in the delegated one alone, its view is served over a FUSE mount the
// server may make in its namespaces (request ids are the host's, as the
// map is the identity there), and the container's ids are the user's
// subordinate ones: the container's root is never the user, who owns
// the host's cgroup files, so neither a cgroupfs of its own nor ptrace
// reaches past the view.

// delegatedEnv carries the server's configuration; delegatedMappedEnv
// marks the server started again once its ids are mapped.
const (
	delegatedEnv       = "CGFS_DELEGATED"
	delegatedMappedEnv = "CGFS_DELEGATED_MAPPED"
)

// runLeaf is the cgroup below the delegated one that holds cgfs run and
// its server (the delegated cgroup may hold no process once it hands
// controllers on). It stays when cgfs run ends: no process may remove
// the cgroup it is in; systemd removes it with the scope.
const runLeaf = "cgfs-run"

// delegatedConfig is what the server is told.
type delegatedConfig struct {
	Name   string         `json:"name"`
	Limits cgroups.Limits `json:"limits"`
	Rootfs string         `json:"rootfs"`
	Net    launch.Net     `json:"net"`
	Cmd    []string       `json:"cmd"`
	Parent string         `json:"parent"` // the delegated cgroup
	Mount  string         `json:"mount"`  // its hierarchy's mount point
	Map    launch.IDMap   `json:"map"`    // the container's ids: the user's subordinate ones
}

// ownCgroup is this process's cgroup on cgroup v2 and the hierarchy's
// mount point, if the caller owns the cgroup as a delegation gives it:
// the directory, its cgroup.procs and its cgroup.subtree_control.
func ownCgroup() (mount, dir string, err error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", "", err
	}
	var path string
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			path = p
		}
	}
	if path == "" {
		return "", "", errors.New("this process is in no cgroup v2 cgroup")
	}
	mount, err = cgroup2Mount()
	if err != nil {
		return "", "", err
	}
	dir = filepath.Join(mount, path)
	if filepath.Base(dir) == runLeaf {
		// Started again from an earlier cgfs run's leaf: its parent.
		dir = filepath.Dir(dir)
	}
	uid := uint32(os.Getuid())
	for _, f := range []string{"", "cgroup.procs", "cgroup.subtree_control"} {
		var st unix.Stat_t
		p := filepath.Join(dir, f)
		if err := unix.Stat(p, &st); err != nil {
			return "", "", &os.PathError{Op: "stat", Path: p, Err: err}
		}
		if st.Uid != uid {
			return "", "", fmt.Errorf("your cgroup %s is not delegated to you (%s is uid %d's)", dir, p, st.Uid)
		}
	}
	return mount, dir, nil
}

// cgroup2Mount is where this mount namespace mounts cgroup v2 from its
// root.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		pre, post, ok := strings.Cut(s.Text(), " - ")
		fields, after := strings.Fields(pre), strings.Fields(post)
		if ok && len(fields) >= 5 && len(after) >= 1 && after[0] == "cgroup2" && fields[3] == "/" {
			return unescapeMount(fields[4]), nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// delegatedMaps are the server's user namespace's maps: root is the
// user, and the user's first subordinate range (at most 65536 ids) maps
// to itself; count is how many ids the container gets.
func delegatedMaps() (m *launch.IDMaps, sub launch.IDMap, err error) {
	who := users.Lookup(os.Getuid())
	who.Gid = os.Getgid()
	var starts [2]int64
	count := int64(65536)
	for i, file := range []string{"/etc/subuid", "/etc/subgid"} {
		ranges, err := users.SubIDs(file, who)
		if err != nil {
			return nil, sub, err
		}
		if len(ranges) == 0 {
			return nil, sub, fmt.Errorf("cgfs run with a delegated cgroup gives the container your subordinate ids, and %s gives you none: the admin adds a range (usermod --add-subuids, --add-subgids)", file)
		}
		starts[i] = ranges[0].Start
		count = min(count, ranges[0].Count)
	}
	if starts[0] != starts[1] {
		// The container's ids are one range, uids and gids alike.
		return nil, sub, fmt.Errorf("cgfs run with a delegated cgroup wants your /etc/subuid and /etc/subgid ranges to start at the same id (they start at %d and %d)", starts[0], starts[1])
	}
	sub = launch.IDMap{HostID: int(starts[0]), Count: int(count)}
	m = &launch.IDMaps{
		UID: []syscall.SysProcIDMap{{ContainerID: 0, HostID: who.Uid, Size: 1}, {ContainerID: sub.HostID, HostID: sub.HostID, Size: sub.Count}},
		GID: []syscall.SysProcIDMap{{ContainerID: 0, HostID: who.Gid, Size: 1}, {ContainerID: sub.HostID, HostID: sub.HostID, Size: sub.Count}},
	}
	return m, sub, nil
}

// runDelegated is cgfs run by a user in a cgroup delegated to it: this
// process moves into the leaf, starts the server and waits for it.
func runDelegated(o runOptions, mount, dir string, log *slog.Logger) (int, error) {
	if o.Name == runLeaf {
		return 0, usageError{fmt.Sprintf("--name %s: cgfs run's own cgroup in the delegated one", runLeaf)}
	}
	maps, sub, err := delegatedMaps()
	if err != nil {
		return 0, err
	}
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sig)
	if _, err := os.Stat(filepath.Join(dir, o.Name)); err == nil {
		return 0, fmt.Errorf("a container named %s runs already (%s exists)", o.Name, filepath.Join(dir, o.Name))
	}
	leaf := filepath.Join(dir, runLeaf)
	if err := unix.Mkdir(leaf, 0o755); err != nil && err != unix.EEXIST {
		return 0, &os.PathError{Op: "mkdir", Path: leaf, Err: err}
	}
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte("0"), 0); err != nil {
		return 0, fmt.Errorf("moving into %s: %w", leaf, err)
	}
	// cgroup v2 hands controllers on only from a cgroup with no process
	// of its own: the delegated one holds cgfs run's leaf and
	// containers alone.
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil && len(strings.Fields(string(b))) > 0 {
		return 0, fmt.Errorf("your cgroup %s holds processes other than cgfs run (%s): cgroup v2 gives a cgroup with processes no controllers to hand on; start cgfs run alone in it (systemd-run --user --scope -p Delegate=yes cgfs run ...)",
			dir, strings.Join(strings.Fields(string(b)), " "))
	}
	cfg, err := json.Marshal(delegatedConfig{Name: o.Name, Limits: o.Limits, Rootfs: o.Rootfs,
		Net: o.Net, Cmd: o.Cmd, Parent: dir, Mount: mount, Map: sub})
	if err != nil {
		return 0, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	conn, child := os.NewFile(uintptr(fds[0]), "server"), os.NewFile(uintptr(fds[1]), "server")
	defer conn.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), delegatedEnv+"="+string(cfg))
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		Pdeathsig:  syscall.SIGKILL,
	}
	release, err := launch.StartKept(cmd)
	defer release()
	child.Close()
	if err != nil {
		return 0, fmt.Errorf("starting cgfs run's server: %w", err)
	}
	if err := launch.MapIDs(cmd.Process.Pid, maps); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, err
	}
	if _, err := conn.Write([]byte("mapped")); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, err
	}
	conn.Close()
	// Signals reach the server, which passes them to the container once;
	// a terminal's own (^C, ^\) reach it already, in this process group.
	fromTerminal := launch.IsTerminal(os.Stdin)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sig:
				if fromTerminal && (s == syscall.SIGINT || s == syscall.SIGQUIT) {
					continue
				}
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	return launch.ExitStatus(err)
}

// delegatedMain is the server (see above): started again once mapped,
// then cgfs run as root of its namespaces; it exits with the command's
// status.
func delegatedMain() int {
	var cfg delegatedConfig
	if err := json.Unmarshal([]byte(os.Getenv(delegatedEnv)), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "cgfs: the server's configuration: %v\n", err)
		return 1
	}
	if os.Getenv(delegatedMappedEnv) == "" {
		buf := make([]byte, 16)
		n, err := unix.Read(3, buf)
		if err != nil || string(buf[:n]) != "mapped" {
			return 1 // cgfs run said why
		}
		unix.Close(3)
		env := append(os.Environ(), delegatedMappedEnv+"=1")
		err = syscall.Exec("/proc/self/exe", []string{"cgfs-run-server"}, env)
		fmt.Fprintf(os.Stderr, "cgfs: starting again as root of its user namespace: %v\n", err)
		return 1
	}
	os.Unsetenv(delegatedEnv)
	os.Unsetenv(delegatedMappedEnv)
	// The exec cleared the parent-death signal: cgfs run's end still
	// ends the server, and so the container.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "cgfs: parent-death signal: %v\n", err)
		return 1
	}
	var o runOptions
	o.Name, o.Rootfs, o.Net, o.Cmd = cfg.Name, cfg.Rootfs, cfg.Net, cfg.Cmd
	o.Limits = cfg.Limits
	o.Map = cfg.Map
	o.Delegated, o.DelegatedMount = cfg.Parent, cfg.Mount
	level := slog.LevelError
	_ = level.UnmarshalText([]byte(os.Getenv("CGFS_LOG")))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	code, err := runCmd(o, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cgfs: %v\n", err)
		if _, ok := err.(usageError); ok {
			return 2
		}
		return 1
	}
	return code
}
