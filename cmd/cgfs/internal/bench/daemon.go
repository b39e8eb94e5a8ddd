package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
)

// DaemonRow is the daemon's use with Views views attached.
type DaemonRow struct {
	Views   int
	RSS     uint64        // bytes, VmRSS of the daemon process after all attached and settled
	Threads int           // from /proc/PID/status
	CPU     time.Duration // user+system CPU the daemon used during the idle window
	Idle    time.Duration // the idle window's length
	// Scrape is the fastest of a few GETs of the daemon's /metrics after
	// the idle window; Series how many samples it had.
	Scrape time.Duration
	Series int
}

// Daemon starts `exe daemon --socket <tmp>` as a child process, attaches, for each count in counts
// (ascending, e.g. 1, 100, 1000), views until that many are attached, measures, and after the last
// count stops everything. log(format, args...) reports progress (may be nil).
//
// Each view has an owner of its own: a `busybox sleep` (or the system's
// sleep) in new user (0 → 100000, 65536 ids), mount, pid and cgroup
// namespaces, started straight into a cgroup v2 directory of its own
// (clone3 CLONE_INTO_CGROUP) below cgfs-bench-PID-daemon. The view is
// asked for over the control socket with that directory as its cgroup
// (attach --cgroup), and its mount is moved onto /sys/fs/cgroup in the
// owner's mount namespace, as `cgfs attach --in` does: nothing is
// mounted in the host's. Everything is taken down on every return.
func Daemon(exe string, counts []int, idle time.Duration, log func(string, ...any)) (rows []DaemonRow, err error) {
	if log == nil {
		log = func(string, ...any) {}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the daemon benchmark needs root: it makes cgroups, namespaces and mounts")
	}
	if exe == "" {
		return nil, errors.New("the daemon benchmark needs the cgfs binary")
	}
	for i, n := range counts {
		if n <= 0 || (i > 0 && n <= counts[i-1]) {
			return nil, fmt.Errorf("view counts must be positive and ascending: %v", counts)
		}
	}
	b := &daemonBed{exe: exe, log: log}
	defer func() {
		if cerr := b.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("taking the daemon benchmark down: %w", cerr))
		}
	}()
	if err := b.setUp(); err != nil {
		return nil, err
	}
	for _, n := range counts {
		start := time.Now()
		if err := b.attachUpTo(n); err != nil {
			return rows, err
		}
		log("daemon: %d views attached (%d new in %s)", n, n-b.measured, time.Since(start).Round(time.Millisecond))
		b.measured = n
		row, err := b.measure(n, idle)
		if err != nil {
			return rows, err
		}
		fds := -1
		if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", b.daemon.Process.Pid)); err == nil {
			fds = len(ents)
		}
		log("daemon: %d views: RSS %.1f MiB, %d threads, %d descriptors, %s CPU in %s idle",
			row.Views, float64(row.RSS)/(1<<20), row.Threads, fds, row.CPU, row.Idle.Round(time.Millisecond))
		rows = append(rows, row)
	}
	return rows, nil
}

const (
	// daemonWorkers is how many views are attached at once.
	daemonWorkers = 8
	// daemonTarget is where each view goes in its owner's mount
	// namespace.
	daemonTarget = "/sys/fs/cgroup"
	// daemonSettle is how long the daemon is left alone before it is
	// measured.
	daemonSettle = time.Second
	// daemonNoFile is the daemon's descriptor limit, as systemd gives a
	// service by default (hard 524288; Go raises the soft limit to it).
	daemonNoFile = 524288
)

// daemonBed is what the benchmark set up, to be taken down by close.
type daemonBed struct {
	exe      string
	log      func(string, ...any)
	tmp      string
	sock     string
	cgroot   string      // the v2 directory cgfs-bench-PID-daemon
	hostMnt  unix.Stat_t // this process's mount namespace
	sleep    []string    // the owners' command
	measured int

	// spawn starts the daemon and the owners, from threads that live
	// until close: Pdeathsig follows the thread that forked.
	spawn *daemonThreads
	// move puts the views in place, from threads that enter the owners'
	// mount namespaces (and so are never used for anything else).
	move *daemonThreads

	daemon     *exec.Cmd
	daemonLog  *os.File
	daemonDone chan struct{} // closed once the daemon was waited for
	daemonErr  error

	mu     sync.Mutex
	owners []*daemonOwner
}

