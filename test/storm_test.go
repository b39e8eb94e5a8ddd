package test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A storm: many containers of one `cgfs daemon`, each a `cgfs run`
// container (its own user, pid, mount and cgroup namespaces, its view
// at /sys/fs/cgroup), all changing their cgroup trees at once as fast as
// a shell can: cgroups made and removed, their own processes moved
// between them, limits written, cgroups frozen and thawed, controllers
// enabled and disabled for children. runStorm runs one and checks what
// it leaves: on the host, in the daemon, in the containers.

const (
	// stormContainers is how many containers the daemon serves at once.
	stormContainers = 20
	// stormRounds is how many rounds each workload makes (stormScript;
	// stormPlan.ops counts the operations: 739 a container on the
	// hybrid host). With 20 containers on this project's 2-core
	// machines the rounds take 4-7 s: time enough for a During hook (a
	// daemon restart, say) while they run.
	stormRounds = 25
	// The VM lane emulates its CPUs (FACTS: code 30-200x slower than
	// here), where the storm above would take a quarter of an hour of
	// the lane's half hour: there it is 4 containers of 5 rounds, every
	// operation on a pure cgroup v2 tree (memory.max, pids.max, +pids)
	// at once, in a minute or two.
	vmStormContainers = 4
	vmStormRounds     = 5
	// warmupRounds is the warm-up container's: every path once or twice.
	warmupRounds = 2
)

// TestStorm: 20 containers of one daemon each make 25 rounds of cgroup
// changes at once (739 operations each on the hybrid host) and not one
// fails; afterwards every process is in the cgroup its container last
// put it in, no hidden leaf is left where none is needed, and each
// container's host subtree holds only what the container made; once the
// containers end, nothing of theirs is left on the host and the
// daemon's goroutines, descriptors and memory are back to what they
// were after one warm-up container.
func TestStorm(t *testing.T) {
	requireRoot(t)
	start := time.Now()
	n, rounds := stormContainers, stormRounds
	if os.Getenv("CGFS_LANE") == "vm" {
		n, rounds = vmStormContainers, vmStormRounds
	}
	r := runStorm(t, stormOptions{
		N:      n,
		Rounds: rounds,
		// While the storm blows, the daemon still answers its operator.
		During: func(t *testing.T, s *storm) {
			code, body := s.daemon.get(t, "/healthz")
			if code != http.StatusOK || strings.TrimSpace(body) != "ok" {
				t.Errorf("/healthz during the storm = %d %q, want 200 ok", code, body)
			}
			text := s.daemon.scrape(t)
			if got := metricValue(text, "cgfs_views"); got != float64(n) {
				t.Errorf("cgfs_views during the storm = %v, want %d", got, n)
			}
			if got := metricValue(text, "cgfs_view_up"); got != float64(n) {
				t.Errorf("cgfs_view_up summed during the storm = %v, want %d", got, n)
			}
		},
	})
	if r.Failed != 0 {
		t.Errorf("%d of %d operations failed:\n%s", r.Failed, r.OK+r.Failed, strings.Join(r.Failures, "\n"))
	}
	if !r.HookOverlapped {
		t.Errorf("the During hook did not run while every workload was running")
	}
	t.Logf("storm: %d containers, %d operations (%d failed) in %v, %.0f ops/s; test %v",
		n, r.OK+r.Failed, r.Failed, r.Storm.Round(time.Millisecond),
		float64(r.OK+r.Failed)/r.Storm.Seconds(), time.Since(start).Round(time.Millisecond))
}

// stormOptions is one storm.
type stormOptions struct {
	N      int // containers
	Rounds int // rounds of each workload
	// During, if set, runs once every workload has made its first
	// round and before any has made its last; the workloads do not wait
	// for it. A hook that restarts the daemon stops it with
	// s.daemon.stopServer(t, s.daemon.server) and starts the next with
	// s.daemon.start(t) (same socket; metrics on a new port, which
	// scrape finds in the log).
	During func(t *testing.T, s *storm)
	// Keep runs the daemon under a keeper (cgfs daemon --keep), for
	// hooks that upgrade or kill it; the daemon's pid is then the
	// keeper's server's.
	Keep bool
}

// stormResult is what a storm's workloads counted, and what the daemon
// used before, at the height of it and after.
type stormResult struct {
	OK, Failed int
	// Failures are the failed operations, each with what the shell said
	// of it (the errno's text) and, where the text names one, the errno.
	Failures []string
	// Storm is the time from the start barrier to the last workload's
	// last operation.
	Storm time.Duration
	// HookOverlapped says that During returned before any workload had
	// made its last operation.
	HookOverlapped bool
	// Baseline is the daemon's use after the warm-up container, Loaded
	// with the storm's containers at their end barrier, After once they
	// ended and their views were dropped.
	Baseline, Loaded, After daemonUse
}

// storm is a running storm, for During hooks.
type storm struct {
	daemon *stormDaemon
	plan   stormPlan
	parent string
	lane   lane
}

// runStorm starts a daemon, runs one warm-up container through it and
// takes the daemon's use as the baseline, then runs opts.N containers
// at once, each a workload of opts.Rounds rounds (stormScript), and
// checks:
//   - every workload ran every operation (each counts ok and failed;
//     the counts are returned, failures with the shell's message);
//   - while they wait at their end barrier: every process of each
//     container is in the cgroup the workload last put it in (the host's
//     /proc/PID/cgroup, every hierarchy), in its hidden leaf exactly
//     where the cgroup enables controllers; no leaf is left where its
//     cgroup enables none; each container's host subtree holds only the
//     cgroups the workload kept and their leaves; the daemon's leaf
//     count agrees;
//   - once they end: nothing of the test's prefix is left in any
//     hierarchy, the daemon dropped every view and has no helper left,
//     and its goroutines, open descriptors and resident memory are back
//     to the baseline (see checkBackToBaseline for the tolerances).
func runStorm(t *testing.T, opts stormOptions) stormResult {
	t.Helper()
	l := detectLane(t)
	s := &storm{plan: planStorm(t, l), parent: stormParent(t, l), lane: l}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		skip(t, "no busybox for the storm's workloads (Debian's busybox-static; .ci/run installs it)")
	}
	s.daemon = startStormDaemon(t, opts.Keep)

	warm := s.wave(t, busybox, []string{"warmup"}, warmupRounds, nil)
	if warm.Failed != 0 {
		t.Errorf("%d of the warm-up container's operations failed:\n%s", warm.Failed, strings.Join(warm.Failures, "\n"))
	}
	var r stormResult
	r.Baseline = s.daemon.use(t)
	r.Baseline.Fds = fdKinds(s.daemon.pid())
	names := make([]string, opts.N)
	for i := range names {
		names[i] = fmt.Sprintf("storm%d", i)
	}
	w := s.wave(t, busybox, names, opts.Rounds, opts.During)
	r.OK, r.Failed, r.Failures, r.Storm, r.HookOverlapped, r.Loaded = w.OK, w.Failed, w.Failures, w.Storm, w.HookOverlapped, w.Loaded
	r.After = s.checkBackToBaseline(t, r.Baseline, r.Loaded)
	return r
}

