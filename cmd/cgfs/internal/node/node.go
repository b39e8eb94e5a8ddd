// Package node is the cgfs DaemonSet's agent on a Kubernetes node
// (`cgfs node`): it installs cgfs and its containerd configuration on
// the host, keeps the daemon running there, outside the pod, across the
// pod's rollouts, and labels the node once the daemon serves.
package node

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/layout"
)

// Where cgfs lives on the host (the paths the hooks, the RuntimeClass's
// base spec and the keeper name).
const (
	Binary      = "/opt/cgfs/bin/cgfs"
	RuntimeSpec = "/opt/cgfs/runtime-spec.json"
	DropIn      = "/etc/containerd/conf.d/cgfs.toml"
	DaemonLog   = "/var/log/cgfs/daemon.log"
	// ReadyLabel is set "true" on the node once its daemon serves: the
	// RuntimeClass's nodeSelector.
	ReadyLabel = "cgfs.dev/ready"
)

// HoldEnv names the descriptor a keeper started by the agent reads to
// its end before it goes on: the agent moves it out of the pod's
// cgroups first (see Hold).
const HoldEnv = "CGFS_HOLD_FD"

//go:embed runtime-spec.json
var runtimeSpec []byte

// dropIn is containerd's configuration for the RuntimeClass's handler
// "cgfs" (runc with cgfs's base spec: the hook and the seccomp
// listener), by containerd configuration version. Version 3 (containerd
// 2.x) is a drop-in at DropIn, which 2.x imports by default and merges
// key by key; it also turns on NRI's default validator, so pods may
// require the plugin (required-plugins.noderesource.dev). Version 2
// (containerd 1.6, 1.7) goes to Snippet1x for the admin to merge into
// config.toml: 1.x replaces a whole plugin's section with an imported
// one, so a drop-in would drop the node's own CRI settings.
var dropIn = map[int]string{
	2: `# cgfs: the RuntimeClass "cgfs" for containerd 1.6/1.7. Merge into
# /etc/containerd/config.toml (not conf.d: containerd 1.x replaces the
# whole CRI section with an imported one), then restart containerd.
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cgfs]
  runtime_type = "io.containerd.runc.v2"
  base_runtime_spec = "` + RuntimeSpec + `"
`,
	3: `# cgfs: the RuntimeClass "cgfs" and NRI's default validator (containerd 2.x); installed by cgfs node install
version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.cgfs]
  runtime_type = "io.containerd.runc.v2"
  base_runtime_spec = "` + RuntimeSpec + `"
[plugins."io.containerd.nri.v1.nri".default_validator]
  enable = true
`,
}

// Snippet1x is where Install puts containerd 1.x's part (see dropIn).
const Snippet1x = "/opt/cgfs/containerd-1.x.toml"