// daemonOwner is the owner of one view and its cgroup.
type daemonOwner struct {
	name string
	dir  string
	cmd  *exec.Cmd // nil until started
}

func (b *daemonBed) setUp() error {
	root, _, err := hierarchies()
	if err != nil {
		return err
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/mnt", os.Getpid()), &b.hostMnt); err != nil {
		return err
	}
	b.sleep, err = daemonSleep()
	if err != nil {
		return err
	}
	if b.tmp, err = os.MkdirTemp("", "cgfs-bench-daemon-"); err != nil {
		return err
	}
	b.sock = filepath.Join(b.tmp, "daemon.sock")
	dir := filepath.Join(root, fmt.Sprintf("cgfs-bench-%d-daemon", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("the benchmark's cgroup: %w", err)
	}
	b.cgroot = dir
	b.spawn = newDaemonThreads(daemonWorkers, nil)
	b.move = newDaemonThreads(daemonWorkers, func() error { return unix.Unshare(unix.CLONE_FS) })
	return b.startDaemon()
}

// daemonSleep is the cheapest long sleep there is: busybox's (static)
// if it is installed, else the system's.
func daemonSleep() ([]string, error) {
	if p, err := exec.LookPath("busybox"); err == nil {
		return []string{p, "sleep", "2147483647"}, nil
	}
	if p, err := exec.LookPath("sleep"); err == nil {
		return []string{p, "infinity"}, nil
	}
	return nil, errors.New("neither busybox nor sleep is installed")
}

// startDaemon starts the daemon and waits until its socket answers.
func (b *daemonBed) startDaemon() error {
	f, err := os.Create(filepath.Join(b.tmp, "daemon.log"))
	if err != nil {
		return err
	}
	b.daemonLog = f
	cmd := exec.Command(b.exe, "daemon", "--socket", b.sock, "--metrics", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = f, f
	for _, kv := range os.Environ() {
		// Not systemd's service: no notifications, no inherited
		// descriptors; and this socket, not the usual one.
		switch strings.SplitN(kv, "=", 2)[0] {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "CGFS_SOCKET":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := b.spawn.do(cmd.Start); err != nil {
		return fmt.Errorf("starting the daemon: %w", err)
	}
	b.daemon = cmd
	b.daemonDone = make(chan struct{})
	go func() {
		b.daemonErr = cmd.Wait()
		close(b.daemonDone)
	}()
	lim := unix.Rlimit{Cur: daemonNoFile, Max: daemonNoFile}
	var old unix.Rlimit
	if err := unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_NOFILE, nil, &old); err == nil && old.Max < lim.Max {
		if err := unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			b.log("daemon: its descriptor limit stays %d (raising it: %v)", old.Max, err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-b.daemonDone:
			return fmt.Errorf("the daemon exited at start (%v): %s", b.daemonErr, b.daemonTail())
		default:
		}
		a, _, err := control.Ask(b.sock, control.Request{Op: "list"})
		if err == nil {
			if err := a.Err(); err != nil {
				return fmt.Errorf("the daemon: %w", err)
			}
			b.log("daemon: started, pid %d, socket %s", cmd.Process.Pid, b.sock)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon does not answer at %s: %v: %s", b.sock, err, b.daemonTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// daemonTail is the end of what the daemon logged.
func (b *daemonBed) daemonTail() string {
	out, _ := os.ReadFile(filepath.Join(b.tmp, "daemon.log"))
	out = bytes.TrimSpace(out)
	if len(out) > 2000 {
		out = out[len(out)-2000:]
	}
	if len(out) == 0 {
		return "(it logged nothing)"
	}
	return string(out)
}

// attachUpTo attaches views, daemonWorkers at a time, until n are.
func (b *daemonBed) attachUpTo(n int) error {
	b.mu.Lock()
	from := len(b.owners)
	b.mu.Unlock()
	next := make(chan int)
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
		errMu  sync.Mutex
		first  error
	)
	for w := 0; w < min(daemonWorkers, n-from); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := b.addView(i); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					failed.Store(true)
				}
			}
		}()
	}
	for i := from; i < n && !failed.Load(); i++ {
		select {
		case <-b.daemonDone:
			failed.Store(true)
			errMu.Lock()
			if first == nil {
				first = fmt.Errorf("the daemon exited with %d views attached (%v): %s", i, b.daemonErr, b.daemonTail())
			}
			errMu.Unlock()
		case next <- i:
		}
	}
	close(next)
	wg.Wait()
	return first
}

// addView makes owner i and its cgroup, asks the daemon for its view
// and puts the view in the owner's mount namespace.
func (b *daemonBed) addView(i int) error {
	o := &daemonOwner{name: fmt.Sprintf("bench-%d", i), dir: filepath.Join(b.cgroot, fmt.Sprintf("v%d", i))}
	if err := os.Mkdir(o.dir, 0o755); err != nil {
		return fmt.Errorf("view %d: its cgroup: %w", i, err)
	}
	b.mu.Lock()
	b.owners = append(b.owners, o) // from here on close removes it
	b.mu.Unlock()
	cg, err := os.Open(o.dir)
	if err != nil {
		return fmt.Errorf("view %d: its cgroup: %w", i, err)
	}
	cmd := exec.Command(b.sleep[0], b.sleep[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWNS | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWCGROUP,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		UseCgroupFD: true,
		CgroupFD:    int(cg.Fd()),
		Pdeathsig:   syscall.SIGKILL,
	}
	err = b.spawn.do(cmd.Start)
	cg.Close()
	if err != nil {
		return fmt.Errorf("view %d: starting its owner: %w", i, err)
	}
	b.mu.Lock()
	o.cmd = cmd
	b.mu.Unlock()
	pid := cmd.Process.Pid
	a, view, err := control.Ask(b.sock, control.Request{Op: "attach", Name: o.name, Owner: pid, Cgroup: o.dir})
	if err == nil {
		err = a.Err()
	}
	if err == nil && view == nil {
		err = errors.New("the daemon sent no view")
	}
	if err != nil {
		if view != nil {
			view.Close()
		}
		return fmt.Errorf("view %d: attach (owner %d): %w", i, pid, err)
	}
	defer view.Close()
	if err := b.move.do(func() error { return daemonMoveIn(view, pid, &b.hostMnt) }); err != nil {
		return fmt.Errorf("view %d: %w", i, err)
	}
	return nil
}

// daemonMoveIn puts the detached mount view at daemonTarget in the mount
// namespace of pid, from a thread of b.move (which shares no file system
// state): never in host's, this process's own.
func daemonMoveIn(view *os.File, pid int, host *unix.Stat_t) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return fmt.Errorf("the mount namespace of %d: %w", pid, err)
	}
	defer ns.Close()
	var theirs unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &theirs); err != nil {
		return err
	}
	if theirs.Ino == host.Ino && theirs.Dev == host.Dev {
		return fmt.Errorf("owner %d shares the host's mount namespace", pid)
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("entering the mount namespace of %d: %w", pid, err)
	}
	if err := unix.MoveMount(int(view.Fd()), "", unix.AT_FDCWD, daemonTarget, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("putting the view at %s in the mount namespace of %d: %w", daemonTarget, pid, err)
	}
	return nil
}

