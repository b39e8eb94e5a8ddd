package test

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// cgfsBin is the cgfs binary under test: $CGFS_BIN, or one built from
// this checkout by TestMain.
var cgfsBin string

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
	case containerMode:
		os.Exit(containerMain())
	default:
		os.Exit(helperMain(os.Args[1:]))
	}
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "test setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	cgfsBin = os.Getenv("CGFS_BIN")
	if cgfsBin == "" {
		dir, err := os.MkdirTemp("", "cgfs-bin-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		// Unprivileged users the tests create run it too.
		if err := os.Chmod(dir, 0o755); err != nil {
			return 0, err
		}
		cgfsBin = filepath.Join(dir, "cgfs")
		build := exec.Command("go", "build", "-o", cgfsBin, "../cmd/cgfs")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return 0, fmt.Errorf("building cgfs: %w", err)
		}
	}
	// Helpers run the test binary as other users and in other
	// namespaces: give them a copy they can reach.
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	helperDir, err := os.MkdirTemp("", "cgfs-helper-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(helperDir)
	helperBin = filepath.Join(helperDir, "cgfs.test")
	if err := copyExecutable(exe, helperBin); err != nil {
		return 0, err
	}
	if err := os.Chmod(helperDir, 0o755); err != nil {
		return 0, err
	}
	raceBuilt = isRaceBuilt(cgfsBin)
	code := m.Run()
	if reports := raceReports(); len(reports) > 0 {
		// A race in a process of the binary under test (the daemon, its
		// keeper and helpers, cgfs run...) fails the run, whatever the
		// tests said.
		for _, r := range reports {
			b, _ := os.ReadFile(r)
			fmt.Fprintf(os.Stderr, "FAIL: the race detector reported in a cgfs process (%s):\n%s\n", r, b)
		}
		code = 1
	}
	return code, nil
}

// raceBuilt says the binary under test was built with -race (CI's race
// step): its processes report data races where GORACE's log_path says
// (raceReports), and some of their measures mean less (resident memory).
var raceBuilt bool

// isRaceBuilt reads the build settings of the binary at path.
func isRaceBuilt(path string) bool {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// raceReports are the race detector's reports of race-built processes,
// written to GORACE's log_path (PATH.PID each); none without one.
func raceReports() []string {
	for _, opt := range strings.Fields(os.Getenv("GORACE")) {
		if p, ok := strings.CutPrefix(opt, "log_path="); ok && p != "stdout" && p != "stderr" {
			reports, _ := filepath.Glob(p + ".*")
			return reports
		}
	}
	return nil
}

// helperBin is a copy of the test binary every user may run.
var helperBin string

func copyExecutable(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

// requireRoot skips an integration test without root, and fails it
// instead when CI=true: CI must never pass by skipping.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	skip(t, "integration tests need root (real FUSE mounts, real cgroups)")
}

// skip skips with a reason, or fails under CI=true.
func skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true forbids skipping: %s", reason)
	}
	t.Skip(reason)
}

// ciLane names one of the two lanes CI runs the whole suite in.
type ciLane string

const (
	// hostLane is .ci/run's go test on the machine itself: cgroup v1
	// hierarchies beside a cgroup2 that has only hugetlb, and every
	// client .ci/run installs.
	hostLane ciLane = "host"
	// vmLane is test/vm (CGFS_LANE=vm): pure cgroup v2 with every
	// controller, 3 CPUs, busybox only.
	vmLane ciLane = "vm"
)

// currentLane is the lane the suite runs in: the VM lane says so in
// CGFS_LANE, anything else counts as the host lane.
func currentLane() ciLane {
	if os.Getenv("CGFS_LANE") == "vm" {
		return vmLane
	}
	return hostLane
}

// laneClaims is, by test, the lane a met laneOnly named.
var laneClaims sync.Map // t.Name() -> ciLane

