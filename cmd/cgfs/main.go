// Command cgfs gives containers their own cgroup trees over FUSE.
//
//	cgfs mount [--cgroup HOSTDIR] [--owner PID] [OPTIONS] MOUNTPOINT
//	cgfs run [OPTIONS] -- CMD...
//	cgfs exec NAME -- CMD...
//	cgfs daemon [--socket PATH] [--metrics ADDR]
//	cgfs attach|detach|list ...
//	cgfs freeze|thaw|kill|stop|update NAME, cgfs stats [NAME] (a user's own containers)
//	cgfs oci-hook | lxc-hook
//	cgfs bench [OPTIONS]
//
// mount serves one view in the foreground; run starts a container with
// its own cgroups and the view at its /sys/fs/cgroup; exec runs a command
// in one; the daemon serves many containers' views, which attach, detach
// and list manage and the hooks put in place for runc and LXC. Usage
// errors exit 2, failures 1; run and exec exit with the command's status.
//
// main.go dispatches; flags.go and serve.go are mount, runcmd.go run,
// execcmd.go exec, daemoncmd.go the daemon, its clients and the hooks.
// The work is in internal/: serve (views on FUSE mounts), launch
// (containers), control (the socket), daemon (the daemon's views).
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/bench"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/launch"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/node"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/translate/pidns"
)

// usageError is a mistake in how cgfs was called: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	if os.Getenv(node.HoldEnv) != "" {
		// A keeper the DaemonSet's agent starts: it waits to be moved
		// out of the pod's cgroups.
		node.Hold()
	}
	switch {
	case pidns.IsHelper():
		// A helper in a container's pid namespace (translate/pidns).
		os.Exit(pidns.HelperMain())
	case launch.IsInit():
		// A container's init, until it becomes the command.
		os.Exit(launch.InitMain())
	case os.Getenv(delegatedEnv) != "":
		// The server of cgfs run in a user's delegated cgroup.
		os.Exit(delegatedMain())
	case os.Getenv(placeEnv) != "":
		// A user's hook, inside a container's namespaces.
		if err := placeMain(os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "cgfs: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	case os.Getenv(stageEnv) != "":
		// cgfs exec's stage, until it becomes nsenter.
		if err := stageMain(os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "cgfs exec: %v\n", err)
			os.Exit(126)
		}
	case os.Getenv(joinEnv) != "":
		// cgfs exec, inside the container, until it becomes the command.
		if err := joinMain(os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "cgfs exec: %v\n", err)
			os.Exit(126)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	code, err := run(os.Args[1:], log, os.Stderr)
	var ue usageError
	var se serve.UsageError
	var ce control.UsageError
	switch {
	case err == nil:
	case errors.As(err, &ue), errors.As(err, &se), errors.As(err, &ce):
		fmt.Fprintf(os.Stderr, "cgfs: %v\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "cgfs: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// run does one cgfs command and returns the exit status it asks for;
// every cleanup it defers runs before it returns.
func run(args []string, log *slog.Logger, stderr io.Writer) (int, error) {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage+"\n"+runUsage+"\n"+execUsage+"\n"+daemonUsage)
		return 0, usageError{"expected a subcommand: mount, run, exec, daemon, attach, detach, list, oci-hook, lxc-hook"}
	}
	switch args[0] {
	case "mount":
		opts, err := parseMount(args, stderr)
		if err != nil {
			return 0, err
		}
		return 0, mountCmd(opts, log)
	case "run":
		opts, err := parseRun(args[1:], stderr)
		if err != nil {
			return 0, err
		}
		// The command's own output is what a user of cgfs run reads:
		// cgfs says only what went wrong, unless CGFS_LOG=debug or info.
		level := slog.LevelError
		_ = level.UnmarshalText([]byte(os.Getenv("CGFS_LOG")))
		quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
		return runCmd(opts, quiet)
	case "exec":
		return execCmd(args[1:])
	case "daemon":
		return 0, daemonCmd(args[1:], log, stderr)
	case "attach":
		opts, err := parseAttach(args[1:], stderr)
		if err != nil {
			return 0, err
		}
		return 0, attach(opts)
	case "list":
		if os.Geteuid() != 0 {
			return 0, userListCmd(os.Stdout)
		}
		return 0, simpleCmd(args[0], args[1:], os.Stdout, stderr)
	case "detach", "upgrade":
		return 0, simpleCmd(args[0], args[1:], os.Stdout, stderr)
	case "freeze", "thaw", "kill", "stop", "update":
		return 0, userOpCmd(args[0], args[1:], stderr)
	case "stats":
		return 0, statsCmd(args[1:], os.Stdout, stderr)
	case "oci-hook":
		return 0, ociHookCmd(args[1:], os.Stdin)
	case "lxc-hook":
		return 0, lxcHookCmd(args[1:])
	case "nri":
		return 0, nriCmd(args[1:], log, stderr)
	case "node":
		return 0, nodeCmd(args[1:], log, stderr)
	case "bench":
		return benchCmd(args[1:], os.Stdout, stderr)
	case "bench-floor": // the bench's floor server
		if len(args) != 3 {
			return 0, usageError{"bench-floor SRC MOUNTPOINT"}
		}
		return 0, bench.FloorMain(args[1], args[2])
	case "bench-worker": // the bench's worker in its container
		return bench.WorkerMain(os.Stdin, os.Stdout), nil
	}
	fmt.Fprint(stderr, usage+"\n"+runUsage+"\n"+execUsage+"\n"+daemonUsage)
	return 0, usageError{"unknown subcommand " + args[0]}
}
