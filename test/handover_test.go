package test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// handoverLoad is a container's load during a hand-over: rounds of a
// mkdir, a limit write and read, a listing and an rmdir, counting the
// ones that fail (and saying which), until the file stop is there (and
// at most 100,000 rounds, should the test never make it).
func handoverLoad(v2, stop string) string {
	return fmt.Sprintf(`v=%s; ok=0; fail=0; i=0
while [ ! -e %s ] && [ $i -lt 100000 ]; do
  if mkdir $v/h$i; then ok=$((ok+1)); else fail=$((fail+1)); echo "FAIL mkdir h$i"; fi
  if echo 5 > $v/h$i/cgroup.max.descendants; then ok=$((ok+1)); else fail=$((fail+1)); echo "FAIL write h$i"; fi
  if [ "$(cat $v/h$i/cgroup.max.descendants)" = 5 ]; then ok=$((ok+1)); else fail=$((fail+1)); echo "FAIL read h$i"; fi
  if ls $v > /dev/null; then ok=$((ok+1)); else fail=$((fail+1)); echo "FAIL ls"; fi
  if rmdir $v/h$i; then ok=$((ok+1)); else fail=$((fail+1)); echo "FAIL rmdir h$i"; fi
  i=$((i+1))
done
echo "ok=$ok fail=$fail"`, v2, stop)
}

var loadResult = regexp.MustCompile(`ok=(\d+) fail=(\d+)`)

// serverOf is the daemon a keeper runs now (its one child).
func serverOf(t *testing.T, keeper int) int {
	t.Helper()
	var pid int
	waitFor(t, "the keeper's server", 10*time.Second, func() bool {
		// Each thread lists the children it forked.
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", keeper))
		var f []string
		for _, task := range tasks {
			b, _ := os.ReadFile(task)
			f = append(f, strings.Fields(string(b))...)
		}
		if len(f) != 1 {
			return false
		}
		pid, _ = strconv.Atoi(f[0])
		return pid > 0
	})
	return pid
}

// TestHandoverUnderLoad: containers of a daemon under a keeper go on
// making, writing, reading, listing and removing cgroups while the
// daemon is upgraded twice and its server killed (-9) once: no operation
// fails, and no view is unmounted. Meanwhile cgfs list, cgfs exec and
// cgfs run of new containers ask the daemon: none fails, none is told
// the daemon is not running, and right after the kill the socket
// answers.
func TestHandoverUnderLoad(t *testing.T) {
	requireRoot(t)
	v2 := detectLane(t).cgroup2 // where the view shows it too
	env, keeper := startDaemonCmd(t, "--keep")
	parent := runParent(t)
	names := []string{"h1", "h2", "h3"}
	var runs []*exec.Cmd
	for _, n := range names {
		runs = append(runs, startRun(t, env, "--name", n, "--parent", parent))
	}
	for _, n := range names {
		waitExec(t, env, n, "ls "+v2+" >/dev/null && echo up", "up")
	}
	first := serverOf(t, keeper.Process.Pid)

	var wg sync.WaitGroup
	outs := make([]string, len(names))
	dir := publicDir(t)
	if err := os.Chmod(dir, 0o777); err != nil { // the containers' roots mark their start here
		t.Fatal(err)
	}
	// The load goes on until the upgrades are over (the file stop):
	// made under load by construction, however long they take.
	stopLoad := dir + "/stop"
	t.Cleanup(func() { _ = os.WriteFile(stopLoad, nil, 0o644) }) // a test that ends early
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], _ = cgfsExec(t, env, n, "touch "+dir+"/"+n+"; "+handoverLoad(v2, stopLoad))
		}()
	}
	waitFor(t, "the load under way", 30*time.Second, func() bool {
		for _, n := range names {
			if _, err := os.Stat(dir + "/" + n); err != nil {
				return false
			}
		}
		return true
	})
	stop := make(chan struct{})
	clients := clientsDuring(t, env, names[0], parent, v2, stop)
	for i := 0; i < 2; i++ {
		out, err := cgfsCmd(t, env, "upgrade")
		if err != nil {
			t.Fatalf("cgfs upgrade: %v\n%s", err, out)
		}
		t.Logf("upgrade %d: %s", i+1, strings.TrimSpace(out))
	}
	close(stop)
	c := clients()
	t.Logf("during the upgrades: %d cgfs list, %d cgfs exec, %d cgfs run", c.lists, c.execs, c.runs)
	if len(c.failures) > 0 {
		t.Errorf("%d of the commands asking the daemon failed during the upgrades:\n%s", len(c.failures), strings.Join(c.failures, "\n"))
	}
	if c.lists == 0 || c.execs == 0 || c.runs == 0 {
		t.Errorf("not every kind of command ran during the upgrades: %+v", c)
	}
	if err := os.WriteFile(stopLoad, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	second := serverOf(t, keeper.Process.Pid)
	if second == first {
		t.Errorf("the server is still %d after two upgrades", first)
	}
	wg.Wait()
	if err := syscall.Kill(second, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new server after the kill", 20*time.Second, func() bool {
		p := serverOf(t, keeper.Process.Pid)
		return p != second
	})
	for i, n := range names {
		m := loadResult.FindStringSubmatch(outs[i])
		if m == nil {
			t.Errorf("container %s: no result:\n%s", n, outs[i])
			continue
		}
		if m[2] != "0" {
			t.Errorf("container %s: %s operations failed across the hand-overs:\n%s", n, m[2], outs[i])
		}
		t.Logf("container %s: %s", n, m[0])
	}
	// The keeper holds the socket too: asked at once, the new server
	// answers.
	list, err := cgfsCmd(t, env, "list")
	if err != nil {
		t.Errorf("cgfs list right after the kill: %v\n%s", err, list)
	}
	for _, n := range names {
		if !strings.Contains(list, n+"\t") {
			t.Errorf("view %s is no longer served after the hand-overs: %q", n, list)
		}
		if out, _ := cgfsExec(t, env, n, "ls "+v2+" >/dev/null && echo mounted"); !strings.Contains(out, "mounted") {
			t.Errorf("container %s: its view answers %q after the kill", n, out)
		}
	}
	// What the keeper holds keeps no view alive past its container.
	for _, r := range runs {
		_ = r.Process.Signal(syscall.SIGTERM)
	}
	waitFor(t, "every view dropped once the containers ended", 20*time.Second, func() bool {
		list, err := cgfsCmd(t, env, "list")
		return err == nil && strings.TrimSpace(list) == ""
	})
}

