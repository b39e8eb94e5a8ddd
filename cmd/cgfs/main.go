// Command cgfs serves a container's own cgroup tree over FUSE.
//
//	cgfs mount [--cgroup HOSTDIR] [--owner PID] [--metrics ADDR] [--debug] MOUNTPOINT
//
// serves the host cgroup2 directory HOSTDIR (or, without --cgroup, the
// owner's cgroup in every hierarchy the host mounts) at MOUNTPOINT in
// the foreground until SIGINT or SIGTERM, then unmounts and exits 0.
// Usage errors and a HOSTDIR that is not a cgroup2 directory exit 2;
// failures while serving exit 1.
//
// main.go wires the steps together; flags.go parses the command line,
// open.go opens the hierarchies into views, serve.go mounts and serves
// them.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/access/proc"
	"github.com/cgfs/cgfs/translate/pidns"
)

// usageError is a mistake in how cgfs was called: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	if pidns.IsHelper() {
		// A helper in a container's pid namespace (translate/pidns).
		os.Exit(pidns.HelperMain())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	err := run(os.Args[1:], log, os.Stderr)
	var ue usageError
	switch {
	case err == nil:
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "cgfs: %v\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "cgfs: %v\n", err)
		os.Exit(1)
	}
}

// run does one cgfs command; every cleanup it defers runs before it
// returns.
func run(args []string, log *slog.Logger, stderr io.Writer) error {
	opts, err := parseMount(args, stderr)
	if err != nil {
		return err
	}
	procs, err := proc.Open("/proc")
	if err != nil {
		return err
	}
	var owner *access.Owner
	if opts.owner != 0 {
		if owner, err = access.OwnerOf(procs, opts.owner); err != nil {
			return usageError{fmt.Sprintf("--owner %d: %v", opts.owner, err)}
		}
	} else if owner, err = access.SelfOwner(procs); err != nil {
		return err
	}
	defer owner.Close()
	views, err := openViews(opts, owner, procs, log)
	if err != nil {
		return err
	}
	defer views.close()
	return serve(opts, views, access.NewIdentifier(procs), log)
}
