package test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The kernel's own cgroup v2 selftests (tools/testing/selftests/cgroup
// of the very kernel the VM lane boots; test/vm/run builds them static
// into the share) as a conformance lane: each binary runs natively, as
// the kernel's suite runs it (root, in the root cgroup), and then as the
// root of a `cgfs run` container, whose /sys/fs/cgroup is a cgfs view.
// A case that passes natively must pass inside too, unless it is in one
// of the tables below, each entry with its reason. Every reason was
// measured in the VM lane (Debian 6.1.192-3), as each entry says.

// selftestDifferences are the cases ("binary/case") that pass natively
// and are known not to pass inside cgfs run.
var selftestDifferences = map[string]string{
	// cgfs: what hidden leaves cost at the view root, by design.
	"test_core/test_cgcore_no_internal_process_constraint_on_threads": "by design: test_core's main enables " +
		"memory at the root, so the root's processes live in its hidden leaf, a populated domain child, and no " +
		"cgroup below the real root can be a thread root while it enables a domain controller: writing " +
		"\"threaded\" to a child's cgroup.type is EOPNOTSUPP, as the kernel answers any non-root cgroup (measured " +
		"with a shell: \"write error: Operation not supported\"; natively the root is exempt). With threaded " +
		"controllers only, cgfs now folds the leaf back and the child is made threaded " +
		"(TestThreadedChildrenNeedNoProcessesBeside); relocating a threaded subtree into the leaf to pass this " +
		"case too is not done (README \"Hidden leaves\"). Not reached today: test_core dies in its first case " +
		"(selftestStops)",
	"test_freezer/test_cgfreezer_simple": "cost per move, not fixed: " + hundredJoins,
	"test_kill/test_cgkill_simple":       "cost per move, not fixed: " + hundredJoins,
	// Any user-namespaced root, with or without cgfs.
	"test_kmem/test_kmem_proc_kpagecgroup": "not cgfs's: /proc/kpagecgroup is mode 0400 and owned by host root, " +
		"whom the container's user namespace does not map (ls -ln shows 65534 inside): its open fails with EACCES " +
		"(measured: \"head: /proc/kpagecgroup: Permission denied\"), natively root reads it",
	"test_memcontrol/test_memcg_oom_group_score_events": "not cgfs's: the test sets a child's oom_score_adj to " +
		"-1000 (OOM_SCORE_ADJ_MIN); going below the task's oom_score_adj_min (0, inherited) takes CAP_SYS_RESOURCE " +
		"in the initial user namespace, so the write fails with EACCES (measured: \"echo -1000 > " +
		"/proc/self/oom_score_adj\": \"write error: Permission denied\" inside, accepted natively) and the test gives up",
}

// hundredJoins is why the cases that start 100 children in a cgroup at
// once fail inside.
const hundredJoins = "inside, clone3 is ENOSYS (see TestClone3FallsBack), so cg_run_nowait falls back to fork " +
	"and each of the 100 children writes its pid to cgroup.procs through cgfs; on a busy host they do not " +
	"all arrive within the ~1.1 s the test waits (cg_wait_for_proc_count), natively they are born in the " +
	"cgroup (CLONE_INTO_CGROUP). Measured with shells, 100 concurrent self-migrations took 6.8 s inside and " +
	"1.8 s natively on a busy host; the selftest cases failed inside in 2 of 4 lane runs (passed natively in " +
	"all). Migrations no longer queue behind one another in cgfs (a shared view lock, 16 calls in flight to a " +
	"pid helper), which changed nothing measurable (BenchmarkConcurrentSelfMigrations in the VM: 1.15-1.23 s " +
	"per 100 before and after, natively 0.16-0.22 s): each move costs a LOOKUP, an OPEN and a WRITE through " +
	"FUSE, the writer identified at each, and the helper's round trip, on 3 emulated CPUs"

// selftestStop is how a binary is known to end early inside cgfs run:
// in which case, and how ("killed": by SIGKILL, exit 137 from the
// shell; "hangs": until its timeout). The cases after it, which it
// never reaches, are documented by it.
type selftestStop struct{ in, how, why string }

