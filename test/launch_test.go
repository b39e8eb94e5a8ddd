package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests of the launchers: cgfs run and exec, the daemon, and the hooks
// for real runc and LXC containers.

// runOut is what a cgfs run printed and its exit status.
type runOut struct {
	out  string
	code int
}

// cgfsRun runs `cgfs run ARGS` to its end.
func cgfsRun(t *testing.T, env []string, args ...string) runOut {
	t.Helper()
	cmd := exec.Command(cgfsBin, append([]string{"run"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cgfs run: %v", err)
	}
	return runOut{string(out), code}
}

// runParent is a parent cgroup of the test's own for cgfs run (made in
// every hierarchy by cgfs run itself); the test checks it is gone after.
func runParent(t testing.TB) string {
	t.Helper()
	p := fmt.Sprintf("cgfs-test-%s-%d", sanitize(t.Name()), os.Getpid())
	t.Cleanup(func() { checkNothingLeft(t, p) })
	return p
}

// checkNothingLeft fails the test if a cgroup named parent is left in
// any hierarchy, or a cgfs mount in the test's mount namespace.
func checkNothingLeft(t testing.TB, parent string) {
	t.Helper()
	l := detectLane(t)
	roots := []string{l.cgroup2}
	for _, r := range l.v1 {
		roots = append(roots, r)
	}
	for _, r := range roots {
		dir := filepath.Join(r, parent)
		if _, err := os.Stat(dir); err == nil {
			var left []string
			_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() && p != dir {
					left = append(left, strings.TrimPrefix(p, dir+"/"))
				}
				return nil
			})
			t.Errorf("cgfs left %s on the host (below it: %v)", dir, left)
			_ = removeCgroupTree(dir)
		}
	}
	// Other packages' tests (fs) mount views at temporary directories of
	// their own while this one runs: only this test's, or one anywhere
	// else, is a leak.
	mine := filepath.Join(os.TempDir(), t.Name()) // t.TempDir's, for a test's own name
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if !strings.Contains(line, " - fuse.cgfs ") || len(f) < 5 {
			continue
		}
		if mp := f[4]; strings.HasPrefix(mp, os.TempDir()+"/Test") && !strings.HasPrefix(mp, mine) {
			continue
		}
		t.Errorf("a cgfs mount is left: %s", line)
	}
}

// laneScript is shell that names, for the lane, where the container
// finds its limits and its cgroup v2 tree.
const laneScript = `
if [ -d /sys/fs/cgroup/pids ]; then P=/sys/fs/cgroup/pids; MEM=/sys/fs/cgroup/memory/memory.limit_in_bytes; V2=/sys/fs/cgroup/unified
else P=/sys/fs/cgroup; MEM=/sys/fs/cgroup/memory.max; V2=/sys/fs/cgroup; fi
`

// endToEndScript is a container's session: it reads its limits and
// cannot raise them, forks no more than its pids limit, makes a cgroup,
// limits it, moves itself into it and back, freezes and kills a child
// there, and exits 7.
const endToEndScript = laneScript + `
echo pids.max $(cat $P/pids.max) memory $(cat $MEM)
if (echo max > $P/pids.max) 2>/dev/null; then echo RAISED; fi
# dash exits when it cannot fork, so the forks run in a subshell, which
# the limit ends; its sleeps (children of this shell, init, from then on)
# end by themselves, and this shell reaps them while it waits for the
# next command. Until then only builtins: the limit is full.
(for i in $(seq 40); do sleep 3 & done) 2>/dev/null
read tasks < $P/pids.current
echo tasks $tasks after 40 forks
read event count < $P/pids.events
echo refused forks $event $count
sleep 4
set -e
mkdir $V2/kids
echo 1 > $V2/kids/cgroup.max.descendants
echo $$ > $V2/kids/cgroup.procs
echo moved $(grep '^0::' /proc/self/cgroup)
echo $$ > $V2/cgroup.procs
sleep 100 & kid=$!
echo $kid > $V2/kids/cgroup.procs
echo 1 > $V2/kids/cgroup.freeze
until grep -q 'frozen 1' $V2/kids/cgroup.events; do sleep 0.1; done
echo frozen
echo 1 > $V2/kids/cgroup.kill
wait $kid || echo killed $?
until grep -q 'populated 0' $V2/kids/cgroup.events; do sleep 0.1; done
rmdir $V2/kids && echo removed
exit 7
`