// measure checks that n views are served, lets the daemon settle, reads
// its memory and threads, and its CPU use over the idle window.
func (b *daemonBed) measure(n int, idle time.Duration) (DaemonRow, error) {
	a, _, err := control.Ask(b.sock, control.Request{Op: "list"})
	if err == nil {
		err = a.Err()
	}
	if err != nil {
		return DaemonRow{}, fmt.Errorf("listing the views: %w", err)
	}
	if len(a.Views) != n {
		return DaemonRow{}, fmt.Errorf("the daemon serves %d views, not %d", len(a.Views), n)
	}
	pid := b.daemon.Process.Pid
	time.Sleep(daemonSettle)
	rss, threads, err := daemonStatus(pid)
	if err != nil {
		return DaemonRow{}, err
	}
	c0, err := daemonCPU(pid)
	if err != nil {
		return DaemonRow{}, err
	}
	t0 := time.Now()
	time.Sleep(idle)
	c1, err := daemonCPU(pid)
	if err != nil {
		return DaemonRow{}, err
	}
	window := time.Since(t0)
	scrape, series, err := b.scrape()
	if err != nil {
		return DaemonRow{}, err
	}
	return DaemonRow{Views: n, RSS: rss, Threads: threads, CPU: c1 - c0, Idle: window, Scrape: scrape, Series: series}, nil
}