// stormParent is the parent cgroup of the storm's containers (cgfs run
// makes it in every hierarchy and removes it with the last container);
// whatever is left of it when the test ends is an error, and removed.
// (runParent checks for cgfs mounts too, but any test's on the machine
// counts there; the daemon's views here are only ever in the
// containers' mount namespaces.)
func stormParent(t *testing.T, l lane) string {
	t.Helper()
	p := fmt.Sprintf("cgfs-test-%s-%d", sanitize(t.Name()), os.Getpid())
	t.Cleanup(func() {
		for _, root := range append([]string{l.cgroup2}, values(l.v1)...) {
			dir := filepath.Join(root, p)
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("cgfs left %s on the host", dir)
				if err := removeCgroupTree(dir); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
	})
	return p
}

// stormLimit is a limit file a workload writes in each round's cgroup,
// in hierarchy hier (a v1 one; "" for cgroup v2).
type stormLimit struct{ hier, file, value string }

// stormPlan is what the workloads do on this lane's machine.
type stormPlan struct {
	v2       string       // the view's cgroup v2 tree, as the container sees it
	rootOn   []string     // controllers the container's root enables for its children
	toggle   string       // the controller each round enables and disables again
	v2Limits []stormLimit // written (and read back) in each round's cgroup
	// v1Move are the v1 hierarchies the workload moves its sleeper
	// through; v1Self those it moves itself through too (not the
	// freezer: it freezes the sleeper there).
	v1Move, v1Self []string
	v1Limits       []stormLimit
	v1Freezer      bool
}

// planStorm picks what the lane offers: on a pure v2 machine pids and
// memory on v2; on the hybrid host hugetlb on v2 (its only controller
// there) and memory, pids and the freezer on v1.
func planStorm(t *testing.T, l lane) stormPlan {
	t.Helper()
	p := stormPlan{v2: cg}
	if len(l.v1) > 0 {
		p.v2 = cg + "/" + filepath.Base(l.cgroup2)
	}
	if l.controllers["pids"] {
		p.toggle = "pids"
		p.rootOn = append(p.rootOn, "pids")
		p.v2Limits = append(p.v2Limits, stormLimit{file: "pids.max", value: "50"})
	}
	if l.controllers["memory"] {
		p.rootOn = append(p.rootOn, "memory")
		p.v2Limits = append(p.v2Limits, stormLimit{file: "memory.max", value: strconv.Itoa(64 << 20)})
	}
	if l.controllers["hugetlb"] && p.toggle == "" {
		size, name := hugePageSize(t)
		p.toggle = "hugetlb"
		p.rootOn = append(p.rootOn, "hugetlb")
		p.v2Limits = append(p.v2Limits, stormLimit{file: "hugetlb." + name + ".max", value: strconv.FormatInt(2*size, 10)})
	}
	if p.toggle == "" {
		skip(t, "no controller on cgroup v2 to enable for children (needs pids or hugetlb)")
	}
	for _, h := range []string{"memory", "pids", "freezer"} {
		if _, ok := l.v1[h]; !ok {
			continue
		}
		p.v1Move = append(p.v1Move, h)
		switch h {
		case "memory":
			p.v1Self = append(p.v1Self, h)
			p.v1Limits = append(p.v1Limits, stormLimit{h, "memory.limit_in_bytes", strconv.Itoa(64 << 20)})
		case "pids":
			p.v1Self = append(p.v1Self, h)
			p.v1Limits = append(p.v1Limits, stormLimit{h, "pids.max", "50"})
		case "freezer":
			p.v1Freezer = true
		}
	}
	return p
}

// hugePageSize is the smallest huge page size of the machine, in bytes
// and as hugetlb's file names spell it (2MB).
func hugePageSize(t *testing.T) (int64, string) {
	t.Helper()
	entries, err := os.ReadDir("/sys/kernel/mm/hugepages")
	if err != nil {
		t.Fatalf("hugetlb without huge page sizes: %v", err)
	}
	best := int64(0)
	for _, e := range entries {
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(e.Name(), "hugepages-"), "kB"), 10, 64)
		if err == nil && (best == 0 || kb < best) {
			best = kb
		}
	}
	if best == 0 {
		t.Fatal("no huge page size in /sys/kernel/mm/hugepages")
	}
	switch {
	case best%(1<<20) == 0:
		return best << 10, fmt.Sprintf("%dGB", best>>20)
	case best%(1<<10) == 0:
		return best << 10, fmt.Sprintf("%dMB", best>>10)
	}
	return best << 10, fmt.Sprintf("%dKB", best)
}

// ops is how many operations a workload of rounds rounds makes, as
// stormScript makes them.
func (p stormPlan) ops(rounds int) int {
	v1m, v1s := len(p.v1Move), len(p.v1Self)
	round := 2 + 1 + 2*v1m + // mkdir r, r/f; the sleeper in
		1 + len(p.v2Limits) + 2 + 2 + // the shell in; limits; toggle; freeze and thaw
		v1s + len(p.v1Limits) + // the shell in on v1; v1 limits
		1 + v1s // the shell home
	if p.v1Freezer {
		round += 2
	}
	removal := 2 + v1m // the previous round's cgroups
	end := 2 + 1 + 2*v1m + removal + 1 + 1 + v1s
	return 1 + rounds*round + (rounds-1)*removal + end
}

