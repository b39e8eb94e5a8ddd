package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
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
	m := newMetrics(reg, procs)
	if opts.metrics != "" {
		ln, err := listenMetrics(opts.metrics, net.Listen, reg, m, log)
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

	mounted, err := views.Serve(access.NewIdentifier(procs), m.For(opts.name))
	if err != nil {
		return fmt.Errorf("mount %s: %w", opts.mountpoint, err)
	}
	defer m.Add(views.MetricsView(opts.name, mounted))()
	if err := mounted.MoveTo(opts.mountpoint); err != nil {
		mounted.Stop()
		return err
	}
	log.Info("serving", "view", views.Name, "mountpoint", opts.mountpoint)
	select {
	case <-mounted.Done():
		return nil // unmounted from outside
	case s := <-sig:
		log.Info("unmounting", "signal", s.String(), "mountpoint", opts.mountpoint)
	}
	// Copies of the mount that live on in other mount namespaces (a
	// container bound it) see ENOTCONN from now on.
	mounted.Stop()
	log.Info("unmounted", "mountpoint", opts.mountpoint)
	return nil
}

// maxScrapes bounds the /metrics and /healthz requests served at once.
const maxScrapes = 2

// What the metrics server holds for whoever connects: at most
// maxMetricsConns connections at once (one more is closed as soon as it
// is accepted), each closed if its request header has not come within
// metricsHeaderTimeout, its request not read within metricsReadTimeout,
// its answer not taken within metricsWriteTimeout, or when idle for
// metricsIdleTimeout.
const maxMetricsConns = 32

var (
	metricsHeaderTimeout = 5 * time.Second
	metricsReadTimeout   = 10 * time.Second
	metricsWriteTimeout  = 30 * time.Second
	metricsIdleTimeout   = 30 * time.Second
)

// limitListener serves at most cap(slots) connections at once: one
// accepted beyond that is closed at once, so that neither descriptors
// nor goroutines of the server grow with connections nobody uses, and
// the backlog does not hold a scrape behind them.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			c.Close()
		}
	}
}

// limitedConn gives its slot back once, when it is closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// newMetrics makes a server's metrics in reg, with the pid cache's
// counts read from procs.
func newMetrics(reg *prometheus.Registry, procs *proc.Procs) *metrics.Metrics {
	m := metrics.New(reg)
	m.AddSource(metrics.Source{Name: "cgfs_pid_cache_hits_total", Counter: true,
		Help: "Task ids translated from the pid cache.",
		Read: func() float64 { h, _ := procs.CacheStats(); return float64(h) }})
	m.AddSource(metrics.Source{Name: "cgfs_pid_cache_misses_total", Counter: true,
		Help: "Task ids read from /proc to be translated.",
		Read: func() float64 { _, miss := procs.CacheStats(); return float64(miss) }})
	return m
}

// listenMetrics serves /metrics and /healthz at addr (on the listener
// listen makes: net.Listen, or the daemon's that a keeper holds a copy
// of): /healthz answers
// 200 while every view answers, 503 naming those that do not. Each
// reads host files for every view, and whoever reaches addr may ask (a
// container of cgfs run with --net host shares the host's network): at
// most maxScrapes of them run at once, the rest get 503, and the
// connections and their lifetimes are bounded (maxMetricsConns).
func listenMetrics(addr string, listen func(network, addr string) (net.Listener, error), reg *prometheus.Registry, m *metrics.Metrics, log *slog.Logger) (net.Listener, error) {
	ln, err := listen("tcp", addr)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--metrics %s: %v", addr, err)}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: maxScrapes}))
	health := make(chan struct{}, maxScrapes)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case health <- struct{}{}:
			defer func() { <-health }()
		default:
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		if down := m.Down(); len(down) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not answering: %s\n", strings.Join(down, " "))
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: metricsHeaderTimeout, ReadTimeout: metricsReadTimeout,
		WriteTimeout: metricsWriteTimeout, IdleTimeout: metricsIdleTimeout, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() { _ = srv.Serve(&limitListener{Listener: ln, slots: make(chan struct{}, maxMetricsConns)}) }()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return ln, nil
}
