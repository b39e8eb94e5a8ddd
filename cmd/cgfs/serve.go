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
	"github.com/cgfs/cgfs/fs"
	"github.com/cgfs/cgfs/metrics"
)

// serve mounts the views at opts.mountpoint and serves them until SIGINT
// or SIGTERM, then unmounts.
func serve(opts mountOptions, o *openedViews, ident *access.Identifier, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	counts := metrics.New(reg).For(o.name)
	if opts.metrics != "" {
		ln, err := net.Listen("tcp", opts.metrics)
		if err != nil {
			return usageError{fmt.Sprintf("--metrics %s: %v", opts.metrics, err)}
		}
		defer ln.Close()
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		go func() { _ = http.Serve(ln, mux) }()
		log.Info("metrics listening", "addr", ln.Addr().String())
	}

	// Signals are caught before the mount exists: a SIGTERM that comes
	// as soon as the mount is visible must still unmount cleanly.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)

	// Leaves left by an earlier server that are no longer needed are
	// folded back before anyone looks.
	for _, va := range o.views {
		if err := va.View.Reconcile(); err != nil {
			log.Warn("reconciling hidden leaves", "hierarchy", va.Dir, "err", err)
		}
	}
	m, err := fs.Mount(opts.mountpoint, fs.Config{
		Views:      o.views,
		Symlinks:   o.symlinks,
		Identifier: ident,
		Metrics:    counts,
		Log:        log,
		Debug:      opts.debug,
	})
	if err != nil {
		return fmt.Errorf("mount %s: %w", opts.mountpoint, err)
	}
	log.Info("serving", "view", o.name, "mountpoint", opts.mountpoint)

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