// TestRunEndToEnd: `cgfs run` with limits. Inside, the container's root
// sees its limits and cannot raise them, forks no more than its pids
// limit, makes a cgroup, limits it, moves itself into it and back,
// freezes and kills children there; its exit status comes out, and
// nothing is left on the host.
func TestRunEndToEnd(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	script := endToEndScript
	r := cgfsRun(t, nil, "--name", "e2e", "--parent", parent, "--pids", "20", "--memory", "64M", "--", "sh", "-c", script)
	t.Logf("cgfs run:\n%s", r.out)
	if r.code != 7 {
		t.Errorf("cgfs run exited %d, want the command's 7", r.code)
	}
	for _, want := range []string{"pids.max 20 memory 67108864", "refused forks max ", "moved 0::/kids", "frozen", "killed 137", "removed"} {
		if !strings.Contains(r.out, want) {
			t.Errorf("the container did not say %q", want)
		}
	}
	if strings.Contains(r.out, "RAISED") {
		t.Errorf("the container raised its own pids.max")
	}
	if strings.Contains(r.out, "refused forks max 0") {
		t.Errorf("no fork was refused at the pids limit")
	}
	var tasks int
	if i := strings.Index(r.out, "tasks "); i >= 0 {
		fmt.Sscanf(r.out[i:], "tasks %d", &tasks)
	}
	if tasks < 10 || tasks > 20 {
		t.Errorf("the container had %d tasks after forking 40 sleeps under pids.max 20, want the limit reached and held", tasks)
	}
}

// TestRunRootfsAndTerminal: --rootfs makes a busybox tree the
// container's root, and a terminal on cgfs run's stdin becomes the
// container's own (a pseudo-terminal whose other end cgfs run serves).
func TestRunRootfsAndTerminal(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	rootfs := busyboxRootfs(t, containerBase)
	master, slave := openPty(t)
	cmd := exec.Command(cgfsBin, "run", "--name", "tty", "--parent", parent, "--rootfs", rootfs, "--",
		"sh", "-c", "tty; test -t 0 && echo a terminal; ls /sys/fs/cgroup | head -3; ls /; exit 3")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out strings.Builder
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&out, master); close(done) }()
	err := cmd.Wait()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	t.Logf("cgfs run on a terminal:\n%s", out.String())
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Errorf("cgfs run: %v, want exit status 3", err)
	}
	for _, want := range []string{"/dev/pts/", "a terminal", "bin"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the container on a terminal did not say %q", want)
		}
	}
	if strings.Contains(out.String(), "usr") || strings.Contains(out.String(), "home") {
		t.Errorf("the container's / is the host's, not the rootfs")
	}
}

// openPty opens a pseudo-terminal pair.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// busyboxRootfs makes a root file system of busybox alone, owned by the
// container's root (host uid base).
func busyboxRootfs(t *testing.T, base int) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		skip(t, "no busybox to make a root file system of")
	}
	root := filepath.Join(publicDir(t), "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "etc", "tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"sh", "ls", "cat", "mkdir", "echo", "sleep", "grep", "head", "cut", "tty", "test", "tr"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", c)); err != nil {
			t.Fatal(err)
		}
	}
	_ = filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, base, base) })
	return root
}

// startRun starts `cgfs run` in the background with a command that
// waits until SIGTERM (forwarded to it) and exits 42 then.
func startRun(t testing.TB, env []string, args ...string) *exec.Cmd {
	t.Helper()
	all := append([]string{"run"}, args...)
	all = append(all, "--", "sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done")
	cmd := exec.Command(cgfsBin, all...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, cmd, syscall.SIGTERM)
	return cmd
}