// header is the workload's parameters, as shell.
func (p stormPlan) header(rounds int) string {
	words := func(ls []stormLimit) string {
		var w []string
		for _, l := range ls {
			s := l.file + "=" + l.value
			if l.hier != "" {
				s = l.hier + ":" + s
			}
			w = append(w, s)
		}
		return strings.Join(w, " ")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "C=%s\nV2=%s\n", cg, p.v2)
	on := make([]string, len(p.rootOn))
	for i, c := range p.rootOn {
		on[i] = "+" + c
	}
	fmt.Fprintf(&b, "ROOTON='%s'\nCTRL=%s\nV2LIM='%s'\nV1LIM='%s'\n", strings.Join(on, " "), p.toggle, words(p.v2Limits), words(p.v1Limits))
	fmt.Fprintf(&b, "V1MOVE='%s'\nV1SELF='%s'\n", strings.Join(p.v1Move, " "), strings.Join(p.v1Self, " "))
	freezer := ""
	if p.v1Freezer {
		freezer = "1"
	}
	fmt.Fprintf(&b, "FREEZER=%s\nROUNDS=%d\n", freezer, rounds)
	return b.String()
}

// stormScript is a storm workload, run by busybox sh as the container's
// root after the parameters (stormPlan.header). Its output is the
// protocol: "ready" once set up (then it waits for a line: the start
// barrier), "running" after its first round, "FAIL CMD" after the
// shell's own message for each failed operation, then "result ok=N
// failed=M", "final PID CGROUP" for each process and hierarchy it last
// moved it in, and "done" (then it waits for the end of its input: the
// end barrier). It exits 0 if no operation failed.
//
// Round i makes r<i> (and r<i>/f) in the v2 tree and r<i> in each v1
// hierarchy of V1MOVE, moves the sleeper there from round i-1's, removes
// round i-1's cgroups, then moves itself in, writes limits (read back),
// enables and disables CTRL for r<i>'s children (a hidden leaf made and
// folded, as it is in r<i> itself), freezes and thaws the sleeper, and
// goes home to the root. mkdir and rmdir fork (busybox applets): they
// run while the shell is at home, in cgroups never removed, so that no
// task that just exited keeps a cgroup being removed busy; away from
// home only builtins run. The end keeps keep (with a leaf: the shell is
// in it, and it enables CTRL) and keep/inner (the sleeper's).
const stormScript = `
ok=0 failed=0
# op CMD...: one operation, counted; a failure says FAIL and the
# command right after the shell's own message (stderr is this pipe).
op() {
	if "$@"; then ok=$((ok + 1)); else failed=$((failed + 1)); echo "FAIL $*"; fi
}
# w VALUE FILE: one write(2), as echo makes it.
w() { echo "$1" >"$2"; }
# limit FILE VALUE: writes a limit and reads it back.
limit() {
	echo "$2" >"$1" || return 1
	read -r got <"$1" || return 1
	[ "$got" = "$2" ] && return 0
	echo "$1 reads $got after $2 was written" >&2
	return 1
}
# says FILE KEY VALUE: cgroup.events (its two lines) says KEY VALUE
# within a bounded number of reads (freezing completes asynchronously);
# a read that fails fails the operation.
says() {
	n=0
	while [ $n -lt 100000 ]; do
		{ read -r k1 v1 && read -r k2 v2; } <"$1" || return 1
		[ "$k1 $v1" = "$2 $3" ] || [ "$k2 $v2" = "$2 $3" ] && return 0
		n=$((n + 1))
	done
	echo "$1 never said $2 $3" >&2
	return 1
}
# is FILE VALUE: FILE reads VALUE within a bounded number of reads.
is() {
	n=0
	while [ $n -lt 100000 ]; do
		read -r v <"$1" || return 1
		[ "$v" = "$2" ] && return 0
		n=$((n + 1))
	done
	echo "$1 never read $2 (last $v)" >&2
	return 1
}
freeze() { w "$2" "$1/cgroup.freeze" && says "$1/cgroup.events" frozen "$2"; }
v1freeze() { w "$2" "$1/freezer.state" && is "$1/freezer.state" "$2"; }

round() {
	d=$V2/r$1
	op mkdir "$d"
	op mkdir "$d/f"
	op w "$S" "$d/f/cgroup.procs"
	for h in $V1MOVE; do
		op mkdir "$C/$h/r$1"
		op w "$S" "$C/$h/r$1/cgroup.procs"
	done
	if [ -n "$2" ]; then
		op rmdir "$V2/$2/f"
		op rmdir "$V2/$2"
		for h in $V1MOVE; do op rmdir "$C/$h/$2"; done
	fi
	# Away from home: builtins only.
	op w $$ "$d/cgroup.procs"
	for l in $V2LIM; do op limit "$d/${l%%=*}" "${l#*=}"; done
	op w "+$CTRL" "$d/cgroup.subtree_control"
	op w "-$CTRL" "$d/cgroup.subtree_control"
	op freeze "$d/f" 1
	op freeze "$d/f" 0
	for h in $V1SELF; do op w $$ "$C/$h/r$1/cgroup.procs"; done
	for l in $V1LIM; do
		h=${l%%:*} l=${l#*:}
		op limit "$C/$h/r$1/${l%%=*}" "${l#*=}"
	done
	if [ -n "$FREEZER" ]; then
		op v1freeze "$C/freezer/r$1" FROZEN
		op v1freeze "$C/freezer/r$1" THAWED
	fi
	op w $$ "$V2/cgroup.procs"
	for h in $V1SELF; do op w $$ "$C/$h/cgroup.procs"; done
}

op w "$ROOTON" "$V2/cgroup.subtree_control"
sleep 1000 &
S=$!
echo ready
read -r x
i=1 p=
while [ $i -le $ROUNDS ]; do
	round $i "$p"
	[ $i = 1 ] && echo running
	p=r$i i=$((i + 1))
done
op mkdir "$V2/keep"
op mkdir "$V2/keep/inner"
op w "$S" "$V2/keep/inner/cgroup.procs"
for h in $V1MOVE; do
	op mkdir "$C/$h/keep"
	op w "$S" "$C/$h/keep/cgroup.procs"
done
op rmdir "$V2/$p/f"
op rmdir "$V2/$p"
for h in $V1MOVE; do op rmdir "$C/$h/$p"; done
op w $$ "$V2/keep/cgroup.procs"
op w "+$CTRL" "$V2/keep/cgroup.subtree_control"
for h in $V1SELF; do op w $$ "$C/$h/keep/cgroup.procs"; done
echo "result ok=$ok failed=$failed"
echo "final $$ $V2/keep"
echo "final $S $V2/keep/inner"
for h in $V1SELF; do echo "final $$ $C/$h/keep"; done
for h in $V1MOVE; do echo "final $S $C/$h/keep"; done
echo done
read -r x
kill "$S"
exit $((failed > 0))
`