var selftestStops = map[string]selftestStop{
	"test_core": {"test_cgcore_internal_process_constraint", "killed", "cgfs's hidden leaves lift the " +
		"no-internal-process rule in the container (by design, README \"Hidden leaves\"), so the test's " +
		"cg_enter_current of a cgroup with memory in its subtree_control succeeds (natively EBUSY); its " +
		"cleanup's cg_destroy then finds that cgroup busy with the test itself and cg_killall writes its " +
		"cgroup.kill, killing the test binary: the shell says \"Killed\", exit 137, before any case reports " +
		"(its output is line-buffered on a terminal here, so nothing printed is lost)"},
	"test_kill": {"test_cgkill_simple", "hangs", "cost per move, not fixed: when test_cgkill_simple's 100 " +
		"children do not all join in time (test_kill/test_cgkill_simple), the test's cleanup waits for " +
		"children that exit only once reparented: forever (when the timeout hit, all 100 sat in " +
		"cg_test_simple); 2 of 4 lane runs"},
}

// selftestUnstable are cases whose outcome in this lane is not
// repeatable, natively as inside: the VM runs under TCG on a shared
// 2-CPU machine, and these measure time. A difference is logged, and
// fails nothing. The counts are of lane runs.
var selftestUnstable = map[string]string{
	"test_cpu/test_cpucg_stats": "expects cpu.stat usage_usec within 1% of the 2 s of CPU time the hog " +
		"burnt; passed natively 3 of 7 times, inside 1 of 7",
	"test_cpu/test_cpucg_max": "expects a hog limited to cpu.max 1000 (1 ms of every 100 ms) to use " +
		"under ~2.6% of 1 s; under TCG the quota is overrun by whole ticks (measured with a shell's hog: " +
		"43-210 ms natively and inside alike); passed natively 2 of 7 times, inside 3 of 7",
	"test_cpu/test_cpucg_max_nested": "as test_cpucg_max, the limit on the parent; passed natively 4 of 7 " +
		"times, inside 2 of 7",
	"test_memcontrol/test_memcg_high_sync": "waits for the first inotify event on memory.events, then " +
		"expects memory.events high to have grown and max not: a 200M mlock under memory.high 30M and " +
		"memory.max 140M. Inside, the event reaches the test through cgfs's relay (the host file's inotify " +
		"event passed on through the FUSE mount: BenchmarkEventRelay), later than natively, and under TCG " +
		"the allocation can reach memory.max meanwhile (pre_max != post_max); failed inside once in CI " +
		"(06:35, 7 Dec 2026), passed inside in the lane's other runs, natively in all",
	"test_freezer/test_cgfreezer_ptrace": "reads cgroup.events right after PTRACE_INTERRUPT, racing the " +
		"traced task's return to the frozen state; natively failed 2 of 4 times (\"Cgroup " +
		"/sys/fs/cgroup/cg_test_ptrace isn't frozen\"), inside passed 4 of 4",
}

// selftestNativeFailures are cases known to fail natively in this lane,
// with why: nothing is promised for them, the reason is for the log.
var selftestNativeFailures = map[string]string{
	"test_kmem/test_kmem_basic": "the VM's root file system is a tmpfs, which keeps no negative dentries " +
		"(simple_lookup's always_delete_dentry), so 100000 failed lookups of /something-non-existent-... grow " +
		"no slab (measured in a memory cgroup: 20000 lookups under / leave slab at 4200 bytes, under the " +
		"ext2 /disk 4 MB)",
}

// selftestTimeouts bound each binary's run, natively and inside alike,
// so that a hang fails with a message instead of eating the VM's
// timeout: about 5 times the slowest run measured in the lane (inside,
// which is slower), and never under selftestTimeout.
var selftestTimeouts = map[string]time.Duration{
	"test_cpu":  4 * time.Minute, // 25-32 s natively, 28-42 s inside
	"test_kmem": 6 * time.Minute, // 9-29 s natively, 30-68 s inside (1000 cgroups, 1000 threads)
}

// selftestTimeout is the timeout of the others: test_core, test_freezer,
// test_kill (1-3 s natively, under 20 s inside) and test_memcontrol
// (13-26 s natively, 14-19 s inside).
const selftestTimeout = 2 * time.Minute

// selftestCase is one reported case: "ok", "not ok" or "skip".
type selftestCase struct {
	num    int
	name   string
	result string
}

// selftestRun is what one run of a selftest binary reported.
type selftestRun struct {
	cases    []selftestCase
	totals   string // the "# Totals:" line, if it printed one
	skipAll  string // "1..0 # SKIP reason": it ran no case
	out      string
	status   string // how it ended: "exit 0", "killed (SIGKILL)"
	timedOut bool
	took     time.Duration
}