// clientRuns is what clientsDuring ran.
type clientRuns struct {
	lists, execs, runs int
	failures           []string
}

// clientsDuring runs, until stop is closed, what a host's tooling asks
// of the daemon while it hands over, each in a loop: cgfs list, cgfs
// exec into container name, and cgfs run of short containers under
// parent, each of which must be served by the daemon (never in its own
// process because the daemon seemed gone) and see its view at v2. The
// function it returns waits for them.
func clientsDuring(t *testing.T, env []string, name, parent, v2 string, stop <-chan struct{}) func() clientRuns {
	var mu sync.Mutex
	var r clientRuns
	fail := func(format string, args ...any) {
		mu.Lock()
		r.failures = append(r.failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	// cmd runs cgfs with args, bounded: a command left waiting for a
	// server that never comes fails instead of hanging the test.
	cmd := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := exec.CommandContext(ctx, cgfsBin, args...)
		c.Env = append(append(os.Environ(), env...), "CGFS_LOG=info")
		out, err := c.CombinedOutput()
		return string(out), err
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	loop := func(one func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stopped(); i++ {
				one(i)
			}
		}()
	}
	loop(func(int) {
		if out, err := cmd("list"); err != nil || !strings.Contains(out, name+"\t") {
			fail("cgfs list: %v: %s", err, out)
		}
		mu.Lock()
		r.lists++
		mu.Unlock()
	})
	loop(func(int) {
		// Not a listing: the container's own load makes and removes
		// cgroups there, and ls stats each entry it read (ENOENT for one
		// removed in between, as on the kernel's cgroupfs).
		if out, err := cmd("exec", name, "--", "sh", "-c", "cat "+v2+"/cgroup.procs >/dev/null && echo in"); err != nil || !strings.Contains(out, "in") {
			fail("cgfs exec %s: %v: %s", name, err, out)
		}
		mu.Lock()
		r.execs++
		mu.Unlock()
	})
	// Two at a time, each reading its view again a while after it
	// started: one attached while the next server prepares must be
	// served by that one once it took over.
	for _, group := range []string{"a", "b"} {
		loop(func(i int) {
			n := fmt.Sprintf("late-%s%d", group, i)
			procs := "cat " + v2 + "/cgroup.procs >/dev/null"
			out, err := cmd("run", "--name", n, "--parent", parent, "--", "sh", "-c", procs+" && sleep 0.3 && "+procs+" && echo ran")
			if err != nil || !strings.Contains(out, "ran") {
				fail("cgfs run --name %s: %v: %s", n, err, out)
			} else if !strings.Contains(out, "the daemon serves the view") {
				fail("cgfs run --name %s served its view itself: %s", n, out)
			}
			mu.Lock()
			r.runs++
			mu.Unlock()
		})
	}
	return func() clientRuns {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return r
	}
}

// handoverCgroups is how many cgroups the container of
// BenchmarkHandoverPause makes before it is measured.
const handoverCgroups = 300

// BenchmarkHandoverPause: how long a container's requests wait while
// the daemon hands its views over (cgfs upgrade), as the container's
// root sees it: a reader in the container (cgfs exec) reads cgroup.events
// of each of handoverCgroups cgroups and its root in turn, so the new
// server meets nodes it never looked up. Reported: the longest
// open-read-close that overlaps each upgrade, against the reads' usual
// time, p50 and p99 over the upgrades; and the pause the keeper measured
// (from the old daemon drained to the new one serving).
func BenchmarkHandoverPause(b *testing.B) {
	requireRoot(b)
	v2 := detectLane(b).cgroup2 // where the view shows it too
	env, _ := startDaemonCmd(b, "--keep")
	parent := runParent(b)
	startRun(b, env, "--name", "p1", "--parent", parent)
	waitExec(b, env, "p1", "ls "+v2+" >/dev/null && echo up", "up")
	made := fmt.Sprintf("cd %s && i=0; while [ $i -lt %d ]; do mkdir c$i || exit 1; i=$((i+1)); done; echo made", v2, handoverCgroups)
	if out, err := cgfsExec(b, env, "p1", made); err != nil || !strings.Contains(out, "made") {
		b.Fatalf("making %d cgroups in the container: %v\n%s", handoverCgroups, err, out)
	}
	files := []string{v2 + "/cgroup.events"}
	for i := range handoverCgroups {
		files = append(files, fmt.Sprintf("%s/c%d/cgroup.events", v2, i))
	}
	reader := exec.Command(cgfsBin, append([]string{"exec", "p1", "--", "env", helperEnv + "=1", helperBin, "readloop"}, files...)...)
	reader.Env = append(os.Environ(), env...)
	reader.Stderr = os.Stderr
	out, err := reader.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := reader.Start(); err != nil {
		b.Fatal(err)
	}

	var longest, reads atomic.Int64
	var all []time.Duration // the reads' times, for their median
	var mu sync.Mutex
	failed := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ns, err := strconv.ParseInt(sc.Text(), 10, 64)
			if err != nil {
				failed <- sc.Text()
				return
			}
			d := time.Duration(ns)
			for {
				old := longest.Load()
				if int64(d) <= old || longest.CompareAndSwap(old, int64(d)) {
					break
				}
			}
			mu.Lock()
			if len(all) < 1<<20 {
				all = append(all, d)
			}
			mu.Unlock()
			reads.Add(1)
		}
		failed <- "the reader ended"
	}()
	// The reader is under way before the first upgrade.
	waitFor(b, "the container's reader", 10*time.Second, func() bool { return reads.Load() > int64(len(files)) })
	var seen, kept []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		longest.Store(0)
		out, err := cgfsCmd(b, env, "upgrade")
		if err != nil {
			b.Fatalf("cgfs upgrade: %v\n%s", err, out)
		}
		var us int64
		if _, err := fmt.Sscanf(strings.TrimSpace(out), "upgraded: the views waited %d µs", &us); err == nil {
			kept = append(kept, time.Duration(us)*time.Microsecond)
		}
		// A read under way when the upgrade ended counts too.
		n := reads.Load()
		for reads.Load() < n+2 {
			select {
			case why := <-failed:
				b.Fatalf("reading in the container across an upgrade: %s", why)
			case <-time.After(100 * time.Microsecond):
			}
		}
		seen = append(seen, time.Duration(longest.Load()))
	}
	b.StopTimer()
	_ = out.Close()
	_ = reader.Process.Kill()
	_ = reader.Wait()
	mu.Lock()
	usual := percentile(all, 50)
	mu.Unlock()
	b.ReportMetric(float64(percentile(seen, 50).Microseconds()), "p50-longest-read-µs")
	b.ReportMetric(float64(percentile(seen, 99).Microseconds()), "p99-longest-read-µs")
	b.ReportMetric(float64(usual.Microseconds()), "usual-read-µs")
	b.ReportMetric(float64(percentile(kept, 50).Microseconds()), "p50-pause-µs")
	b.ReportMetric(float64(percentile(kept, 99).Microseconds()), "p99-pause-µs")
}