// stormWorkload is one container of a storm: a `cgfs run` whose init is
// the workload shell.
type stormWorkload struct {
	name   string
	cmd    *exec.Cmd
	in     io.WriteCloser
	mu     sync.Mutex
	lines  []string      // what it printed, stdout and stderr in order
	closed chan struct{} // its output ended
	exited chan struct{}
	err    error // cmd.Wait's, once exited
}

func (w *stormWorkload) output() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.lines)
}

// said reports whether the workload printed the line want.
func (w *stormWorkload) said(want string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(w.lines, want)
}

func (w *stormWorkload) hasExited() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

// startWorkload starts container name's cgfs run with the workload.
func (s *storm) startWorkload(t *testing.T, busybox, name string, rounds int) *stormWorkload {
	t.Helper()
	script := s.plan.header(rounds) + stormScript
	cmd := exec.Command(cgfsBin, "run", "--name", name, "--parent", s.parent, "--", busybox, "sh", "-c", script)
	cmd.Env = append(os.Environ(), s.daemon.env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	w := &stormWorkload{name: name, cmd: cmd, in: in, closed: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatal(err)
	}
	pw.Close()
	go func() {
		defer close(w.closed)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			w.mu.Lock()
			w.lines = append(w.lines, sc.Text())
			w.mu.Unlock()
		}
	}()
	go func() {
		<-w.closed // Wait closes nothing of ours, but the output is read first
		w.err = cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		// The end barrier is the end of its input; a container that
		// does not end then is stopped as cgfs run is (its second
		// SIGTERM kills the init), and last killed.
		in.Close()
		for _, sig := range []syscall.Signal{0, syscall.SIGTERM, syscall.SIGTERM, syscall.SIGKILL} {
			if sig != 0 {
				_ = cmd.Process.Signal(sig)
			}
			select {
			case <-w.exited:
				return
			case <-time.After(10 * time.Second):
			}
		}
		t.Errorf("container %s did not end", name)
	})
	return w
}

// waveResult is what one wave of containers did.
type waveResult struct {
	OK, Failed     int
	Failures       []string
	Storm          time.Duration
	HookOverlapped bool
	Loaded         daemonUse
}

// wave runs the containers names at once through the whole protocol and
// checks them (runStorm says what).
func (s *storm) wave(t *testing.T, busybox string, names []string, rounds int, during func(*testing.T, *storm)) waveResult {
	t.Helper()
	slow := laneSlowdown()
	start := time.Now()
	ws := make([]*stormWorkload, len(names))
	for i, n := range names {
		ws[i] = s.startWorkload(t, busybox, n, rounds)
	}
	// The start barrier: every container up, its view attached, its
	// workload set up.
	s.waitAll(t, ws, "ready", time.Duration(len(ws))*3*time.Second*slow)
	began := time.Now()
	t.Logf("%d containers up and ready in %v", len(ws), began.Sub(start).Round(time.Millisecond))
	for _, w := range ws {
		if _, err := io.WriteString(w.in, "go\n"); err != nil {
			t.Fatalf("container %s: the start barrier: %v", w.name, err)
		}
	}
	var r waveResult
	if during != nil {
		s.waitAll(t, ws, "running", 60*time.Second*slow)
		during(t, s)
		r.HookOverlapped = true
		for _, w := range ws {
			if w.said("done") || w.hasExited() {
				r.HookOverlapped = false
			}
		}
	}
	s.waitAll(t, ws, "done", 120*time.Second*slow)
	r.Storm = time.Since(began)

	// At the end barrier: what each did, and where it left things.
	want := s.plan.ops(rounds)
	for _, w := range ws {
		ok, failed, failures := parseWorkload(t, w)
		if ok+failed != want {
			t.Errorf("container %s counted %d operations, want %d:\n%s", w.name, ok+failed, want, strings.Join(w.output(), "\n"))
		}
		r.OK += ok
		r.Failed += failed
		r.Failures = append(r.Failures, failures...)
	}
	text := s.daemon.scrape(t)
	for _, w := range ws {
		s.checkPlacement(t, w, text)
	}
	r.Loaded = s.daemon.useOf(t, text)

	// The end: every container ends, with what it made.
	for _, w := range ws {
		w.in.Close()
	}
	for _, w := range ws {
		select {
		case <-w.exited:
		case <-time.After(30 * time.Second * slow):
			t.Fatalf("container %s did not end after its end barrier:\n%s", w.name, strings.Join(w.output(), "\n"))
		}
		if w.err != nil && r.Failed == 0 {
			t.Errorf("container %s: cgfs run: %v\n%s", w.name, w.err, strings.Join(w.output(), "\n"))
		}
	}
	for _, root := range append([]string{s.lane.cgroup2}, values(s.lane.v1)...) {
		if _, err := os.Stat(filepath.Join(root, s.parent)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after its containers ended, %s is still there (%v)", filepath.Join(root, s.parent), err)
		}
	}
	waitFor(t, "the daemon to drop the ended containers' views", 20*time.Second*slow, func() bool {
		list, err := cgfsCmd(t, s.daemon.env, "list")
		return err == nil && strings.TrimSpace(list) == ""
	})
	t.Logf("%d containers: storm %v, checked, ended and dropped %v after the start barrier", len(ws), r.Storm.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	return r
}

// laneSlowdown is how much slower the lane's machine runs the suite:
// the VM lane emulates its CPUs (FACTS: code 30-200x slower).
func laneSlowdown() time.Duration {
	if os.Getenv("CGFS_LANE") == "vm" {
		return 40
	}
	return 1
}

// waitAll waits until every workload has printed the line want; one
// that ends first fails the test with what it said.
func (s *storm) waitAll(t *testing.T, ws []*stormWorkload, want string, timeout time.Duration) {
	t.Helper()
	var early *stormWorkload
	waitFor(t, fmt.Sprintf("every container to say %q", want), timeout, func() bool {
		all := true
		for _, w := range ws {
			if w.said(want) {
				continue
			}
			all = false
			if w.hasExited() {
				early = w
				return true
			}
		}
		return all
	})
	if early != nil {
		t.Fatalf("container %s ended (%v) before it said %q:\n%s", early.name, early.err, want, strings.Join(early.output(), "\n"))
	}
}

// parseWorkload reads a workload's counts and its failures, each with
// the line before it (the shell's message, naming the errno's text).
func parseWorkload(t *testing.T, w *stormWorkload) (ok, failed int, failures []string) {
	t.Helper()
	lines := w.output()
	counted := false
	for i, line := range lines {
		if cmd, isFail := strings.CutPrefix(line, "FAIL "); isFail {
			said := ""
			if i > 0 && !strings.HasPrefix(lines[i-1], "FAIL ") {
				said = lines[i-1]
			}
			failures = append(failures, fmt.Sprintf("%s: %s: %s%s", w.name, cmd, said, errnoNamed(said)))
		}
		if n, _ := fmt.Sscanf(line, "result ok=%d failed=%d", &ok, &failed); n == 2 {
			counted = true
		}
	}
	if !counted {
		t.Errorf("container %s counted nothing:\n%s", w.name, strings.Join(lines, "\n"))
	}
	return ok, failed, failures
}

// errnoNamed names the errno whose text ends msg (" (EBUSY)"), if any.
func errnoNamed(msg string) string {
	for e := syscall.Errno(1); e < 134; e++ {
		if text := e.Error(); text != "" && strings.HasSuffix(strings.ToLower(msg), strings.ToLower(text)) {
			return " (" + errnoName(e) + ")"
		}
	}
	return ""
}

func errnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return strconv.Itoa(int(e))
}