var (
	tapOK     = regexp.MustCompile(`^ok (\d+) (.*)$`)
	tapNotOK  = regexp.MustCompile(`^not ok (\d+) (.*)$`)
	tapSkip   = regexp.MustCompile(`^# SKIP (.*)$`)
	tapSkipAl = regexp.MustCompile(`^1\.\.0 # SKIP (.*)$`)
)

// parseTAP reads kselftest output: "ok N name", "ok N # SKIP name",
// "ok N # XFAIL name", "not ok N name" (and "not ok N # error name"), "1..0 # SKIP reason"
// for a binary that ran nothing, and the "# Totals:" line that
// ksft_print_cnts prints (the 6.1 cgroup tests return from main without
// it, so it is optional).
func parseTAP(out string) (cases []selftestCase, totals, skipAll string) {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if m := tapSkipAl.FindStringSubmatch(line); m != nil {
			skipAll = m[1]
			continue
		}
		if strings.HasPrefix(line, "# Totals:") {
			totals = line
			continue
		}
		result, m := "ok", tapOK.FindStringSubmatch(line)
		if m == nil {
			result, m = "not ok", tapNotOK.FindStringSubmatch(line)
		}
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		name := strings.TrimSpace(m[2])
		if s := tapSkip.FindStringSubmatch(name); s != nil {
			result, name = "skip", strings.TrimSpace(s[1])
		} else if rest, ok := strings.CutPrefix(name, "# error "); ok {
			name = strings.TrimSpace(rest)
		} else if rest, ok := strings.CutPrefix(name, "# XFAIL "); ok {
			name = strings.TrimSpace(rest) // an expected failure counts as a pass
		}
		cases = append(cases, selftestCase{n, name, result})
	}
	return cases, totals, skipAll
}

// tally counts the cases that passed, failed and were skipped.
func (r selftestRun) tally() (ok, notOK, skip int) {
	for _, c := range r.cases {
		switch c.result {
		case "ok":
			ok++
		case "not ok":
			notOK++
		default:
			skip++
		}
	}
	return ok, notOK, skip
}

// counts is "ok/not ok/skip".
func (r selftestRun) counts() string {
	ok, notOK, skip := r.tally()
	return fmt.Sprintf("%d/%d/%d", ok, notOK, skip)
}

// ended is how the run ended, in a word or two.
func (r selftestRun) ended() string {
	if r.timedOut {
		return "timed out"
	}
	return r.status
}

// last is the last case the run reported.
func (r selftestRun) last() string {
	if len(r.cases) == 0 {
		return "none"
	}
	c := r.cases[len(r.cases)-1]
	return fmt.Sprintf("%s %d %s", c.result, c.num, c.name)
}

// checkTotals compares the "# Totals:" line, when the binary printed
// one, with the cases parsed.
func (r selftestRun) checkTotals() error {
	if r.totals == "" {
		return nil
	}
	n := map[string]int{}
	for _, f := range strings.Fields(strings.TrimPrefix(r.totals, "# Totals:")) {
		k, v, _ := strings.Cut(f, ":")
		n[k], _ = strconv.Atoi(v)
	}
	ok, notOK, skip := r.tally()
	if n["pass"]+n["xfail"] != ok || n["fail"]+n["error"] != notOK || n["skip"] != skip {
		return fmt.Errorf("%q does not match the cases it reported (%d ok, %d not ok, %d skipped)", r.totals, ok, notOK, skip)
	}
	return nil
}

func (r selftestRun) result(name string) string {
	for _, c := range r.cases {
		if c.name == name {
			return c.result
		}
	}
	return ""
}