// percentile is the p-th percentile of ds (nearest rank).
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

// TestStormThroughHandover: the storm of TestStorm blows while the
// daemon is upgraded twice (cgfs upgrade): not one of its operations
// fails, and afterwards everything is where the containers put it and
// nothing is left behind (runStorm's checks).
func TestStormThroughHandover(t *testing.T) {
	requireRoot(t)
	n, rounds := stormContainers, stormRounds
	if os.Getenv("CGFS_LANE") == "vm" {
		n, rounds = vmStormContainers, vmStormRounds
	}
	var servers []int
	r := runStorm(t, stormOptions{
		N: n, Rounds: rounds, Keep: true,
		During: func(t *testing.T, s *storm) {
			servers = append(servers, s.daemon.pid())
			// Prometheus scrapes on through the upgrades, at the same
			// address: the keeper holds the metrics socket too.
			addr := s.daemon.metricsAddr()
			stop := make(chan struct{})
			scraped := make(chan []string, 1)
			var scrapes int
			go func() {
				var failed []string
				for {
					select {
					case <-stop:
						scraped <- failed
						return
					default:
					}
					if code, body, err := getFrom(addr, "/metrics"); err != nil || code != 200 {
						failed = append(failed, fmt.Sprintf("%d %v %.200s", code, err, body))
					}
					scrapes++
					time.Sleep(20 * time.Millisecond)
				}
			}()
			defer func() {
				close(stop)
				if failed := <-scraped; len(failed) > 0 {
					t.Errorf("%d of %d scrapes of %s failed across the upgrades:\n%s", len(failed), scrapes, addr, strings.Join(failed, "\n"))
				} else {
					t.Logf("%d scrapes of %s across the upgrades, none failed", scrapes, addr)
				}
			}()
			for i := 0; i < 2; i++ {
				out, err := cgfsCmd(t, s.daemon.env, "upgrade")
				if err != nil {
					t.Errorf("cgfs upgrade during the storm: %v\n%s", err, out)
					return
				}
				t.Logf("upgrade %d during the storm: %s", i+1, strings.TrimSpace(out))
			}
			waitFor(t, "the last server listening", 20*time.Second, func() bool {
				_, err := cgfsCmd(t, s.daemon.env, "list")
				return err == nil
			})
			servers = append(servers, s.daemon.pid())
		},
	})
	if r.Failed != 0 {
		t.Errorf("%d of %d operations failed across the upgrades:\n%s", r.Failed, r.OK+r.Failed, strings.Join(r.Failures, "\n"))
	}
	if !r.HookOverlapped {
		t.Errorf("the upgrades did not happen while every workload was running")
	}
	if len(servers) == 2 && servers[0] == servers[1] {
		t.Errorf("the daemon is still process %d after two upgrades", servers[0])
	}
	t.Logf("storm through two upgrades: %d containers, %d operations, %d failed", n, r.OK+r.Failed, r.Failed)
}