// finals is where a workload says it last put each of its processes:
// container pid -> hierarchy ("" for cgroup v2, else the v1 one's name)
// -> cgroup path in the view's hierarchy ("/keep").
func (s *storm) finals(t *testing.T, w *stormWorkload) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, line := range w.output() {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "final" {
			continue
		}
		hier, path, ok := s.viewHierarchy(f[2])
		if !ok {
			t.Fatalf("container %s: final %s is in no hierarchy of the view", w.name, f[2])
		}
		if out[f[1]] == nil {
			out[f[1]] = map[string]string{}
		}
		out[f[1]][hier] = path
	}
	return out
}

// viewHierarchy splits a path of the view into its hierarchy ("" for
// cgroup v2) and the cgroup's path in it.
func (s *storm) viewHierarchy(p string) (hier, path string, ok bool) {
	if rest, found := strings.CutPrefix(p, s.plan.v2); found && (rest == "" || rest[0] == '/') {
		return "", "/" + strings.TrimPrefix(rest, "/"), true
	}
	for h := range s.lane.v1 {
		if rest, found := strings.CutPrefix(p, cg+"/"+h); found && (rest == "" || rest[0] == '/') {
			return h, "/" + strings.TrimPrefix(rest, "/"), true
		}
	}
	return "", "", false
}

// hostDir is container name's host cgroup in hierarchy hier.
func (s *storm) hostDir(name, hier string) string {
	root := s.lane.cgroup2
	if hier != "" {
		root = s.lane.v1[hier]
	}
	return filepath.Join(root, s.parent, name)
}

