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