// TestKernelSelftests runs the kernel's cgroup selftests natively and
// inside `cgfs run` and compares them case by case.
func TestKernelSelftests(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	// The selftests make cgroups of fixed names (cg_test, memcg_test,
	// ...) at the cgroup2 root and enable controllers there: only the
	// VM's disposable root is theirs to use, never a shared host's.
	laneOnly(t, vmLane, currentLane() == vmLane && len(l.v1) == 0,
		"the kernel's cgroup selftests make cgroups of fixed names at the cgroup2 root of a pure cgroup v2 machine")
	dir := os.Getenv("CGFS_SELFTESTS")
	if dir == "" {
		t.Fatal("CGFS_SELFTESTS is not set: test/vm/run builds the kernel's cgroup selftests into the share and /init names them")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the kernel's cgroup selftests: %v", err)
	}
	var bins []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "test_") {
			bins = append(bins, e.Name())
		}
	}
	if len(bins) == 0 {
		t.Fatalf("no selftest binaries (test_*) in %s", dir)
	}
	slices.Sort(bins)

	type row struct {
		bin            string
		native, inside selftestRun
		differ         []string
	}
	var rows []row
	for _, bin := range bins {
		t.Run(bin, func(t *testing.T) {
			native := runSelftest(t, filepath.Join(dir, bin), false)
			inside := runSelftest(t, filepath.Join(dir, bin), true)
			rows = append(rows, row{bin, native, inside, compareSelftest(t, bin, native, inside)})
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %-26s %-26s\n", "", "natively", "inside cgfs run")
	fmt.Fprintf(&b, "%-16s %-26s %-26s\n", "binary", "ok/not ok/skip  s  ended", "ok/not ok/skip  s  ended")
	var differ []string
	for _, r := range rows {
		fmt.Fprintf(&b, "%-16s %-8s %5.0f  %-10s %-8s %5.0f  %s\n", r.bin,
			r.native.counts(), r.native.took.Seconds(), r.native.ended(), r.inside.counts(), r.inside.took.Seconds(), r.inside.ended())
		differ = append(differ, r.differ...)
	}
	if len(differ) > 0 {
		fmt.Fprintf(&b, "cases that differ:\n  %s\n", strings.Join(differ, "\n  "))
	}
	t.Logf("the kernel's cgroup selftests:\n%s", b.String())
}

// compareSelftest fails the test for each case that passed natively and
// not inside, unless documented, and for runs that did not end as they
// should; it returns a line for each case that differs, with why.
func compareSelftest(t *testing.T, bin string, native, inside selftestRun) (differ []string) {
	t.Helper()
	for _, r := range []struct {
		where string
		run   selftestRun
	}{{"natively", native}, {"inside cgfs run", inside}} {
		if r.run.skipAll != "" {
			t.Logf("%s %s skipped every case: %s", bin, r.where, r.run.skipAll)
		}
		if err := r.run.checkTotals(); err != nil {
			t.Errorf("%s %s: %v", bin, r.where, err)
		}
	}
	if native.timedOut {
		t.Errorf("%s natively did not end within its timeout; the last case it reported: %s", bin, native.last())
	}
	if len(native.cases) == 0 {
		t.Errorf("%s natively reported no case (%s): is this machine pure cgroup v2 with every controller?", bin, native.status)
	}
	// Where inside stopped early: the first case reported natively and
	// not inside.
	stoppedIn := ""
	for _, c := range native.cases {
		if inside.result(c.name) == "" {
			stoppedIn = c.name
			break
		}
	}
	stop, hasStop := selftestStops[bin]
	stopSeen := hasStop && stoppedIn == stop.in &&
		(stop.how == "killed" && inside.status == "exit 137" || stop.how == "hangs" && inside.timedOut)
	switch {
	case stopSeen:
		t.Logf("%s inside cgfs run %s in %s, as documented: %s", bin, stop.how, stop.in, stop.why)
	case hasStop:
		t.Logf("%s inside cgfs run did not stop as documented (%s in %s) this time: it ended %s, first unreported case %q; if that lasts, update selftestStops",
			bin, stop.how, stop.in, inside.ended(), stoppedIn)
	}
	if inside.timedOut && !stopSeen {
		t.Errorf("%s inside cgfs run did not end within its timeout; the last case it reported: %s", bin, inside.last())
	}
	for _, c := range native.cases {
		key := bin + "/" + c.name
		got := inside.result(c.name)
		if got == c.result {
			if why, ok := selftestDifferences[key]; ok && got == "ok" {
				t.Logf("%s passed inside cgfs run this time: if it keeps passing, its documented difference no longer holds (remove it): %s", key, why)
			}
			continue
		}
		shown := got
		if shown == "" {
			shown = "not reported"
		}
		line := fmt.Sprintf("%s: natively %s, inside %s", key, c.result, shown)
		switch {
		case selftestUnstable[key] != "":
			line += " (unstable in this lane: " + selftestUnstable[key] + ")"
		case c.result != "ok":
			// Only a native pass is a promise.
			if why := selftestNativeFailures[key]; why != "" {
				line += " (fails natively in this lane: " + why + ")"
			}
		case selftestDifferences[key] != "":
			line += " (documented: " + selftestDifferences[key] + ")"
		case got == "" && stopSeen:
			line += fmt.Sprintf(" (documented: the binary %s in %s, selftestStops)", stop.how, stop.in)
		default:
			t.Errorf("%s: natively ok, inside cgfs run %s", key, shown)
			line += " (UNDOCUMENTED)"
		}
		differ = append(differ, line)
	}
	for _, c := range inside.cases {
		if native.result(c.name) == "" {
			differ = append(differ, fmt.Sprintf("%s/%s: natively not reported, inside %s", bin, c.name, c.result))
		}
	}
	for _, d := range differ {
		t.Log(d)
	}
	return differ
}

// runSelftest runs one selftest binary, natively or as the root of a
// cgfs run container, with its output on a pseudo-terminal: stdio then
// flushes each line as it is printed, so a binary that dies or hangs
// still shows the cases it reported (through a pipe its buffered output
// would be lost). The output is logged as it comes.
func runSelftest(t *testing.T, bin string, inCgfs bool) selftestRun {
	t.Helper()
	name := filepath.Base(bin)
	where := "natively"
	if inCgfs {
		where = "inside cgfs run"
	}
	work := selftestWorkDir(t)
	var cmd *exec.Cmd
	var parent string
	if inCgfs {
		parent = runParent(t)
		// A shell as the container's init, as a careful user runs a
		// program that is no init (docker --init): as PID 1 the binary
		// would ignore every signal it has no handler for, its own
		// cgroup.kill's SIGKILL included, and reap no orphans.
		// --memory 1G: the largest cases (test_memcg_min and _low) fill
		// a memory.max of 200M of their own, and 1G leaves the VM's
		// other half to the VM; so the tests' own limits are what
		// triggers their OOMs and reclaim, never the container's.
		// --pids 2000: test_kmem_kernel_stacks starts 1000 threads;
		// 2000 also bounds the fork bombs of test_freezer and test_kill.
		// ulimit -l unlimited (as docker's --ulimit memlock=-1): root
		// natively locks memory by CAP_IPC_LOCK, which a user
		// namespace's root lacks, so its mlock(2) is bounded by
		// RLIMIT_MEMLOCK (8 MiB by default) instead; test_memcg_high_sync
		// mlocks 200 MB.
		script := `cd "$1" || exit 99; "$0"; rc=$?; echo "cgfs-selftest: exit $rc"; exit $rc`
		cmd = exec.Command("sh", "-c", `ulimit -l unlimited && exec "$@"`, "sh",
			cgfsBin, "run", "--parent", parent, "--memory", "1G", "--pids", "2000",
			"--", "sh", "-c", script, bin, work)
	} else {
		cmd = exec.Command(bin)
		cmd.Dir = work
		// Its own process group, to be killed whole on a timeout.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	master, slave := openPty(t)
	cmd.Stdout, cmd.Stderr = slave, slave
	timeout := selftestTimeout
	if d, ok := selftestTimeouts[name]; ok {
		timeout = d
	}
	var rootBefore []string
	if !inCgfs {
		rootBefore = cgroupChildren(t, detectLane(t).cgroup2)
	}
	t.Logf("%s %s (timeout %v):", name, where, timeout)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s %s: %v", name, where, err)
	}
	slave.Close()
	outc := make(chan string, 1)
	go func() { outc <- logLines(t, master) }()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var r selftestRun
	var err error
	select {
	case err = <-waited:
	case <-time.After(timeout):
		r.timedOut = true
		if inCgfs {
			t.Logf("%s timed out; the container's cgroups on the host:\n%s", name, cgroupProcsTree(filepath.Join(detectLane(t).cgroup2, parent)))
			err = stopCgfsRun(cmd.Process, waited)
		} else {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			err = <-waited
		}
	}
	r.took = time.Since(start)
	select {
	case r.out = <-outc:
	case <-time.After(30 * time.Second):
		// A process the binary left behind holds the terminal.
		master.Close()
		r.out = <-outc
	}
	r.status = exitStatus(err)
	if !inCgfs {
		cleanRootCgroups(t, detectLane(t).cgroup2, rootBefore)
	}
	r.cases, r.totals, r.skipAll = parseTAP(r.out)
	if r.timedOut {
		// Whether that fails the test is compareSelftest's call: a hang
		// may be documented.
		t.Logf("%s %s did not end within %v: stopped it (it ended: %s)", name, where, timeout, r.status)
	}
	t.Logf("%s %s: %s after %.0f s, ok/not ok/skip %s", name, where, r.ended(), r.took.Seconds(), r.counts())
	return r
}

// selftestWorkDir is the working directory of a selftest run: the tests
// make their page cache there (O_TMPFILE files whose holes they read),
// so it is on the lane's disk-backed file system when it has one
// (CGFS_DISKDIR), and writable by the container's root.
func selftestWorkDir(t *testing.T) string {
	t.Helper()
	var dir string
	if base := os.Getenv("CGFS_DISKDIR"); base != "" {
		var err error
		if dir, err = os.MkdirTemp(base, "selftest-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	} else {
		dir = publicDir(t)
	}
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// logLines logs each line read from r as it comes (a line repeated is
// counted, not logged again) and returns all that was read, without the
// terminal's carriage returns.
func logLines(t *testing.T, r io.Reader) string {
	var all strings.Builder
	var last string
	repeats := 0
	flush := func() {
		if repeats > 0 {
			t.Logf("    (the line above %d more times)", repeats)
		}
		repeats = 0
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() { // ends with EIO once every writer is gone
		line := strings.TrimRight(sc.Text(), "\r")
		all.WriteString(line + "\n")
		if line == last {
			repeats++
			continue
		}
		flush()
		last = line
		t.Logf("    %s", line)
	}
	flush()
	return all.String()
}

// stopCgfsRun stops a cgfs run whose command hangs: SIGTERM, which it
// passes on to its init (the shell, which ignores it as PID 1), and
// again until it kills the init at the second, which ends every process
// of the container; SIGKILL after a minute. (Two signals sent at once
// may reach it as one: the kernel merges a pending one.)
func stopCgfsRun(p *os.Process, waited <-chan error) error {
	deadline := time.After(time.Minute)
	for {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case err := <-waited:
			return err
		case <-time.After(2 * time.Second):
		case <-deadline:
			_ = p.Kill()
			return <-waited
		}
	}
}

// cgroupProcsTree lists the cgroups below dir with their processes.
func cgroupProcsTree(dir string) string {
	var b strings.Builder
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		procs, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		fmt.Fprintf(&b, "  %s: %d processes\n", strings.TrimPrefix(p, dir), len(strings.Fields(string(procs))))
		return nil
	})
	return b.String()
}

// exitStatus describes how a command ended.
func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed (" + ws.Signal().String() + ")"
		}
		return fmt.Sprintf("exit %d", ee.ExitCode())
	}
	if err != nil {
		return err.Error()
	}
	return "exit 0"
}