// checkPlacement checks, at a workload's end barrier, its processes'
// cgroups and its host subtrees (runStorm says what); text is a scrape
// of the daemon meanwhile.
func (s *storm) checkPlacement(t *testing.T, w *stormWorkload, text string) {
	t.Helper()
	finals := s.finals(t, w)
	members, helpers := s.containerProcesses(t, w)
	if got, want := slices.Sorted(maps.Keys(members)), slices.Sorted(maps.Keys(finals)); !slices.Equal(got, want) {
		t.Errorf("container %s has processes %v (container pids), its workload left %v", w.name, got, want)
	}
	// The v2 cgroups that enable controllers hold their processes in
	// their hidden leaves (translate.LeafName: subtree.go, procs.go).
	enables := func(vpath string) bool {
		b, err := os.ReadFile(filepath.Join(s.hostDir(w.name, ""), vpath, "cgroup.subtree_control"))
		return err == nil && strings.TrimSpace(string(b)) != ""
	}
	inV2 := map[int]bool{}
	for cpid, hostPid := range members {
		got := hostCgroups(t, hostPid)
		for hier := range got {
			vpath := "/"
			if p, ok := finals[cpid][hier]; ok {
				vpath = p
			}
			want := filepath.Join("/", s.parent, w.name, vpath)
			if hier == "" && enables(vpath) {
				want = filepath.Join(want, leafName)
			}
			if got[hier] != want {
				t.Errorf("container %s: process %s (host %d) is in %s of hierarchy %q, want %s (its workload last put it in %s)",
					w.name, cpid, hostPid, got[hier], hierName(hier), want, vpath)
			}
		}
		for hier := range finals[cpid] {
			if _, ok := got[hier]; !ok {
				t.Errorf("container %s: process %s is in no cgroup of hierarchy %q", w.name, cpid, hierName(hier))
			}
		}
		inV2[hostPid] = true
	}
	// And nothing else is in the container's cgroups: not cgfs's own
	// helpers in its pid namespace, nor anyone from outside.
	for _, hostPid := range helpers {
		if p := hostCgroups(t, hostPid)[""]; strings.HasPrefix(p+"/", "/"+s.parent+"/") {
			t.Errorf("container %s: the daemon's helper %d is in the container's cgroup %s", w.name, hostPid, p)
		}
	}
	var listed []int
	walkCgroups(t, s.hostDir(w.name, ""), func(dir string) {
		for _, f := range strings.Fields(readFile(t, filepath.Join(dir, "cgroup.procs"))) {
			n, _ := strconv.Atoi(f)
			listed = append(listed, n)
		}
	})
	for _, n := range listed {
		if !inV2[n] {
			t.Errorf("container %s: host process %d is in its cgroups but no process of its own", w.name, n)
		}
	}
	if len(listed) != len(inV2) {
		t.Errorf("container %s: its host cgroups list %v, its processes are %v", w.name, listed, members)
	}

	// What the leaves follow: the workload left its root enabling
	// rootOn, keep the toggled controller, keep/inner nothing.
	for vpath, want := range map[string][]string{"/": s.plan.rootOn, "/keep": {s.plan.toggle}, "/keep/inner": nil} {
		b, err := os.ReadFile(filepath.Join(s.hostDir(w.name, ""), vpath, "cgroup.subtree_control"))
		if got := strings.Fields(string(b)); err != nil || !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
			t.Errorf("container %s: host %s enables %v (%v), want %v", w.name, vpath, got, err, want)
		}
	}

	// The host subtrees: only what the workload kept, and leaves only
	// where their cgroup enables controllers (foldLocked's rule: a leaf
	// goes once its cgroup enables nothing).
	for _, hier := range append([]string{""}, slices.Sorted(maps.Keys(s.lane.v1))...) {
		want := []string{"/"}
		if hier == "" || slices.Contains(s.plan.v1Move, hier) {
			want = append(want, "/keep")
		}
		if hier == "" {
			want = append(want, "/keep/inner")
		}
		base := s.hostDir(w.name, hier)
		var got []string
		leaves := 0
		walkCgroups(t, base, func(dir string) {
			rel := "/" + strings.TrimPrefix(strings.TrimPrefix(dir, base), "/")
			if filepath.Base(dir) == leafName {
				leaves++
				parent := filepath.Dir(rel)
				switch {
				case hier != "":
					t.Errorf("container %s: a hidden leaf %s on cgroup v1 (%s)", w.name, dir, hier)
				case !enables(parent):
					t.Errorf("container %s: hidden leaf %s leaked: %s enables no controller", w.name, dir, parent)
				}
				return
			}
			got = append(got, rel)
		})
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Errorf("container %s: its host cgroups in hierarchy %q are %v, want %v", w.name, hierName(hier), got, want)
		}
		if hier == "" {
			if m := metricValue(text, "cgfs_hidden_leaves", `container="`+w.name+`"`); int(m) != leaves {
				t.Errorf("container %s: the daemon counts %v hidden leaves, the host has %d", w.name, m, leaves)
			}
		}
	}
}

func hierName(h string) string {
	if h == "" {
		return "cgroup v2"
	}
	return h
}

// walkCgroups visits host cgroup dir and every cgroup below it.
func walkCgroups(t *testing.T, dir string, visit func(dir string)) {
	t.Helper()
	visit(dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			walkCgroups(t, filepath.Join(dir, e.Name()), visit)
		}
	}
}

// hostCgroups is host process pid's cgroup in each hierarchy ("" for
// cgroup v2, else the v1 hierarchy's name as the lane knows it), read
// from /proc/PID/cgroup.
func hostCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(readFile(t, fmt.Sprintf("/proc/%d/cgroup", pid))), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			t.Fatalf("/proc/%d/cgroup: bad line %q", pid, line)
		}
		out[strings.TrimPrefix(f[1], "name=")] = f[2]
	}
	return out
}

// containerProcesses finds the processes of workload w's container: its
// init (the shell cgfs run started) and every process of its pid
// namespace, by container pid, but the daemon's helpers there, which
// come back apart.
func (s *storm) containerProcesses(t *testing.T, w *stormWorkload) (members map[string]int, helpers []int) {
	t.Helper()
	init := initOf(t, w.cmd)
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		t.Fatal(err)
	}
	members = map[string]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if other, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err != nil || other != ns {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		var nspid []string
		ppid := 0
		for _, line := range strings.Split(string(status), "\n") {
			if f, ok := strings.CutPrefix(line, "NSpid:"); ok {
				nspid = strings.Fields(f)
			}
			if f, ok := strings.CutPrefix(line, "PPid:"); ok {
				ppid, _ = strconv.Atoi(strings.TrimSpace(f))
			}
		}
		if len(nspid) < 2 {
			continue
		}
		if ppid == s.daemon.pid() {
			helpers = append(helpers, pid)
			continue
		}
		members[nspid[len(nspid)-1]] = pid
	}
	return members, helpers
}

// daemonUse is what the daemon uses, as its metrics say, and its open
// descriptors by kind (read from /proc/PID/fd, to say what is left).
type daemonUse struct {
	Goroutines, OpenFds float64
	Resident            float64        // bytes
	HeapGoal            float64        // bytes: go_memstats_next_gc_bytes, twice the live heap after the last collection
	GCs                 float64        // collections so far
	Procs               float64        // GOMAXPROCS
	Fds                 map[string]int // if read (fdKinds)
}

func (u daemonUse) String() string {
	return fmt.Sprintf("%.0f goroutines, %.0f open fds, %.1f MiB resident (heap goal %.1f MiB after %.0f collections)",
		u.Goroutines, u.OpenFds, u.Resident/(1<<20), u.HeapGoal/(1<<20), u.GCs)
}

// use scrapes the daemon's use.
func (d *stormDaemon) use(t *testing.T) daemonUse {
	t.Helper()
	return d.useOf(t, d.scrape(t))
}

