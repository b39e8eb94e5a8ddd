package test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestRunMetrics: `cgfs run --metrics` exposes its container as an
// operator scrapes it: the requests it made (a refused one too), the
// seccomp notifications its statfs raised, what it uses and its limits
// read from its cgroups, and /healthz; the scrape passes promtool.
func TestRunMetrics(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	// A free port (run logs only errors, so it cannot say which it took).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	script := laneScript + `
mkdir $V2/web
echo 1 > $V2/cgroup.kill 2>/dev/null || true
if stat -f /sys/fs/cgroup > /dev/null 2>&1; then echo ready statfs; else echo ready; fi
read x
`
	cmd := exec.Command(cgfsBin, "run", "--name", "mx", "--parent", parent, "--pids", "50", "--memory", "64M", "--metrics", addr, "--", "sh", "-c", script)
	in, out := startPiped(t, cmd)
	// The first line is read before anything else reads the pipe (a
	// reader racing for it could take it and leave this one waiting).
	r := bufio.NewReader(out)
	line, _ := r.ReadString('\n')
	done := make(chan error, 1)
	go func() { _, _ = io.Copy(io.Discard, r); done <- cmd.Wait() }()
	t.Cleanup(func() {
		in.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	if !strings.HasPrefix(line, "ready") {
		t.Fatalf("the container said %q, not ready", line)
	}
	statfs := 0.0 // a statfs is one notification, where stat(1) is there to make it
	if strings.Contains(line, "statfs") {
		statfs = 1
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	_, text := get("/metrics")
	for _, c := range []struct {
		name  string
		parts []string
		least float64
		exact bool
	}{
		{"cgfs_requests_total", []string{`container="mx"`, `op="mkdir"`, `result="ok"`}, 1, true},
		{"cgfs_refusals_total", []string{`container="mx"`, `rule="root-locked"`}, 1, false},
		{"cgfs_seccomp_notifications_total", nil, statfs, false},
		{"cgfs_view_up", []string{`container="mx"`}, 1, true},
		{"cgfs_container_pids", []string{`container="mx"`}, 1, false},
		{"cgfs_container_pids_limit", []string{`container="mx"`}, 50, true},
		{"cgfs_container_memory_limit_bytes", []string{`container="mx"`}, 64 << 20, true},
		{"cgfs_container_memory_bytes", []string{`container="mx"`}, 1, false},
		{"cgfs_container_cpu_seconds_total", []string{`container="mx"`}, 1e-9, false},
	} {
		got := metricValue(text, c.name, c.parts...)
		if got < c.least || (c.exact && got != c.least) {
			t.Errorf("%s%v = %v, want %v (exactly: %v)", c.name, c.parts, got, c.least, c.exact)
		}
	}
	if code, body := get("/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q, want 200 ok", code, body)
	}
	checkMetricsText(t, text)
}

// TestSeccompNotificationsNeverGoDown: the daemon's count of seccomp
// notifications its agents handled is a counter: a statfs of a process
// cgfs exec started (one notification, answered by the daemon's agent)
// stays counted once that agent is gone (it used to sum the live agents'
// counts alone).
func TestSeccompNotificationsNeverGoDown(t *testing.T) {
	requireRoot(t)
	d := startStormDaemon(t, false)
	parent := runParent(t)
	startRun(t, d.env, "--parent", parent, "--name", "notified")
	// cgfs exec's process: its seccomp listener goes to the daemon.
	waitExec(t, d.env, "notified", "stat -f /sys/fs/cgroup >/dev/null && echo statfs", "statfs")
	// Its agent ends once its filter has no task left: the daemon then
	// holds no seccomp listener (no keeper holds one either).
	waitFor(t, "the container's agent to end", 20*time.Second*laneSlowdown(), func() bool {
		return fdKinds(d.pid())["anon_inode:seccomp notify"] == 0
	})
	if got := metricValue(d.scrape(t), "cgfs_seccomp_notifications_total"); got < 1 {
		t.Errorf("cgfs_seccomp_notifications_total = %v once the container's agent ended, want its statfs (1) still counted", got)
	}
}