// TestInotifyThroughHandover: inotifywait (inotify-tools) in a container,
// watching cgroup.events since before two upgrades of the daemon, still
// wakes when the kernel freezes the cgroup: the relay's watches are
// handed over too.
func TestInotifyThroughHandover(t *testing.T) {
	requireRoot(t)
	requireTool(t, "inotifywait")
	v2, _, _ := lanePaths(t)
	env, _ := startDaemonCmd(t, "--keep")
	parent := runParent(t)
	startRun(t, env, "--name", "w1", "--parent", parent)
	waitExec(t, env, "w1", "ls "+v2+" >/dev/null && echo up", "up")
	dir := publicDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "inotifywait.out")
	// inotifywait says "Watches established." once it watches.
	watch := fmt.Sprintf(`set -e
J=%s/j
mkdir $J
sleep 1000 </dev/null >/dev/null 2>&1 &
echo $! > $J/cgroup.procs
inotifywait -m -e modify $J/cgroup.events </dev/null > %s 2>&1 &
until grep -q established %[2]s; do sleep 0.05; done
echo watching`, v2, out)
	if said, err := cgfsExec(t, env, "w1", watch); err != nil || !strings.Contains(said, "watching") {
		t.Fatalf("starting inotifywait in the container: %v\n%s", err, said)
	}
	for i := range 2 {
		if said, err := cgfsCmd(t, env, "upgrade"); err != nil {
			t.Fatalf("cgfs upgrade %d: %v\n%s", i+1, err, said)
		}
	}
	freeze := fmt.Sprintf(`J=%s/j
echo 1 > $J/cgroup.freeze
for i in $(seq 100); do
	grep -q MODIFY %s && break
	sleep 0.05
done
echo "events: $(grep -c MODIFY %[2]s); $(grep frozen $J/cgroup.events)"
echo 0 > $J/cgroup.freeze
pkill inotifywait; for p in $(cat $J/cgroup.procs); do kill $p; done
while [ -n "$(cat $J/cgroup.procs)" ]; do sleep 0.05; done
rmdir $J`, v2, out)
	said, err := cgfsExec(t, env, "w1", freeze)
	t.Logf("in the container:\n%s", said)
	if err != nil || !strings.Contains(said, "frozen 1") {
		t.Fatalf("freezing the cgroup: %v", err)
	}
	if strings.Contains(said, "events: 0;") {
		b, _ := os.ReadFile(out)
		t.Errorf("inotifywait, watching since before the upgrades, did not wake on the freeze:\n%s", b)
	}
}