// stopAtEnd ends cmd when the test ends: sig (0: none, its input is
// closed already), then SIGKILL if it is still there 20 s after.
func stopAtEnd(t testing.TB, cmd *exec.Cmd, sig syscall.Signal) {
	t.Cleanup(func() {
		if sig != 0 {
			_ = cmd.Process.Signal(sig)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// cgfsExec runs `cgfs exec NAME -- sh -c SCRIPT` and returns its output.
func cgfsExec(t testing.TB, env []string, name, script string) (string, error) {
	t.Helper()
	cmd := exec.Command(cgfsBin, "exec", name, "--", "sh", "-c", script)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitExec retries cgfsExec until the container is up and script prints
// want.
func waitExec(t testing.TB, env []string, name, script, want string) string {
	t.Helper()
	var out string
	waitFor(t, fmt.Sprintf("%q in container %s", want, name), 30*time.Second, func() bool {
		out, _ = cgfsExec(t, env, name, script)
		return strings.Contains(out, want)
	})
	return out
}

// initOf is the container init that cgfs run started (its child whose
// pid in its own pid namespace is 1).
func initOf(t *testing.T, run *exec.Cmd) int {
	t.Helper()
	var pid int
	waitFor(t, "the container's init", 20*time.Second, func() bool {
		for _, c := range childrenOfPid(run.Process.Pid) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", c))
			for _, line := range strings.Split(string(b), "\n") {
				if f, ok := strings.CutPrefix(line, "NSpid:"); ok {
					ids := strings.Fields(f)
					if len(ids) == 2 && ids[1] == "1" {
						pid = c
						return true
					}
				}
			}
		}
		return false
	})
	return pid
}

func childrenOfPid(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, e := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, e.Name()))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// TestConcurrentRunsShareAParent: containers starting and ending at once
// under one parent (each run removes the parent when it leaves it empty)
// all start, and the parent is gone after the last.
func TestConcurrentRunsShareAParent(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	const n = 8
	errs := make(chan string, n*3)
	for i := range n {
		go func() {
			for round := range 3 {
				r := cgfsRun(t, nil, "--name", fmt.Sprintf("c%d-%d", i, round), "--parent", parent, "--", "sh", "-c", "test -d /sys/fs/cgroup && exit 3")
				if r.code != 3 {
					errs <- fmt.Sprintf("c%d-%d: exit %d: %s", i, round, r.code, r.out)
				} else {
					errs <- ""
				}
			}
		}()
	}
	for range n * 3 {
		if e := <-errs; e != "" {
			t.Error(e)
		}
	}
}

// TestRunKeepsParentsTheHostHad: cgfs run removes the parent levels it
// made and leaves the ones the host had, even when empty.
func TestRunKeepsParentsTheHostHad(t *testing.T) {
	requireRoot(t)
	host := runParent(t)
	l := detectLane(t)
	roots := append([]string{l.cgroup2}, values(l.v1)...)
	for _, r := range roots {
		if err := os.Mkdir(filepath.Join(r, host), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, r := range roots {
			_ = removeCgroupTree(filepath.Join(r, host))
		}
	})
	r := cgfsRun(t, nil, "--name", "c", "--parent", host+"/made/here", "--", "sh", "-c", "exit 5")
	if r.code != 5 {
		t.Fatalf("cgfs run: exit %d, want 5\n%s", r.code, r.out)
	}
	for _, root := range roots {
		if _, err := os.Stat(filepath.Join(root, host)); err != nil {
			t.Errorf("cgfs run removed the host's own %s: %v", filepath.Join(root, host), err)
		}
		if _, err := os.Stat(filepath.Join(root, host, "made")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgfs run left %s it made: %v", filepath.Join(root, host, "made"), err)
		}
	}
}

// TestRunPassesSignalsAndSurvivesKill: SIGTERM to cgfs run reaches the
// command (which exits 42); a second SIGTERM kills an init that ignores
// the first; kill -9 of the container's init ends cgfs
// run with 137, and everything is removed either way.
func TestRunPassesSignalsAndSurvivesKill(t *testing.T) {
	requireRoot(t)
	parent := runParent(t)
	run := startRun(t, nil, "--name", "sig", "--parent", parent)
	waitExec(t, nil, "sig", "echo up", "up")
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := run.Wait(); err == nil || err.(*exec.ExitError).ExitCode() != 42 {
		t.Errorf("cgfs run after SIGTERM: %v, want the command's exit status 42", err)
	}

	// An init that does not stop on SIGTERM (a shell whose trap only
	// says so, as PID 1): the second one kills. The second is sent once
	// the init has said the first reached it: two sent at once may
	// arrive as one (a signal is pending once).
	run = exec.Command(cgfsBin, "run", "--name", "deaf", "--parent", parent, "--",
		"sh", "-c", `trap "echo term" TERM; echo ready; while :; do sleep 1; done`)
	run.Stderr = os.Stderr
	said, err := run.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(said)
	expectLine := func(want string) {
		t.Helper()
		if !lines.Scan() || lines.Text() != want {
			_ = run.Process.Kill()
			t.Fatalf("the deaf init said %q (%v), want %q", lines.Text(), lines.Err(), want)
		}
	}
	expectLine("ready")
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectLine("term")
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	select {
	case err := <-exited:
		if err == nil || err.(*exec.ExitError).ExitCode() != 137 {
			t.Errorf("cgfs run of a deaf init after two SIGTERMs: %v, want 137", err)
		}
	case <-time.After(20 * time.Second):
		_ = run.Process.Kill()
		t.Fatalf("cgfs run of a deaf init did not end after two SIGTERMs")
	}

	run = startRun(t, nil, "--name", "kill", "--parent", parent)
	waitExec(t, nil, "kill", "sleep 100 >/dev/null 2>&1 & echo up", "up")
	if err := unix.Kill(initOf(t, run), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := run.Wait(); err == nil || err.(*exec.ExitError).ExitCode() != 137 {
		t.Errorf("cgfs run after kill -9 of the container's init: %v, want 137", err)
	}
}

// TestExecIntoARootWithDomainControllers: the container's root enables a
// domain controller for its children; cgfs exec still joins the root as
// the container sees it (its hidden leaf), never EBUSY.
func TestExecIntoARootWithDomainControllers(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	ctrl := domainController(t, l)
	parent := runParent(t)
	startRun(t, nil, "--name", "ex", "--parent", parent)
	v2 := "/sys/fs/cgroup"
	if len(l.v1) > 0 {
		v2 = "/sys/fs/cgroup/unified"
	}
	waitExec(t, nil, "ex", "echo +"+ctrl+" > "+v2+"/cgroup.subtree_control; cat "+v2+"/cgroup.subtree_control", ctrl)
	out, err := cgfsExec(t, nil, "ex", "grep '^0::' /proc/self/cgroup; cat "+v2+"/cgroup.procs | wc -l; id -u; hostname; stat -f -c 'statfs %t' "+v2)
	if err != nil {
		t.Fatalf("cgfs exec into a root with +%s: %v\n%s", ctrl, err, out)
	}
	// It runs under the container's seccomp filter too: statfs answered.
	for _, want := range []string{"0::/.cgfs-leaf", "\n0\nex", "statfs " + cgroup2Magic} {
		if !strings.Contains(out, want) {
			t.Errorf("cgfs exec said %q, want %q in it", out, want)
		}
	}
}

// startDaemon starts `cgfs daemon` on a socket of the test's own and
// waits for it to say it is ready (sd_notify READY=1).
func startDaemon(t testing.TB, args ...string) []string {
	t.Helper()
	env, _ := startDaemonCmd(t, args...)
	return env
}

// startDaemonCmd is startDaemon that also returns the daemon's process
// (the keeper's, with --keep).
func startDaemonCmd(t testing.TB, args ...string) ([]string, *exec.Cmd) {
	t.Helper()
	dir := publicDir(t)
	sock := filepath.Join(dir, "daemon.sock")
	notify := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(cgfsBin, append([]string{"daemon", "--socket", sock}, args...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	log := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if strings.Contains(log.String(), "a request panicked") {
			t.Errorf("a request panicked in the daemon (see its log)")
		}
		if testing.Verbose() || t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	buf := make([]byte, 256)
	_ = ln.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, _, err := ln.ReadFromUnix(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("the daemon did not notify readiness: %q %v\n%s", buf[:n], err, log.String())
	}
	return []string{"CGFS_SOCKET=" + sock}, cmd
}

// cgfsCmd runs `cgfs ARGS` with env to its end.
func cgfsCmd(t testing.TB, env []string, args ...string) (string, error) {
	t.Helper()
	// These are control commands: one that hangs (a daemon that never
	// answers) fails the test, with the daemon's log, instead of ending
	// the whole run at its timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cgfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestDaemonServesThreeContainers: one daemon, three containers of cgfs
// run, each seeing only its own tree; one detached, the others work on.
func TestDaemonServesThreeContainers(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	v2 := "/sys/fs/cgroup"
	if len(l.v1) > 0 {
		v2 = "/sys/fs/cgroup/unified"
	}
	env := startDaemon(t)
	parent := runParent(t)
	for _, n := range []string{"d1", "d2", "d3"} {
		startRun(t, env, "--name", n, "--parent", parent)
	}
	for _, n := range []string{"d1", "d2", "d3"} {
		waitExec(t, env, n, "mkdir "+v2+"/mine-"+n+" && echo made", "made")
	}
	list, err := cgfsCmd(t, env, "list")
	if err != nil {
		t.Fatalf("cgfs list: %v\n%s", err, list)
	}
	for _, n := range []string{"d1", "d2", "d3"} {
		if !strings.Contains(list, n+"\t") {
			t.Errorf("cgfs list = %q, want %s in it", list, n)
		}
		out, _ := cgfsExec(t, env, n, "ls "+v2+" | grep mine")
		if strings.TrimSpace(out) != "mine-"+n {
			t.Errorf("container %s sees %q, want only its own mine-%s", n, out, n)
		}
	}
	// cgfs exec's processes run under the agent's filter, answered by the
	// daemon.
	if out, _ := cgfsExec(t, env, "d1", "stat -f -c %t "+v2); strings.TrimSpace(out) != cgroup2Magic {
		t.Errorf("statfs of the view in d1 (by cgfs exec) = %q, want %s", out, cgroup2Magic)
	}
	if out, err := cgfsCmd(t, env, "detach", "d2"); err != nil {
		t.Fatalf("cgfs detach d2: %v\n%s", err, out)
	}
	waitFor(t, "d2 gone from the daemon's list", 10*time.Second, func() bool {
		list, _ = cgfsCmd(t, env, "list")
		return !strings.Contains(list, "d2\t")
	})
	if out, _ := cgfsExec(t, env, "d2", "ls "+v2+" 2>&1"); !strings.Contains(out, "not connected") && !strings.Contains(out, "no container") {
		t.Errorf("the detached container's view still answers: %q", out)
	}
	for _, n := range []string{"d1", "d3"} {
		out, _ := cgfsExec(t, env, n, "mkdir "+v2+"/more && ls "+v2+" | grep -c -e mine -e more")
		if strings.TrimSpace(out) != "2" {
			t.Errorf("after d2 was detached, %s answers %q, want its 2 cgroups", n, out)
		}
	}
	if out, err := cgfsCmd(t, nil, "attach", "--name", "x", "--owner", "1", "--target", "/mnt", "--socket", filepath.Join(t.TempDir(), "none.sock")); err == nil || !strings.Contains(out, "not running") {
		t.Errorf("cgfs attach with no daemon: %v %q, want a clear error", err, out)
	}
}

// runcConfig writes config.json for a runc container whose root is
// busybox, in a user namespace (0 -> base), running script, with the
// OCI hook.
func runcConfig(t *testing.T, bundle, cgroups, script string, env []string) {
	t.Helper()
	cmd := exec.Command("runc", "spec")
	cmd.Dir = bundle
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	p := filepath.Join(bundle, "config.json")
	var c map[string]any
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	process := c["process"].(map[string]any)
	process["terminal"] = false
	process["args"] = []string{"sh", "-c", script}
	c["root"] = map[string]any{"path": "rootfs", "readonly": false}
	linux := c["linux"].(map[string]any)
	// runc spec has a cgroup namespace on a cgroup v2 only host already.
	for _, want := range []string{"user", "cgroup"} {
		has := false
		for _, ns := range linux["namespaces"].([]any) {
			has = has || ns.(map[string]any)["type"] == want
		}
		if !has {
			linux["namespaces"] = append(linux["namespaces"].([]any), map[string]any{"type": want})
		}
	}
	m := []map[string]int{{"containerID": 0, "hostID": containerBase, "size": 65536}}
	linux["uidMappings"], linux["gidMappings"] = m, m
	linux["cgroupsPath"] = cgroups
	// The hooks are the README's example, pointed at this binary.
	var hooks struct {
		Hooks map[string][]struct {
			Path string   `json:"path"`
			Args []string `json:"args"`
			Env  []string `json:"env"`
		} `json:"hooks"`
	}
	if err := json.Unmarshal([]byte(example(t, "oci-hooks.json")), &hooks); err != nil {
		t.Fatal(err)
	}
	for _, hs := range hooks.Hooks {
		for i := range hs {
			hs[i].Env = append(hs[i].Env, env...)
		}
	}
	c["hooks"] = hooks.Hooks
	// And the seccomp example: the daemon answers the container's statfs
	// (and cgroupfs mounts) at its seccomp socket, beside its control
	// socket.
	var sec struct {
		Linux struct {
			Seccomp map[string]any `json:"seccomp"`
		} `json:"linux"`
	}
	if err := json.Unmarshal([]byte(example(t, "oci-seccomp.json")), &sec); err != nil {
		t.Fatal(err)
	}
	for _, kv := range env {
		if sock, ok := strings.CutPrefix(kv, "CGFS_SOCKET="); ok {
			sec.Linux.Seccomp["listenerPath"] = filepath.Join(filepath.Dir(sock), "seccomp.sock")
		}
	}
	linux["seccomp"] = sec.Linux.Seccomp
	b, _ = json.MarshalIndent(c, "", " ")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// requireTool skips without a client the test runs for real: the VM
// lane carries only busybox, so the host lane runs such tests (and,
// under CI, fails them without the client).
func requireTool(t testing.TB, tool string) {
	t.Helper()
	_, err := exec.LookPath(tool)
	laneNeeds(t, hostLane, err == nil, tool+" is not installed (Debian's package, which .ci/run installs; not in the VM's initramfs)")
}

// TestRuncThroughTheOCIHook: a real runc 1.1.5 container (busybox
// rootfs, its own user namespace) whose /sys/fs/cgroup is the view,
// put there by cgfs oci-hook as a createRuntime hook.
func TestRuncThroughTheOCIHook(t *testing.T) {
	requireRoot(t)
	requireTool(t, "runc")
	l := detectLane(t)
	env := startDaemon(t, "--keep")
	bundle := publicDir(t)
	busyboxRootfsAt(t, filepath.Join(bundle, "rootfs"), containerBase)
	cgroups := fmt.Sprintf("/cgfs-test-runc-%d", os.Getpid())
	t.Cleanup(func() { checkNothingLeft(t, strings.TrimPrefix(cgroups, "/")) })
	v2 := "/sys/fs/cgroup"
	if len(l.v1) > 0 {
		v2 = "/sys/fs/cgroup/unified"
	}
	runcConfig(t, bundle, cgroups, "grep fuse.cgfs /proc/self/mountinfo | cut -d' ' -f5; mkdir "+v2+"/sub && echo made sub; ls "+v2+" | grep sub; grep '^0::' /proc/self/cgroup; stat -f -c 'statfs %t' "+v2+"; "+
		midwayScript+"; mkdir "+v2+"/sub2 && echo made sub2; ls "+v2+" | grep sub2; stat -f -c 'statfs2 %t' "+v2, env)
	state := t.TempDir()
	name := fmt.Sprintf("cgfs-test-runc-%d", os.Getpid())
	upgraded := upgradeMidway(t, env, filepath.Join(bundle, "rootfs"))
	cmd := exec.Command("runc", "--root", state, "run", "-b", bundle, name)
	out, err := cmd.CombinedOutput()
	<-upgraded
	_ = exec.Command("runc", "--root", state, "delete", "-f", name).Run()
	t.Logf("runc:\n%s", out)
	if err != nil {
		t.Fatalf("runc run: %v", err)
	}
	// The second half after two upgrades of the daemon: the view and
	// the seccomp listener runc handed over were handed on.
	for _, want := range []string{"/sys/fs/cgroup\n", "made sub", "\nsub\n", "0::/", "statfs " + cgroup2Magic,
		"made sub2", "\nsub2\n", "statfs2 " + cgroup2Magic} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the runc container did not say %q", want)
		}
	}
	waitDropped(t, env, name)
}

// midwayScript, in a container's script, marks its middle (the file
// /tmp/upgrade-me) and waits up to a minute for /tmp/upgraded:
// upgradeMidway upgrades the daemon in between.
const midwayScript = "touch /tmp/upgrade-me; i=0; while [ ! -e /tmp/upgraded ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"

// upgradeMidway waits for a container whose root file system is rootfs
// to reach the middle of its script (midwayScript), upgrades the daemon
// of env twice and lets the container go on. The channel is closed once
// it is done (or gave up: the test fails).
func upgradeMidway(t *testing.T, env []string, rootfs string) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err := os.Stat(filepath.Join(rootfs, "tmp/upgrade-me")); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("the container never reached the middle of its script")
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		for i := 0; i < 2; i++ {
			out, err := cgfsCmd(t, env, "upgrade")
			if err != nil {
				t.Errorf("cgfs upgrade with the container running: %v\n%s", err, out)
			}
			t.Logf("upgrade %d: %s", i+1, strings.TrimSpace(out))
		}
		if err := os.WriteFile(filepath.Join(rootfs, "tmp/upgraded"), nil, 0o644); err != nil {
			t.Errorf("letting the container go on: %v", err)
		}
	}()
	return done
}

// waitDropped waits for the daemon to drop the view called name once its
// container has ended, with nobody detaching it.
func waitDropped(t *testing.T, env []string, name string) {
	t.Helper()
	waitFor(t, "the ended container's view "+name+" dropped by the daemon", 10*time.Second, func() bool {
		list, err := cgfsCmd(t, env, "list")
		return err == nil && !strings.Contains(list, name+"\t")
	})
}

// busyboxRootfsAt makes a busybox root file system at dir.
func busyboxRootfsAt(t *testing.T, dir string, base int) {
	t.Helper()
	src := busyboxRootfs(t, base)
	if err := os.Rename(src, dir); err != nil {
		t.Fatal(err)
	}
}

// TestLXCThroughTheHook: a real LXC 5.0.2 container (busybox rootfs,
// its own user namespace) whose /sys/fs/cgroup is the view, put there by
// cgfs lxc-hook as lxc.hook.start-host.
func TestLXCThroughTheHook(t *testing.T) {
	requireRoot(t)
	requireTool(t, "lxc-start")
	// With shadow's newuidmap on the machine (Debian's uidmap), LXC maps
	// ids with it even for root, which then needs its range in
	// /etc/subuid and /etc/subgid, as any user.
	grantSubIDs(t, "root", containerBase, 65536)
	env := startDaemon(t, "--keep")
	dir := publicDir(t)
	ctr := filepath.Join(dir, "ctr")
	rootfs := filepath.Join(ctr, "rootfs")
	if err := os.MkdirAll(ctr, 0o755); err != nil {
		t.Fatal(err)
	}
	busyboxRootfsAt(t, rootfs, containerBase)
	initScript := "#!/bin/sh\nexec > /tmp/result 2>&1\ngrep fuse.cgfs /proc/self/mountinfo | cut -d' ' -f5\nmkdir /sys/fs/cgroup/memory/sub 2>/dev/null || mkdir /sys/fs/cgroup/sub\necho made sub\ngrep '^0::' /proc/self/cgroup\n" +
		"stat -f -c 'statfs %t' /sys/fs/cgroup/unified 2>/dev/null || stat -f -c 'statfs %t' /sys/fs/cgroup\n" +
		midwayScript + "\nmkdir /sys/fs/cgroup/memory/sub2 2>/dev/null || mkdir /sys/fs/cgroup/sub2\necho made sub2\n" +
		"stat -f -c 'statfs2 %t' /sys/fs/cgroup/unified 2>/dev/null || stat -f -c 'statfs2 %t' /sys/fs/cgroup\n"
	if err := os.WriteFile(filepath.Join(rootfs, "init.sh"), []byte(initScript), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Lchown(filepath.Join(rootfs, "init.sh"), containerBase, containerBase)
	cgdir := fmt.Sprintf("cgfs-test-lxc-%d", os.Getpid())
	t.Cleanup(func() { checkNothingLeft(t, cgdir) })
	config := fmt.Sprintf(`lxc.uts.name = cgfs-lxc
lxc.rootfs.path = dir:%s
lxc.idmap = u 0 %d 65536
lxc.idmap = g 0 %d 65536
lxc.net.0.type = empty
lxc.cgroup.dir.container = %s/payload
lxc.cgroup.dir.monitor = %s/monitor
lxc.cgroup.dir.monitor.pivot = %s/pivot
lxc.environment = %s
lxc.init.cmd = /init.sh
`, rootfs, containerBase, containerBase, cgdir, cgdir, cgdir, env[0]) + lxcExample(t, env) // the README's lines
	if err := os.WriteFile(filepath.Join(ctr, "config"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	upgraded := upgradeMidway(t, env, rootfs)
	cmd := exec.Command("lxc-start", "-n", "ctr", "-P", dir, "-F", "-o", filepath.Join(dir, "lxc.log"), "-l", "WARN")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	<-upgraded
	log, _ := os.ReadFile(filepath.Join(dir, "lxc.log"))
	result, _ := os.ReadFile(filepath.Join(rootfs, "tmp/result"))
	t.Logf("lxc-start: %v\n%s\nlog:\n%s\nthe container said:\n%s", err, out, log, result)
	if err != nil {
		t.Fatalf("lxc-start: %v", err)
	}
	// statfs answered by the daemon, through LXC's notify proxy, before
	// and after two upgrades of the daemon.
	for _, want := range []string{"/sys/fs/cgroup\n", "made sub", "0::/", "statfs " + cgroup2Magic, "made sub2", "statfs2 " + cgroup2Magic} {
		if !strings.Contains(string(result), want) {
			t.Errorf("the LXC container did not say %q", want)
		}
	}
	waitDropped(t, env, "lxc-ctr")
	// LXC makes its cgroups below the test's directory in every
	// hierarchy; they are removed with it.
	l := detectLane(t)
	for _, r := range append([]string{l.cgroup2}, values(l.v1)...) {
		_ = removeCgroupTree(filepath.Join(r, cgdir))
	}
}

// lxcExample is the README's LXC lines, pointed at this binary, the
// examples' seccomp profile and the test daemon's LXC seccomp socket.
func lxcExample(t *testing.T, env []string) string {
	t.Helper()
	conf := example(t, "lxc.conf")
	profile, err := filepath.Abs(exampleDir())
	if err != nil {
		t.Fatal(err)
	}
	conf = strings.ReplaceAll(conf, "/usr/local/share/cgfs", profile)
	for _, kv := range env {
		if sock, ok := strings.CutPrefix(kv, "CGFS_SOCKET="); ok {
			conf = strings.ReplaceAll(conf, "/run/cgfs/lxc-seccomp.sock", filepath.Join(filepath.Dir(sock), "lxc-seccomp.sock"))
		}
	}
	return conf
}

// exampleDir is where the examples are: the checkout's, or the VM
// lane's copy.
func exampleDir() string {
	if d := os.Getenv("CGFS_EXAMPLES"); d != "" {
		return d
	}
	return filepath.Join("..", "cmd", "cgfs", "examples")
}

// example is the file of cmd/cgfs/examples called name, its cgfs the
// binary under test.
func example(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(exampleDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "/usr/local/bin/cgfs", cgfsBin)
}

func values(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestDaemonKeepsRuncListenersAcrossRestarts: runc hands the daemon a
// container's seccomp listener once. The daemon keeps a copy in
// systemd's file descriptor store (here the test plays systemd: the
// notify socket, and LISTEN_FDS for the restarted daemon), so after the
// daemon is killed and started again, the container's notified syscalls
// are answered again instead of waiting forever.
func TestDaemonKeepsRuncListenersAcrossRestarts(t *testing.T) {
	requireRoot(t)
	requireTool(t, "runc")
	dir := publicDir(t)
	sock := filepath.Join(dir, "daemon.sock")
	env := []string{"CGFS_SOCKET=" + sock}
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	stored := make(chan *os.File, 4)
	ready := make(chan struct{}, 4)
	go func() { // systemd's side of sd_notify
		for {
			buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
			n, oobn, _, _, err := notify.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			msg := string(buf[:n])
			if strings.Contains(msg, "READY=1") {
				ready <- struct{}{}
			}
			if name, ok := strings.CutPrefix(msg, "FDSTORE=1\nFDNAME="); ok {
				if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
					if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
						stored <- os.NewFile(uintptr(fds[0]), name)
					}
				}
			}
		}
	}()
	start := func(extra []*os.File, shell string) *exec.Cmd {
		cmd := exec.Command("sh", "-c", shell+"exec "+cgfsBin+" daemon --socket "+sock)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(dir, "notify.sock"))
		cmd.ExtraFiles = extra
		log := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Logf("daemon log:\n%s", log.String())
		})
		select {
		case <-ready:
		case <-time.After(20 * time.Second):
			t.Fatalf("the daemon did not say READY=1:\n%s", log.String())
		}
		return cmd
	}
	first := start(nil, "")

	bundle := publicDir(t)
	rootfs := filepath.Join(bundle, "rootfs")
	busyboxRootfsAt(t, rootfs, containerBase)
	cgroups := fmt.Sprintf("/cgfs-test-restart-%d", os.Getpid())
	t.Cleanup(func() { checkNothingLeft(t, strings.TrimPrefix(cgroups, "/")) })
	runcConfig(t, bundle, cgroups, "stat -f -c %t /sys/fs/cgroup > /tmp/before; while [ ! -e /tmp/go ]; do sleep 0.1; done; stat -f -c %t / > /tmp/after 2>&1; echo done >> /tmp/after", env)
	state := t.TempDir()
	name := fmt.Sprintf("cgfs-test-restart-%d", os.Getpid())
	runc := exec.Command("runc", "--root", state, "run", "-b", bundle, name)
	out := &lockedBuffer{}
	runc.Stdout, runc.Stderr = out, out
	if err := runc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command("runc", "--root", state, "delete", "-f", name).Run()
		_ = runc.Wait()
		t.Logf("runc:\n%s", out.String())
	})
	var listener *os.File
	select {
	case listener = <-stored:
	case <-time.After(20 * time.Second):
		t.Fatal("the daemon stored no seccomp listener (FDSTORE=1)")
	}
	defer listener.Close()
	waitFor(t, "the container's first statfs", 10*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(rootfs, "tmp/before"))
		return len(b) > 0
	})

	// The daemon dies; a new one takes the stored listener up.
	_ = first.Process.Kill()
	_ = first.Wait()
	start([]*os.File{listener}, "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES="+listener.Name()+"; ")
	if err := os.WriteFile(filepath.Join(rootfs, "tmp/go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var after []byte
	waitFor(t, "the container's statfs after the restart", 10*time.Second, func() bool {
		after, _ = os.ReadFile(filepath.Join(rootfs, "tmp/after"))
		return strings.Contains(string(after), "done")
	})
	var st unix.Statfs_t
	if err := unix.Statfs(rootfs, &st); err != nil {
		t.Fatal(err)
	}
	if want := strconv.FormatInt(st.Type, 16); !strings.HasPrefix(string(after), want+"\n") {
		t.Errorf("statfs of / in the container after the restart: %q, want %s", after, want)
	}
}

// grantSubIDs gives user name the subordinate id range [start,
// start+count) in /etc/subuid and /etc/subgid for the test, if it has not
// got it, and takes it away again when the test ends.
func grantSubIDs(t testing.TB, name string, start, count int) {
	t.Helper()
	line := fmt.Sprintf("%s:%d:%d", name, start, count)
	for _, file := range []string{"/etc/subuid", "/etc/subgid"} {
		b, err := os.ReadFile(file)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if slices.Contains(strings.Split(string(b), "\n"), line) {
			continue
		}
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(line + "\n"); err != nil {
			t.Fatal(err)
		}
		f.Close()
		t.Cleanup(func() { removeLine(t, file, line) })
	}
}

// removeLine removes the lines that are line from file.
func removeLine(t testing.TB, file, line string) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Error(err)
		return
	}
	var keep []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if strings.TrimSuffix(l, "\n") != line {
			keep = append(keep, l)
		}
	}
	if err := os.WriteFile(file, []byte(strings.Join(keep, "")), 0o644); err != nil {
		t.Error(err)
	}
}
