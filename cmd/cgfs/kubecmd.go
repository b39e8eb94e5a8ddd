package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/node"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/nriplug"
)

const kubeUsage = `usage: cgfs nri [--socket PATH] [--index NN] [--hook PATH] [--seccomp-socket PATH]
       cgfs node install [--host DIR] [--containerd-config 2|3]
       cgfs node run [--socket PATH] [--node NAME] [-- DAEMON-ARGS...]

Kubernetes (deploy/kubernetes): nri is containerd 2.x's NRI plugin that
gives the containers of pods annotated view.cgfs.dev: "true" the cgfs
hook and seccomp listener. node install puts cgfs, the RuntimeClass's
base spec and containerd's drop-in on the host mounted at DIR; node run
keeps cgfs daemon --keep DAEMON-ARGS running on the host (outside the
pod), upgrading a running one, and labels the node cgfs.dev/ready=true.
`

// signalled is a context that ends at SIGINT or SIGTERM.
func signalled() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func nriCmd(args []string, log *slog.Logger, stderr io.Writer) error {
	fl := flag.NewFlagSet("nri", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, kubeUsage) }
	o := nriplug.Options{Log: log}
	fl.StringVar(&o.Socket, "socket", "/var/run/nri/nri.sock", "containerd's NRI socket `PATH`")
	fl.StringVar(&o.Index, "index", "50", "the plugin's `index` among NRI plugins")
	fl.StringVar(&o.Hook, "hook", node.Binary, "the cgfs binary the runtime runs as the hook, a `PATH` on the node")
	fl.StringVar(&o.SeccompSocket, "seccomp-socket", "/run/cgfs/seccomp.sock", "the daemon's seccomp socket `PATH` on the node (\"\": no seccomp listener)")
	if err := fl.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fl.NArg() != 0 || len(o.Index) != 2 {
		return usageError{"nri takes flags only; --index is two digits"}
	}
	ctx, stop := signalled()
	defer stop()
	return nriplug.Run(ctx, o)
}

func nodeCmd(args []string, log *slog.Logger, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, kubeUsage)
		return usageError{"node install or node run"}
	}
	fl := flag.NewFlagSet("node "+args[0], flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, kubeUsage) }
	switch args[0] {
	case "install":
		host := fl.String("host", "/host", "where the pod mounts the host's `DIR`s (opt/cgfs, etc/containerd/conf.d)")
		version := fl.Int("containerd-config", 3, "containerd's configuration `version`: 3 for containerd 2.x, 2 for 1.6 and 1.7")
		if err := fl.Parse(args[1:]); err != nil {
			return usageError{err.Error()}
		}
		if err := node.Install(*host, *version); err != nil {
			return err
		}
		log.Info("installed", "binary", node.Binary, "spec", node.RuntimeSpec, "containerd", node.DropIn, "config version", *version)
		return nil
	case "run":
		o := node.Options{Log: log}
		fl.StringVar(&o.Socket, "socket", control.DaemonSocket(), "the daemon's socket `PATH`")
		fl.StringVar(&o.NodeName, "node", os.Getenv("NODE_NAME"), "the node to label (`NAME`; default $NODE_NAME)")
		if err := fl.Parse(args[1:]); err != nil {
			return usageError{err.Error()}
		}
		o.DaemonArgs = fl.Args()
		if o.NodeName != "" {
			api, err := node.InCluster()
			if err != nil {
				return err
			}
			o.API = api
		}
		ctx, stop := signalled()
		defer stop()
		return node.Run(ctx, o)
	}
	return usageError{"node install or node run, not node " + args[0]}
}