// scrape times GETs of the daemon's /metrics (its address is in its
// log) and returns the fastest, with the number of samples.
func (b *daemonBed) scrape() (time.Duration, int, error) {
	var addr string
	log, _ := os.ReadFile(filepath.Join(b.tmp, "daemon.log"))
	for _, line := range strings.Split(string(log), "\n") {
		if _, a, ok := strings.Cut(line, "addr="); ok && strings.Contains(line, "metrics listening") {
			addr = strings.TrimSpace(a)
		}
	}
	if addr == "" {
		return 0, 0, errors.New("the daemon does not say where its metrics listen")
	}
	best, series := time.Duration(0), 0
	for range 5 {
		t0 := time.Now()
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return 0, 0, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return 0, 0, err
		}
		if took := time.Since(t0); best == 0 || took < best {
			best = took
		}
		series = 0
		for _, line := range bytes.Split(body, []byte("\n")) {
			if len(line) > 0 && line[0] != '#' {
				series++
			}
		}
	}
	return best, series, nil
}

// daemonCPU is the user+system CPU time process pid used so far, all its
// threads: to the nanosecond from its CPU-time clock (the scheduler's
// count, as clock_getcpuclockid(3) gives it), else in clock ticks from
// /proc/PID/stat.
func daemonCPU(pid int) (time.Duration, error) {
	// A process's clock: CPUCLOCK_SCHED (2) of ~pid (linux/posix-timers.h).
	var ts unix.Timespec
	if err := unix.ClockGettime(int32((^pid)<<3|2), &ts); err == nil {
		return time.Duration(ts.Nano()), nil
	}
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return time.Duration(st.CPUTime() * float64(time.Second)), nil
}

// daemonStatus is process pid's resident size in bytes and its thread
// count, from /proc/PID/stat.
func daemonStatus(pid int) (rss uint64, threads int, err error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, 0, err
	}
	return uint64(st.ResidentMemory()), st.NumThreads, nil
}

// close kills the owners (their mount namespaces go, and with them the
// views), stops the daemon, and removes the cgroups and the temporary
// directory.
func (b *daemonBed) close() error {
	var errs []error
	b.mu.Lock()
	owners := b.owners
	b.owners = nil
	b.mu.Unlock()
	for _, o := range owners {
		if o.cmd != nil {
			_ = o.cmd.Process.Kill()
		}
	}
	for _, o := range owners {
		if o.cmd != nil {
			_ = o.cmd.Wait() // killed: the error says so
		}
	}
	if b.daemon != nil {
		select {
		case <-b.daemonDone:
		default:
			_ = b.daemon.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.daemonDone:
			case <-time.After(30 * time.Second):
				errs = append(errs, errors.New("the daemon did not stop on SIGTERM within 30s: killed"))
				_ = b.daemon.Process.Kill()
				<-b.daemonDone
			}
		}
		if b.daemonErr != nil {
			b.log("daemon: exited: %v: %s", b.daemonErr, b.daemonTail())
		}
	}
	if b.move != nil {
		b.move.stop()
	}
	if b.spawn != nil {
		b.spawn.stop()
	}
	for _, o := range owners {
		if err := daemonRmdir(o.dir); err != nil {
			errs = append(errs, err)
		}
	}
	if b.cgroot != "" {
		if err := daemonRmdir(b.cgroot); err != nil {
			errs = append(errs, err)
		}
	}
	if b.daemonLog != nil {
		b.daemonLog.Close()
	}
	if b.tmp != "" {
		if err := os.RemoveAll(b.tmp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// daemonRmdir removes an empty cgroup, waiting a little while the
// kernel lets go of tasks that just died.
func daemonRmdir(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("rmdir %s: %w", dir, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// daemonThreads runs functions on a few OS threads of their own, each
// locked to its goroutine until stop (and then ended with it, since
// setup may have changed it for good).
type daemonThreads struct {
	jobs chan daemonJob
	wg   sync.WaitGroup
}

type daemonJob struct {
	f    func() error
	done chan error
}

func newDaemonThreads(n int, setup func() error) *daemonThreads {
	t := &daemonThreads{jobs: make(chan daemonJob)}
	for range n {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			var serr error
			if setup != nil {
				serr = setup()
			}
			for j := range t.jobs {
				if serr != nil {
					j.done <- serr
					continue
				}
				j.done <- j.f()
			}
		}()
	}
	return t
}

// do runs f on one of the threads.
func (t *daemonThreads) do(f func() error) error {
	done := make(chan error, 1)
	t.jobs <- daemonJob{f: f, done: done}
	return <-done
}

// stop ends the threads.
func (t *daemonThreads) stop() {
	close(t.jobs)
	t.wg.Wait()
}
