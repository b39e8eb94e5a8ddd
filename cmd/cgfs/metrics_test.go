package main

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgfs/cgfs/metrics"
)

// blocking is a collector whose scrapes wait until released.
type blocking struct{ entered, release chan struct{} }

func (b blocking) Describe(chan<- *prometheus.Desc) {}
func (b blocking) Collect(chan<- prometheus.Metric) {
	b.entered <- struct{}{}
	<-b.release
}

// TestScrapesAreBounded: whoever reaches the metrics address (a cgfs
// run container shares the host's network) gets at most maxScrapes
// scrapes running at once; one more is 503 at once, not queued.
func TestScrapesAreBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := blocking{entered: make(chan struct{}, maxScrapes), release: make(chan struct{})}
	reg.MustRegister(b)
	ln, err := listenMetrics("127.0.0.1:0", net.Listen, reg, metrics.New(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	url := "http://" + ln.Addr().String() + "/metrics"
	done := make(chan int, maxScrapes)
	for range maxScrapes {
		go func() {
			resp, err := http.Get(url)
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	for range maxScrapes {
		select {
		case <-b.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the first scrapes did not start")
		}
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a scrape beyond %d at once got %d, want 503", maxScrapes, resp.StatusCode)
	}
	close(b.release)
	for range maxScrapes {
		if code := <-done; code != 200 {
			t.Errorf("a scrape within the bound got %d, want 200", code)
		}
	}
}

// TestMetricsConnectionsAreBounded: idle connections to the metrics
// address hold at most maxMetricsConns of the server's connections (one
// more is closed at once), each is closed when no request header came in
// time, and a scrape is served once they are gone.
func TestMetricsConnectionsAreBounded(t *testing.T) {
	defer func(d time.Duration) { metricsHeaderTimeout = d }(metricsHeaderTimeout)
	metricsHeaderTimeout = 300 * time.Millisecond
	ln, err := listenMetrics("127.0.0.1:0", net.Listen, prometheus.NewRegistry(), metrics.New(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var idle []net.Conn
	for range maxMetricsConns + 10 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	// Each idle connection is closed by the server: the ones beyond the
	// bound at once, the others once the header timeout passes. A read
	// sees the end either way.
	start := time.Now()
	closedAt := make(chan time.Duration, len(idle))
	for _, c := range idle {
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Error("the server sent bytes to a connection that asked nothing")
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Error("an idle connection was never closed by the server")
			}
			closedAt <- time.Since(start)
		}()
	}
	early := 0
	for range idle {
		if d := <-closedAt; d < metricsHeaderTimeout/2 {
			early++
		}
	}
	if early != 10 {
		t.Errorf("%d of %d idle connections were closed before the header timeout, want the 10 beyond the bound of %d", early, len(idle), maxMetricsConns)
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("a scrape after the idle connections: %d", resp.StatusCode)
	}
}
