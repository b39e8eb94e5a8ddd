// Command cgfs serves a container's own cgroup tree over FUSE.
//
//	cgfs mount --cgroup HOSTDIR [--owner PID] [--debug] MOUNTPOINT
//
// serves the host cgroup2 directory HOSTDIR at MOUNTPOINT in the
// foreground until SIGINT or SIGTERM, then unmounts and exits 0. Usage
// errors and a HOSTDIR that is not a cgroup2 directory exit 2; failures
// while serving exit 1.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/fs"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/translate"
)

const usage = `usage: cgfs mount [--cgroup HOSTDIR] [--owner PID] [--metrics ADDR] [--debug] MOUNTPOINT

With --cgroup, serves the host cgroup v2 directory HOSTDIR at MOUNTPOINT as
the root of a cgroup tree. Without it, serves the cgroups of process PID in
every hierarchy the host mounts, laid out as the host lays out
/sys/fs/cgroup (v2 only, v1 or hybrid). Runs until SIGINT or SIGTERM.
`

// usageError is a mistake in how cgfs was called: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
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

func run(args []string, log *slog.Logger, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "mount" {
		fmt.Fprint(stderr, usage)
		return usageError{"expected the subcommand mount"}
	}
	fl := flag.NewFlagSet("mount", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, usage) }
	hostDir := fl.String("cgroup", "", "host cgroup v2 `directory` to serve as the view's root")
	ownerPid := fl.Int("owner", 0, "`pid` of a process of the container that owns the view")
	debug := fl.Bool("debug", false, "log every FUSE request")
	metricsAddr := fl.String("metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (e.g. 127.0.0.1:9464; port 0 picks one)")
	if err := fl.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	if fl.NArg() != 1 {
		fl.Usage()
		return usageError{"expected one MOUNTPOINT"}
	}
	mnt := fl.Arg(0)
	if *hostDir == "" && *ownerPid == 0 {
		fl.Usage()
		return usageError{"--cgroup HOSTDIR or --owner PID is required"}
	}

	pids, err := translate.NewPids("/proc")
	if err != nil {
		return err
	}
	var owner *access.Owner
	if *ownerPid != 0 {
		owner, err = access.OwnerOf(*ownerPid)
		if err != nil {
			return usageError{fmt.Sprintf("--owner %d: %v", *ownerPid, err)}
		}
	} else if owner, err = access.SelfOwner(); err != nil {
		return err
	}
	defer owner.Close()

	var hierarchies []fs.Hierarchy
	var symlinks map[string]string
	name := *hostDir
	if *hostDir != "" {
		// One cgroup v2 directory, served at the mount root.
		host, err := translate.OpenCgroup2(*hostDir)
		if err != nil {
			return usageError{fmt.Sprintf("cannot serve %s: %v", *hostDir, err)}
		}
		defer host.Close()
		hierarchies = []fs.Hierarchy{{
			View:   translate.NewView(host, translate.ViewConfig{IDs: owner.IDs, Pids: pids}),
			Policy: access.NewPolicy(owner.Chain, delegateFiles(log)),
		}}
	} else {
		// The owner's cgroup in every hierarchy the host mounts.
		layout, err := translate.DiscoverLayout()
		if err != nil {
			return err
		}
		symlinks = layout.Symlinks
		for i, h := range layout.Hierarchies {
			dir, cgPath, err := h.DirOf(*ownerPid)
			if err != nil {
				return usageError{fmt.Sprintf("--owner %d: %v", *ownerPid, err)}
			}
			host, err := translate.OpenHierarchy(h, dir, cgPath)
			if err != nil {
				return err
			}
			defer host.Close()
			cfg := translate.ViewConfig{IDs: owner.IDs, Pids: pids, V1: h.V1}
			policy := access.NewPolicyV1(owner.Chain)
			if !h.V1 {
				policy = access.NewPolicy(owner.Chain, delegateFiles(log))
			}
			if h.Name != "" {
				// Hierarchies side by side: keep their inode numbers apart.
				cfg.InoBase = uint64(i+1) << 48
			}
			hierarchies = append(hierarchies, fs.Hierarchy{Name: h.Name, View: translate.NewView(host, cfg), Policy: policy})
			log.Info("hierarchy", "name", h.Name, "dir", dir, "v1", h.V1)
		}
		name = fmt.Sprintf("owner:%d", *ownerPid)
	}
	ident, err := access.NewIdentifier("/proc")
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	counts := metrics.New(reg).View(name)
	if *metricsAddr != "" {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return usageError{fmt.Sprintf("--metrics %s: %v", *metricsAddr, err)}
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		go func() { _ = http.Serve(ln, mux) }()
		log.Info("metrics listening", "addr", ln.Addr().String())
	}

	// Signals are caught before the mount exists: a SIGTERM that comes
	// as soon as the mount is visible must still unmount cleanly.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)

	// Leaves left by an earlier server that are no longer needed are
	// folded back before anyone looks.
	for _, h := range hierarchies {
		if err := h.View.Reconcile(); err != nil {
			log.Warn("reconciling hidden leaves", "hierarchy", h.Name, "err", err)
		}
	}
	server, err := fs.Mount(mnt, fs.Config{
		Hierarchies: hierarchies,
		Symlinks:    symlinks,
		Pids:        pids,
		Metrics:     counts,
		Identifier:  ident,
		Log:         log,
		Debug:       *debug,
	})
	if err != nil {
		return fmt.Errorf("mount %s: %w", mnt, err)
	}
	log.Info("serving", "view", name, "mountpoint", mnt, "owner_userns", owner.Chain[0].NS.Ino)

	go func() {
		s := <-sig
		log.Info("unmounting", "signal", s.String(), "mountpoint", mnt)
		unmount(server, mnt, log)
	}()
	server.Wait()
	return nil
}

// delegateFiles lists the files the host lets a delegatee write at its
// root, from /sys/kernel/cgroup/delegate.
func delegateFiles(log *slog.Logger) []string {
	b, err := os.ReadFile("/sys/kernel/cgroup/delegate")
	if err != nil {
		log.Warn("no /sys/kernel/cgroup/delegate; only the core files are writable at a view root", "err", err)
		return nil
	}
	return strings.Fields(string(b))
}

// unmount takes the mount away and ends the server. If the mount is
// busy here it is detached lazily. Copies of it that live on in other
// mount namespaces (a container that bound it) keep the FUSE connection
// open; the server does not wait for them: exiting closes /dev/fuse and
// they see ENOTCONN.
func unmount(server *fuse.Server, mnt string, log *slog.Logger) {
	if err := unix.Unmount(mnt, 0); err != nil {
		log.Warn("unmount busy, detaching", "mountpoint", mnt, "err", err)
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			log.Error("detach failed", "mountpoint", mnt, "err", err)
		}
	}
	done := make(chan struct{})
	go func() { server.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		log.Warn("mount still in use elsewhere; closing the connection", "mountpoint", mnt)
	}
	log.Info("unmounted", "mountpoint", mnt)
	os.Exit(0)
}