func (d *stormDaemon) useOf(t *testing.T, text string) daemonUse {
	t.Helper()
	u := daemonUse{
		Goroutines: metricValue(text, "go_goroutines"),
		OpenFds:    metricValue(text, "process_open_fds"),
		Resident:   metricValue(text, "process_resident_memory_bytes"),
		HeapGoal:   metricValue(text, "go_memstats_next_gc_bytes"),
		GCs:        metricValue(text, "go_gc_duration_seconds_count"),
		Procs:      metricValue(text, "go_sched_gomaxprocs_threads"),
	}
	if u.Goroutines == 0 || u.OpenFds == 0 || u.Resident == 0 || u.HeapGoal == 0 {
		t.Fatalf("the daemon's metrics lack the Go and process collectors' go_goroutines, process_open_fds, process_resident_memory_bytes, go_memstats_next_gc_bytes:\n%s", text)
	}
	return u
}

// fdKinds counts process pid's open descriptors by what they are, ids
// left out ("socket", "anon_inode:[eventpoll]", knownTaskPin).
func fdKinds(pid int) map[string]int {
	out := map[string]int{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		out[fdKind(pid, target)]++
	}
	return out
}

func fdKind(pid int, target string) string {
	if task, ok := strings.CutPrefix(target, "/proc/"); ok && !strings.Contains(task, "/") {
		if strings.HasSuffix(task, " (deleted)") {
			return knownTaskPin // exited
		}
		if tgid, err := tgidOf(task); err == nil && tgid == pid {
			return knownTaskPin // a thread of its own
		}
		return "/proc/PID of another live task"
	}
	if i := strings.Index(target, ":["); i > 0 && !strings.HasPrefix(target, "anon_inode:") {
		return target[:i] // socket, pipe, user, pid, mnt: one kind each
	}
	return target
}

func tgidOf(task string) (int, error) {
	b, err := os.ReadFile("/proc/" + task + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(line, "Tgid:"); ok {
			return strconv.Atoi(strings.TrimSpace(f))
		}
	}
	return 0, errors.New("no Tgid")
}

// knownTaskPin is the kind of a descriptor of a task's /proc directory
// where the task has exited or is a thread of the daemon itself (its
// relay writes through its own mounts).
const knownTaskPin = "/proc/PID of an exited task or of its own thread"

// boundedFds are the kinds of descriptors the daemon keeps by design
// after the tasks and containers they belong to are gone, up to a bound:
// the identifier remembers the tasks that made requests
// (access/known.go maxKnownTasks, each by its /proc directory, dropped
// when a request meets it dead or the memory is full) and the user
// namespaces of their containers (maxKnownChains, each held open); and
// go-fuse keeps a process-wide pool of splice pipe pairs for reads
// (fuse/splice: as many as were in use at once, kept for reuse).
var boundedFds = map[string]int{knownTaskPin: 4096, "user": 256, "pipe": 256}

// Tolerances of checkBackToBaseline. The baseline is taken after a
// warm-up container has come and gone, so that what a daemon makes once
// and keeps (the HTTP server's, go-fuse's and the pidns pool's code
// paths, the runtime's worker goroutines and heap arenas) is in it; each
// scrape is made on a fresh connection (no keep-alive), so the scrape's
// own goroutine and socket are in every reading alike.
//   - goroutines: none may be left. The runtime starts some of its own
//     lazily (a GC mark worker per P, finalizer and cleanup workers),
//     which go_goroutines counts at some moments and not at others: up
//     to stormSlackGoroutines plus one per P (go_sched_gomaxprocs_threads)
//     may come and go. A goroutine left per view or container would be
//     20 more here.
//   - open descriptors: none may be left (each view holds its
//     /dev/fuse, host roots, helper sockets and pins), but for one or
//     two of the same noise, and but for the kinds of boundedFds, which
//     are checked against their bounds instead.
//   - memory: the storm's views become garbage when they are dropped,
//     but the Go runtime frees them only at its next collection (which
//     the scrapes' own allocations bring about) and gives the pages back
//     to the kernel lazily after it. So the check waits for a
//     collection after the drop, then wants the live heap (half the
//     heap goal) within stormSlackHeap of the baseline's: that is the
//     leak check, as 20 views' state held would be 10 MiB and more.
//     The resident size cannot come all the way back: the runtime never
//     ends the OS threads the storm's blocking FUSE reads and syscalls
//     took (some 80, each with its stacks), nor drops the code pages
//     and GC metadata it touched. It must come down to within
//     stormSlackRSS of the baseline or by at least a quarter of what the
//     storm took on top of it, whichever allows more: measured, 8-18 MiB
//     stay above the baseline here after 20 containers (a third to a
//     half of what they took), 10 MiB in the VM lane after 4.
const (
	stormSlackGoroutines = 4
	stormSlackFds        = 2
	stormSlackHeap       = 4 << 20
	stormSlackRSS        = 16 << 20
)