// laneOnly is laneNeeds for a need only the lane runsIn can meet (its
// shape: cgroup v1 hierarchies or none): met, it claims the test for
// this lane, and a later unmet need of the test that names the other
// lane then fails it under CI=true, as that test would skip in both.
func laneOnly(t testing.TB, runsIn ciLane, ok bool, reason string) {
	t.Helper()
	if ok && runsIn == currentLane() {
		laneClaims.Store(t.Name(), runsIn)
	}
	laneNeeds(t, runsIn, ok, reason)
}

// laneNeeds states a need of a test that the lane runsIn meets (the
// other lane may too): met (ok), the test goes on; unmet, it skips,
// recording why and where it runs instead. Under CI=true an unmet need
// fails the test in runsIn itself, and in a lane laneOnly claimed the
// test for: a test cannot pass CI by skipping in both lanes. Every
// other skip goes through skip, which CI=true forbids.
func laneNeeds(t testing.TB, runsIn ciLane, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if here := currentLane(); os.Getenv("CI") == "true" {
		if runsIn == here {
			t.Fatalf("CI=true: this test runs in the %s lane, which this is, yet %s", runsIn, reason)
		}
		if claimed, _ := laneClaims.Load(t.Name()); claimed == here {
			t.Fatalf("CI=true: this test needs the %s lane's shape (met here) and the %s lane for another need (%s): it would skip in both lanes", here, runsIn, reason)
		}
	}
	t.Skipf("%s: this test runs in the %s lane", reason, runsIn)
}

// lane describes the machine the suite runs on, read from the machine
// itself: where cgroup2 is mounted and which controllers it offers.
type lane struct {
	cgroup2     string            // cgroup2 mount point
	controllers map[string]bool   // available at the cgroup2 root
	v1          map[string]string // v1 hierarchy name -> mount point
}

func detectLane(t testing.TB) lane {
	t.Helper()
	mounts, err := procfs.GetMounts()
	if err != nil {
		t.Fatal(err)
	}
	var l lane
	l.v1 = map[string]string{}
	for _, m := range mounts {
		if m.FSType == "cgroup2" && m.Root == "/" && l.cgroup2 == "" {
			l.cgroup2 = m.MountPoint
		}
		if m.FSType == "cgroup" && m.Root == "/" {
			l.v1[filepath.Base(m.MountPoint)] = m.MountPoint
		}
	}
	if l.cgroup2 == "" {
		t.Fatal("no cgroup2 hierarchy is mounted")
	}
	l.controllers = map[string]bool{}
	for _, c := range strings.Fields(readFile(t, filepath.Join(l.cgroup2, "cgroup.controllers"))) {
		l.controllers[c] = true
	}
	return l
}

var cgroupSeq atomic.Int64

// newCgroup creates a test cgroup directly below the cgroup2 root and
// removes it (and everything below) when the test ends, pass or fail.
func newCgroup(t testing.TB, l lane) string {
	t.Helper()
	return newCgroupIn(t, l.cgroup2)
}

