// Package nriplug is cgfs's NRI plugin (`cgfs nri`): it gives the
// containers of pods that opt in cgfs's createRuntime hook and its
// seccomp listener, through containerd's Node Resource Interface, with
// no change to containerd's configuration.
package nriplug

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/plugin"
	"github.com/containerd/nri/pkg/stub"
)

// Name is the plugin's name, as pods name it in NRI's required-plugins
// annotation (`required-plugins.noderesource.dev: '["cgfs"]'`).
const Name = "cgfs"

// ViewAnnotation opts a pod in ("true"), with NRI's scoping: the key
// alone or `view.cgfs.dev/pod` for every container of the pod,
// `view.cgfs.dev/container.NAME` for one (which wins: "false" leaves
// that container out).
const ViewAnnotation = "view.cgfs.dev"

// Options say what the plugin adds and where it meets containerd.
type Options struct {
	// Socket is containerd's NRI socket.
	Socket string
	// Index orders the plugin among others (two digits).
	Index string
	// Hook is the cgfs binary the runtime runs as the createRuntime
	// hook, a path in the runtime's mount namespace (the node's).
	Hook string
	// SeccompSocket is the daemon's seccomp socket; empty adds no
	// seccomp listener.
	SeccompSocket string
	// DaemonSocket, when set, is passed to the hook (--socket).
	DaemonSocket string
	Log          *slog.Logger
}

// The syscalls the daemon's seccomp agent answers or the view needs
// refused (cmd/cgfs/examples/oci-seccomp.json says the same for runc).
var (
	notified = []string{"statfs", "fstatfs", "mount"}
	refused  = []string{"clone3", "fsopen"} // ENOSYS: callers fall back to clone and mount(2)
)

// OptedIn tells whether the pod asks for a view for container name.
func OptedIn(pod *api.PodSandbox, container string) (bool, error) {
	v, ok := plugin.GetEffectiveAnnotation(pod, ViewAnnotation, container)
	if !ok {
		return false, nil
	}
	on, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("annotation %s: %q is not true or false", ViewAnnotation, v)
	}
	return on, nil
}

// Adjust is what the plugin asks containerd to change in container c of
// pod: the hook, and the seccomp listener merged into the container's
// own policy (or an allow-all one where it has none). nil when the pod
// does not opt the container in.
func (o Options) Adjust(pod *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, error) {
	on, err := OptedIn(pod, c.GetName())
	if err != nil || !on {
		return nil, err
	}
	a := &api.ContainerAdjustment{}
	args := []string{"cgfs", "oci-hook"}
	if o.DaemonSocket != "" {
		args = append(args, "--socket", o.DaemonSocket)
	}
	a.AddHooks(&api.Hooks{CreateRuntime: []*api.Hook{{
		Path: o.Hook,
		Args: args,
		Env:  []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
	}}})
	if o.SeccompSocket != "" {
		a.SetLinuxSeccompPolicy(withListener(c.GetLinux().GetSeccompPolicy(), o.SeccompSocket))
	}
	return a, nil
}

// withListener is policy (nil: none, every call allowed) with cgfs's
// rules in place of any it had for the same calls, and its listener.
func withListener(policy *api.LinuxSeccomp, listener string) *api.LinuxSeccomp {
	p := &api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ALLOW"}
	if policy != nil {
		p.DefaultAction = policy.DefaultAction
		p.DefaultErrno = policy.DefaultErrno
		p.Architectures = slices.Clone(policy.Architectures)
		p.Flags = slices.Clone(policy.Flags)
		ours := append(slices.Clone(notified), refused...)
		for _, r := range policy.Syscalls {
			names := slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool { return slices.Contains(ours, n) })
			if len(names) == 0 {
				continue
			}
			p.Syscalls = append(p.Syscalls, &api.LinuxSyscall{Names: names, Action: r.Action, ErrnoRet: r.ErrnoRet, Args: r.Args})
		}
	}
	p.ListenerPath = listener
	p.Syscalls = append(p.Syscalls,
		&api.LinuxSyscall{Names: slices.Clone(notified), Action: "SCMP_ACT_NOTIFY"},
		&api.LinuxSyscall{Names: slices.Clone(refused), Action: "SCMP_ACT_ERRNO", ErrnoRet: &api.OptionalUInt32{Value: uint32(syscall.ENOSYS)}})
	return p
}

// plug is the stub's plugin: it answers CreateContainer.
type plug struct{ o Options }

// Configure says, once registered, which runtime took the plugin.
func (p *plug) Configure(_ context.Context, _, runtime, version string) (api.EventMask, error) {
	p.o.Log.Info("nri: registered", "runtime", runtime, "version", version, "plugin", p.o.Index+"-"+Name)
	return 0, nil // the events of the methods plug has
}

// CreateContainer adds the hook to containers that opt in; a pod whose
// annotation is not true or false fails to create, as a typo must not
// leave a container silently without its view.
func (p *plug) CreateContainer(_ context.Context, pod *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	a, err := p.o.Adjust(pod, c)
	if err != nil {
		p.o.Log.Warn("nri: refused a container: a bad annotation", "rule", "nri-annotation",
			"pod", pod.GetNamespace()+"/"+pod.GetName(), "container", c.GetName(), "err", err)
		return nil, nil, err
	}
	if a != nil {
		p.o.Log.Info("nri: a container gets a view", "pod", pod.GetNamespace()+"/"+pod.GetName(), "container", c.GetName(), "id", c.GetId())
	}
	return a, nil, nil
}

// Run registers with containerd and serves it until ctx ends,
// registering again whenever containerd restarts (or is not up yet).
func Run(ctx context.Context, o Options) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		s, err := stub.New(&plug{o}, stub.WithPluginName(Name), stub.WithPluginIdx(o.Index), stub.WithSocketPath(o.Socket))
		if err != nil {
			return err
		}
		start := time.Now()
		err = s.Run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("containerd ended the connection")
		}
		if time.Since(start) > time.Minute {
			wait = 100 * time.Millisecond
		}
		o.Log.Warn("nri: not registered; trying again", "socket", o.Socket, "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}