// Install puts this binary at Binary, the base spec at RuntimeSpec and
// containerd's part at DropIn (2.x) or Snippet1x (1.x) under host (the
// host's / as the pod mounts it), each by rename, so a keeper running
// the old binary and a containerd reading the old file see a whole file
// either way.
func Install(host string, configVersion int) error {
	conf, ok := dropIn[configVersion]
	if !ok {
		return fmt.Errorf("containerd configuration version %d: cgfs knows 2 (containerd 1.6, 1.7) and 3 (2.x)", configVersion)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{Binary, self, 0o755},
		{RuntimeSpec, runtimeSpec, 0o644},
		{map[int]string{2: Snippet1x, 3: DropIn}[configVersion], []byte(conf), 0o644},
	} {
		if err := writeByRename(filepath.Join(host, f.path), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeByRename(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".cgfs-new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Hold is the first thing a process started with HoldEnv does: it waits
// until the agent closes the other end (having moved it into the host's
// cgroups), so that nothing it starts lands in the pod's.
func Hold() {
	fd, err := strconv.Atoi(os.Getenv(HoldEnv))
	os.Unsetenv(HoldEnv)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "hold")
	var b [1]byte
	_, _ = f.Read(b[:])
	f.Close()
}

// Options are the agent's.
type Options struct {
	// Socket is the daemon's control socket (the pod mounts /run/cgfs).
	Socket string
	// DaemonArgs are the keeper's arguments after `daemon --keep`.
	DaemonArgs []string
	// NodeName is the node to label; "" labels nothing.
	NodeName string
	// API reaches the API server; nil labels nothing.
	API *API
	Log *slog.Logger
	// Check is how often the agent checks that the daemon answers.
	Check time.Duration
}

// Run keeps a daemon serving on the host until ctx ends: it upgrades a
// running one to the binary installed now (a rollout of the DaemonSet:
// no view breaks), or starts one under a keeper outside the pod, labels
// the node ready once it answers, and starts one again if it stops
// answering. Ending Run (the pod's end) leaves the daemon running.
func Run(ctx context.Context, o Options) error {
	if o.Check == 0 {
		o.Check = 5 * time.Second
	}
	if answers(o.Socket) {
		t := time.Now()
		a, _, err := control.Ask(o.Socket, control.Request{Op: "upgrade"})
		if err == nil {
			err = a.Err()
		}
		if err != nil {
			return fmt.Errorf("upgrading the running daemon: %w", err)
		}
		o.Log.Info("upgraded the running daemon to the binary installed", "binary", Binary, "took", time.Since(t), "views waited µs", a.PauseMicros)
	} else if err := start(o); err != nil {
		return err
	}
	if err := waitAnswers(ctx, o.Socket, time.Minute); err != nil {
		return err
	}
	if o.API != nil && o.NodeName != "" {
		if err := o.API.Label(ctx, o.NodeName, ReadyLabel, "true"); err != nil {
			return fmt.Errorf("labelling node %s: %w", o.NodeName, err)
		}
		o.Log.Info("the node is ready for cgfs", "node", o.NodeName, "label", ReadyLabel+"=true")
	}
	missed := 0
	for {
		select {
		case <-ctx.Done():
			o.Log.Info("the agent ends; the daemon goes on serving")
			return nil
		case <-time.After(o.Check):
		}
		if answers(o.Socket) {
			missed = 0
			continue
		}
		if missed++; missed < 3 {
			continue
		}
		o.Log.Warn("the daemon does not answer: starting one again", "socket", o.Socket)
		missed = 0
		if err := start(o); err != nil {
			o.Log.Warn("starting the daemon", "err", err)
		}
	}
}

func answers(socket string) bool {
	_, _, err := control.Ask(socket, control.Request{Op: "list"})
	return err == nil
}

func waitAnswers(ctx context.Context, socket string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for wait := 10 * time.Millisecond; !answers(socket); wait = min(2*wait, time.Second) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon did not answer at %s within %v (its log: %s on the host)", socket, within, DaemonLog)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return nil
}

// start starts `cgfs daemon --keep` from the binary installed on the
// host, in the host's mount namespace (pid 1's), in a session of its own
// and in pid 1's cgroups: a keeper in the pod's mount namespace or
// cgroups would end with the pod and take every view with it.
func start(o Options) error {
	hostMnt, err := unix.Open("/proc/1/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("the host's mount namespace (the pod needs hostPID): %w", err)
	}
	defer unix.Close(hostMnt)
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	defer w.Close()
	var cmd *exec.Cmd
	err = proc.InNamespace(hostMnt, unix.CLONE_NEWNS, func() error {
		if err := os.MkdirAll(filepath.Dir(DaemonLog), 0o755); err != nil {
			return err
		}
		logf, err := os.OpenFile(DaemonLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return err
		}
		defer logf.Close()
		cmd = exec.Command(Binary, append([]string{"daemon", "--keep"}, o.DaemonArgs...)...)
		cmd.Dir = "/"
		cmd.Stdin = nil
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.ExtraFiles = []*os.File{r}
		cmd.Env = append(os.Environ(), HoldEnv+"=3")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		return cmd.Start()
	})
	if err != nil {
		return fmt.Errorf("starting %s daemon --keep on the host: %w", Binary, err)
	}
	go func() { _ = cmd.Wait() }()
	if err := intoCgroupsOf(1, cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("moving the keeper out of the pod's cgroups: %w", err)
	}
	w.Close() // the keeper goes on
	o.Log.Info("started the daemon on the host", "binary", Binary, "keeper", cmd.Process.Pid, "log", DaemonLog)
	return nil
}

// intoCgroupsOf moves process pid into the cgroups of process of, in
// every hierarchy the host mounts (the pod mounts the host's
// /sys/fs/cgroup).
func intoCgroupsOf(of, pid int) error {
	procs, err := proc.Open("/proc")
	if err != nil {
		return err
	}
	l, err := layout.Discover(procs)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range l.Hierarchies {
		dir, _, err := h.DirOf(procs, of)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.MountPoint, err))
		}
	}
	return errors.Join(errs...)
}