// newCgroupIn creates a test cgroup below the hierarchy root dir.
func newCgroupIn(t testing.TB, root string) string {
	t.Helper()
	name := fmt.Sprintf("cgfs-test-%s-%d-%d", sanitize(t.Name()), os.Getpid(), cgroupSeq.Add(1))
	dir := filepath.Join(root, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeCgroupTree(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

func sanitize(s string) string {
	s = strings.NewReplacer("/", "-", " ", "-").Replace(s)
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

// removeCgroupTree removes a host cgroup and its descendants, deepest
// first, waiting a little for exiting processes to leave.
func removeCgroupTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			return fmt.Errorf("rmdir %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// server is a running `cgfs mount`.
type server struct {
	cmd    *exec.Cmd
	mnt    string
	log    *lockedBuffer
	done   chan struct{}
	exit   error
	exited atomic.Bool
}

// mountView starts `cgfs mount --cgroup hostDir [extra...] MNT` and waits
// until the mount is live. It is stopped and unmounted when the test ends.
func mountView(t testing.TB, hostDir string, extra ...string) *server {
	t.Helper()
	mnt := publicDir(t)
	args := []string{"mount"}
	if hostDir != "" {
		args = append(args, "--cgroup", hostDir)
	}
	args = append(append(args, extra...), mnt)
	s := &server{cmd: exec.Command(cgfsBin, args...), mnt: mnt, log: &lockedBuffer{}, done: make(chan struct{})}
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.exit = s.cmd.Wait()
		s.exited.Store(true)
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if testing.Verbose() || t.Failed() {
			t.Logf("cgfs log:\n%s", s.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !isMounted(t, mnt) {
		if s.exited.Load() || time.Now().After(deadline) {
			t.Fatalf("cgfs did not mount %s (exit %v):\n%s", mnt, s.exit, s.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s
}

// terminate sends SIGTERM (as systemd does) and waits for the process
// to exit, killing it after 30 s (an error).
func (s *server) terminate(t testing.TB) {
	t.Helper()
	if !s.exited.Load() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Errorf("cgfs did not exit within 30s of SIGTERM")
	}
}

// stop sends SIGTERM and waits for the server to exit; it force-detaches
// the mount if the server failed to.
func (s *server) stop(t testing.TB) error {
	t.Helper()
	s.terminate(t)
	if isMounted(t, s.mnt) {
		t.Errorf("%s still mounted after cgfs exited", s.mnt)
		_ = unix.Unmount(s.mnt, unix.MNT_DETACH)
	}
	return s.exit
}

// publicDir is a new empty directory that every user (and every user
// namespace) may reach, removed when the test ends.
func publicDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// waitLog waits until the server's log (which arrives through a pipe)
// contains want.
func (s *server) waitLog(t testing.TB, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.log.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the host log has no %q:\n%s", want, s.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrape fetches the server's metrics (started with --metrics).
func (s *server) scrape(t testing.TB) string {
	t.Helper()
	_, body := s.get(t, "/metrics")
	return body
}

// get fetches path from the server's metrics listener.
func (s *server) get(t testing.TB, path string) (int, string) {
	t.Helper()
	s.waitLog(t, "msg=\"metrics listening\"")
	var addr string
	for _, line := range strings.Split(s.log.String(), "\n") {
		if strings.Contains(line, "metrics listening") {
			_, addr, _ = strings.Cut(line, "addr=")
		}
	}
	resp, err := http.Get("http://" + strings.TrimSpace(addr) + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// startPiped starts cmd with a pipe to its stdin and one from its
// stdout.
func startPiped(t testing.TB, cmd *exec.Cmd) (io.WriteCloser, io.ReadCloser) {
	t.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return in, out
}

// metricValue returns the value of the sample in text whose name and
// labels contain every part, summed over matches.
func metricValue(text, name string, parts ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func (s *server) path(rel string) string { return filepath.Join(s.mnt, rel) }

func isMounted(t testing.TB, dir string) bool {
	t.Helper()
	mounts, err := procfs.GetMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.MountPoint == dir {
			return true
		}
	}
	return false
}

// startProcess starts a long sleep, moved into host cgroup dir (if not
// empty) before it execs, and kills it when the test ends.
func startSleeper(t testing.TB, cgroupDir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if cgroupDir != "" {
		fd, err := unix.Open(cgroupDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// writeFile writes data in one write(2), as a shell's echo does.
func writeFile(path, data string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(data))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func mustWrite(t testing.TB, path, data string) {
	t.Helper()
	if err := writeFile(path, data); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// keyedValue returns the value of key in flat-keyed cgroup text
// ("populated 1\nfrozen 0\n").
func keyedValue(text, key string) string {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == key {
			return f[1]
		}
	}
	return ""
}

// errnoOf reduces an error to its errno (0 for nil).
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.Errno(0xffff)
}