// checkBackToBaseline waits for the daemon's use to come back to the
// baseline (within the tolerances above) after the storm, and returns
// it as it came back to, or as it was when the wait gave up.
func (s *storm) checkBackToBaseline(t *testing.T, base, loaded daemonUse) daemonUse {
	t.Helper()
	rss := base.Resident + max(stormSlackRSS, (loaded.Resident-base.Resident)*3/4)
	goroutines := stormSlackGoroutines + base.Procs
	first := s.daemon.use(t)
	var now daemonUse
	// fdsWhy reads now's descriptors by kind (thousands of links in
	// /proc: only once the rest holds, and for the report) and says what
	// is left over.
	fdsWhy := func() []string {
		now.Fds = fdKinds(s.daemon.pid())
		var why []string
		bounded := 0
		for kind, bound := range boundedFds {
			bounded += now.Fds[kind] - base.Fds[kind]
			if now.Fds[kind] > bound {
				why = append(why, fmt.Sprintf("%d fds of %s, more than the %d it may keep", now.Fds[kind], kind, bound))
			}
		}
		if now.OpenFds-float64(bounded) > base.OpenFds+stormSlackFds {
			var kinds []string
			for kind, n := range now.Fds {
				if d := n - base.Fds[kind]; d != 0 && boundedFds[kind] == 0 {
					kinds = append(kinds, fmt.Sprintf("%+d %s", d, kind))
				}
			}
			sort.Strings(kinds)
			why = append(why, fmt.Sprintf("%.0f open fds, baseline %.0f, %d more of them kept by design (%s); left over: %s",
				now.OpenFds, base.OpenFds, bounded, strings.Join(slices.Sorted(maps.Keys(boundedFds)), ", "), strings.Join(kinds, ", ")))
		}
		return why
	}
	var why []string
	back := func() bool {
		now = s.daemon.use(t)
		why = nil
		if now.Goroutines > base.Goroutines+goroutines {
			why = append(why, fmt.Sprintf("%.0f goroutines, baseline %.0f", now.Goroutines, base.Goroutines))
		}
		if now.GCs <= first.GCs {
			why = append(why, "no collection since the views were dropped")
		} else if now.HeapGoal > base.HeapGoal+2*stormSlackHeap {
			why = append(why, fmt.Sprintf("a live heap of %.1f MiB, baseline %.1f MiB", now.HeapGoal/2/(1<<20), base.HeapGoal/2/(1<<20)))
		}
		// A race-built daemon's resident size is mostly the race
		// detector's shadow of its heap, which the detector never gives
		// back: its live heap, above, is the leak check there.
		if now.Resident > rss && !raceBuilt {
			why = append(why, fmt.Sprintf("%.1f MiB resident, allowed %.1f MiB", now.Resident/(1<<20), rss/(1<<20)))
		}
		if len(why) == 0 {
			why = fdsWhy()
		}
		return len(why) == 0
	}
	// Each look is a scrape: no faster than the lane's machine serves
	// them without the looking itself keeping the daemon busy.
	waited := time.Now()
	slow := laneSlowdown()
	if !poll(20*time.Second*min(slow, 6), 10*time.Millisecond*slow, back) {
		if now.Fds == nil {
			why = append(why, fdsWhy()...)
		}
		t.Errorf("the daemon did not come back to its baseline after the storm:\n\t%s", strings.Join(why, "\n\t"))
		if now.Goroutines > base.Goroutines+goroutines {
			// Its goroutines' stacks (GOTRACEBACK=all) go to its log.
			_ = s.daemon.cmd.Process.Signal(syscall.SIGQUIT)
			<-s.daemon.done
		}
	}
	t.Logf("the daemon: baseline %v; loaded %v; after %v, %v after the views were dropped", base, loaded, now, time.Since(waited).Round(time.Millisecond))
	for kind, bound := range boundedFds {
		if n := now.Fds[kind]; n > 0 {
			t.Logf("the daemon keeps %d fds of %s after every container ended (by design, up to %d)", n, kind, bound)
		}
	}
	if kids := childrenOfPid(s.daemon.pid()); len(kids) > 0 {
		t.Errorf("the daemon still has child processes %v after every container ended (helpers left)", kids)
	}
	return now
}

// poll is waitFor that reports a timeout instead of failing: it checks
// cond every interval until it holds or timeout passes.
func poll(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-deadline:
			return cond()
		case <-time.After(interval):
		}
	}
	return true
}

// stormDaemon is a `cgfs daemon` with metrics, on a socket of the
// test's own; start starts another on the same socket.
type stormDaemon struct {
	*server
	sock string
	env  []string
	keep bool     // under a keeper: cmd is the keeper's
	args []string // more of the daemon's flags
}

// startStormDaemon starts `cgfs daemon --metrics 127.0.0.1:0` and waits
// for it to be ready (sd_notify READY=1) and to serve metrics; it is
// stopped when the test ends.
func startStormDaemon(t *testing.T, keep bool, args ...string) *stormDaemon {
	t.Helper()
	dir := publicDir(t)
	d := &stormDaemon{sock: filepath.Join(dir, "daemon.sock"), keep: keep, args: args}
	d.env = []string{"CGFS_SOCKET=" + d.sock}
	d.start(t)
	return d
}

func (d *stormDaemon) start(t *testing.T) {
	t.Helper()
	notify := filepath.Join(filepath.Dir(d.sock), "notify.sock")
	_ = os.Remove(notify)
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	args := append([]string{"daemon", "--socket", d.sock, "--metrics", "127.0.0.1:0"}, d.args...)
	if d.keep {
		args = append(args, "--keep")
	}
	cmd := exec.Command(cgfsBin, args...)
	// GOTRACEBACK=all: a SIGQUIT (checkBackToBaseline's, on a leak)
	// dumps every goroutine.
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify, "GOTRACEBACK=all")
	s := &server{cmd: cmd, log: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.exit = cmd.Wait()
		s.exited.Store(true)
		close(s.done)
	}()
	t.Cleanup(func() {
		d.stopServer(t, s)
		if testing.Verbose() || t.Failed() {
			t.Logf("daemon log:\n%s", s.log.String())
		}
	})
	buf := make([]byte, 256)
	_ = ln.SetReadDeadline(time.Now().Add(20 * time.Second * laneSlowdown()))
	n, _, err := ln.ReadFromUnix(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("the daemon did not notify readiness: %q %v\n%s", buf[:n], err, s.log.String())
	}
	s.waitLog(t, `msg="metrics listening"`)
	d.server = s
}

// stopServer stops the daemon s (SIGTERM, as systemd does).
func (d *stormDaemon) stopServer(t *testing.T, s *server) {
	t.Helper()
	s.terminate(t)
}

func (d *stormDaemon) pid() int {
	if !d.keep {
		return d.cmd.Process.Pid
	}
	if kids := childrenOfPid(d.cmd.Process.Pid); len(kids) == 1 {
		return kids[0] // the keeper's server
	}
	return -1
}

// scrape fetches the daemon's metrics on a connection of its own, so
// that no idle connection of an earlier scrape is counted in its
// goroutines and descriptors.
func (d *stormDaemon) scrape(t *testing.T) string {
	t.Helper()
	_, body := d.get(t, "/metrics")
	return body
}

func (d *stormDaemon) get(t *testing.T, path string) (int, string) {
	t.Helper()
	code, body, err := getFrom(d.metricsAddr(), path)
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

// metricsAddr is where the daemon serves metrics now (its last log of
// it).
func (d *stormDaemon) metricsAddr() string {
	var addr string
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, "metrics listening") {
			_, addr, _ = strings.Cut(line, "addr=")
		}
	}
	return strings.TrimSpace(addr)
}

// getFrom fetches http://addr/path on a connection of its own.
func getFrom(addr, path string) (int, string, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second * laneSlowdown()}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
