package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/access/proc"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/translate/host"
)

// mountCmd is `cgfs mount`: it serves the views opts asks for at
// opts.mountpoint until SIGINT or SIGTERM, then unmounts.
func mountCmd(opts mountOptions, log *slog.Logger) error {
	defer startProfile()()
	procs, err := proc.Open("/proc")
	if err != nil {
		return err
	}
	w, err := host.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	views, err := serve.Open(procs, serve.Options{
		Owner: opts.owner, HostDir: opts.hostDir, Shared: opts.shared,
		MaxOpen: opts.maxOpen, V1Max: opts.v1Max, Debug: opts.debug, Log: log,
		Watcher: w,
	})
	if err != nil {
		return err
	}
	defer views.Close()
	reg := prometheus.NewRegistry()
	counts := metrics.New(reg).For(views.Name)
	if opts.metrics != "" {
		ln, err := listenMetrics(opts.metrics, reg, log)
		if err != nil {
			return err
		}
		defer ln.Close()
	}

	// Signals are caught before the mount exists: a SIGTERM that comes
	// as soon as the mount is visible must still unmount cleanly.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)

	m, err := views.Serve(access.NewIdentifier(procs), counts)
	if err != nil {
		return fmt.Errorf("mount %s: %w", opts.mountpoint, err)
	}
	if err := m.MoveTo(opts.mountpoint); err != nil {
		m.Stop()
		return err
	}
	log.Info("serving", "view", views.Name, "mountpoint", opts.mountpoint)
	select {
	case <-m.Done():
		return nil // unmounted from outside
	case s := <-sig:
		log.Info("unmounting", "signal", s.String(), "mountpoint", opts.mountpoint)
	}
	// Copies of the mount that live on in other mount namespaces (a
	// container bound it) see ENOTCONN from now on.
	m.Stop()
	log.Info("unmounted", "mountpoint", opts.mountpoint)
	return nil
}

// listenMetrics serves /metrics at addr.
func listenMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--metrics %s: %v", addr, err)}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	go func() { _ = http.Serve(ln, mux) }()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return ln, nil
}