// cgroupChildren lists the cgroups directly below dir.
func cgroupChildren(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

// cleanRootCgroups removes the cgroups a native selftest left at the
// root (one that was killed, or that leaks), killing what is in them,
// so that the next run starts from the same root.
func cleanRootCgroups(t *testing.T, root string, before []string) {
	t.Helper()
	for _, name := range cgroupChildren(t, root) {
		if slices.Contains(before, name) {
			continue
		}
		dir := filepath.Join(root, name)
		t.Logf("the selftest left the cgroup %s: removing it", dir)
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = writeFile(filepath.Join(p, "cgroup.kill"), "1")
			}
			return nil
		})
		if err := removeCgroupTree(dir); err != nil {
			t.Errorf("removing what a selftest left: %v", err)
		}
	}
}

// TestParseTAP: the kselftest output forms the lane meets are read into
// cases, and a "# Totals:" line is checked against them.
func TestParseTAP(t *testing.T) {
	out := "TAP version 13\n1..5\nok 1 test_a\nnot ok 2 test_b\nok 3 # SKIP test_c\n" +
		"# some message\nnot ok 4 # error test_d\nok 5 # XFAIL test_e\n" +
		"# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:1\n"
	cases, totals, skipAll := parseTAP(out)
	want := []selftestCase{{1, "test_a", "ok"}, {2, "test_b", "not ok"}, {3, "test_c", "skip"},
		{4, "test_d", "not ok"}, {5, "test_e", "ok"}}
	if !slices.Equal(cases, want) || skipAll != "" {
		t.Errorf("parsed %+v (skip all %q), want %+v", cases, skipAll, want)
	}
	r := selftestRun{cases: cases, totals: totals}
	if err := r.checkTotals(); err != nil {
		t.Error(err)
	}
	r.totals = "# Totals: pass:3 fail:0 xfail:0 xpass:0 skip:0 error:0"
	if r.checkTotals() == nil {
		t.Errorf("totals %q matched cases %+v", r.totals, cases)
	}
	if _, _, skipAll := parseTAP("TAP version 13\n1..0 # SKIP cgroup v2 isn't mounted\n"); skipAll != "cgroup v2 isn't mounted" {
		t.Errorf("skip all: %q", skipAll)
	}
}
