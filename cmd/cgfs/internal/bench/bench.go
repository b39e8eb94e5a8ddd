// Package bench measures what a cgfs view costs, operation by operation,
// against the kernel itself, a floor FUSE server and LXCFS, on the same
// host cgroups in one run, and writes the table to BENCHMARKS.md.
package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
)

// Options is what one bench run measures and where it writes.
type Options struct {
	// Exe is the cgfs binary whose views are measured (its mount and run
	// commands); Self is this one, which serves the floor and runs the
	// worker in the container.
	Exe, Self string
	// Out is the markdown file the run's section goes into ("" for
	// none); Label titles the section (a section of the same title is
	// replaced, others are kept).
	Out, Label string
	// Time is how long each round of one cell lasts; the fastest of
	// Rounds rounds is the cell.
	Time   time.Duration
	Rounds int
	// Children of the cgroup whose cgroup.stat and readdir are read;
	// Tree is the size of the tree find walks; Tasks are the sizes of
	// the big cgroup.procs rows.
	Children, Tree int
	Tasks          []int
	// Views are the numbers of views the daemon's use is measured with
	// (none: not measured), Idle how long its idle CPU is watched.
	Views []int
	Idle  time.Duration
	// Only names the rows to measure (op keys); none: all.
	Only []string
	// Log reports progress.
	Log func(format string, args ...any)
}

// cell is one measurement: µs per op, or why there is none.
type cell struct {
	us  float64
	err string
}

// column is one way of reaching the files.
type column struct {
	name   string
	v2, v1 string // base directories ("" where this column has none)
	// container: measured by the worker, as the container's root.
	container bool
}

// Result is one run's table.
type Result struct {
	Ops     []op
	Columns []column
	Cells   [][]cell // [op][column]
	Daemon  []DaemonRow
	Machine string
}

// bed is the set-up of one run: the host cgroups, the servers, the
// container and its worker, and how to take each down again.
type bed struct {
	o      Options
	name   string // cgfs-bench-PID, the parent cgroup in every hierarchy
	v2, v1 string // the container's cgroup natively (v1: memory; "" on a v2 only host)
	tmp    string
	procs  []*exec.Cmd // servers, stopped by SIGTERM
	run    *worker     // the container's (cgfs run's) worker
	lx     *worker     // a host worker in the v1 cgroup LXCFS shows
	inside string      // the container's v2 base
	// local is the *.local counter file of s/0, which holds a task in a
	// hidden leaf ("" when the host's v2 has no domain controller).
	local    string
	leafNote string
	cleanups []func()
}

// worker is a process measuring for the bench, one request at a time.
type worker struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	done chan struct{}
	log  strings.Builder
}

// startWorker starts a worker and reads its greeting.
func startWorker(name string, args ...string) (*worker, string, error) {
	w := &worker{cmd: exec.Command(name, args...), done: make(chan struct{})}
	w.cmd.Stderr = &w.log
	var err error
	if w.in, err = w.cmd.StdinPipe(); err != nil {
		return nil, "", err
	}
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := w.cmd.Start(); err != nil {
		return nil, "", err
	}
	go func() { _ = w.cmd.Wait(); close(w.done) }()
	w.out = bufio.NewScanner(out)
	w.out.Buffer(make([]byte, 1<<16), 1<<20)
	hello, err := w.read()
	if err != nil || !strings.HasPrefix(hello.Err, "ready ") {
		w.stop()
		return nil, "", fmt.Errorf("the worker did not start (%v %q): %s", err, hello.Err, w.log.String())
	}
	return w, strings.TrimPrefix(hello.Err, "ready "), nil
}

func (w *worker) read() (reply, error) {
	if !w.out.Scan() {
		return reply{}, fmt.Errorf("the worker ended: %v", w.out.Err())
	}
	var r reply
	err := json.Unmarshal(w.out.Bytes(), &r)
	return r, err
}

// ask sends the worker one request and waits for its answer.
func (w *worker) ask(req request) (reply, error) {
	line, _ := json.Marshal(req)
	if _, err := w.in.Write(append(line, '\n')); err != nil {
		return reply{}, err
	}
	r, err := w.read()
	if err == nil && r.Err != "" {
		err = errors.New(r.Err)
	}
	return r, err
}

// stop ends the worker's input and waits for it to end.
func (w *worker) stop() {
	w.in.Close()
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		<-w.done
	}
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		o.Log(format, args...)
	}
}

// Run measures, writes o.Out, and takes down everything it set up.
func Run(o Options) (*Result, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("cgfs bench needs root: it makes cgroups, mounts and containers")
	}
	b := &bed{o: o, name: fmt.Sprintf("cgfs-bench-%d", os.Getpid())}
	defer b.teardown()
	if err := b.setUp(); err != nil {
		return nil, err
	}
	res := &Result{Ops: ops(o, b.v1 != "", b.local), Machine: machine(b)}
	if len(o.Only) > 0 {
		res.Ops = slices.DeleteFunc(res.Ops, func(op op) bool { return !slices.Contains(o.Only, op.key) })
	}
	res.Columns = b.columns()
	for _, op := range res.Ops {
		row := make([]cell, len(res.Columns))
		for i, c := range res.Columns {
			row[i] = b.measure(op, c)
		}
		o.logf("%-50s %s", op.title, rowText(row))
		res.Cells = append(res.Cells, row)
	}
	b.teardown()
	if len(o.Views) > 0 {
		o.logf("daemon: attaching %v views", o.Views)
		rows, err := Daemon(o.Exe, o.Views, o.Idle, o.Log)
		if err != nil {
			return nil, fmt.Errorf("daemon: %w", err)
		}
		res.Daemon = rows
	}
	if o.Out != "" {
		if err := writeMarkdown(o.Out, o.Label, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func rowText(row []cell) string {
	var s []string
	for _, c := range row {
		if c.err != "" {
			s = append(s, "-")
		} else {
			s = append(s, fmt.Sprintf("%.1f", c.us))
		}
	}
	return strings.Join(s, " ")
}

// cgroup2Root is the host's cgroup v2 mount; v1Memory its v1 memory
// hierarchy, "" when it has none.
func hierarchies() (v2, v1memory string, err error) {
	for _, d := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			v2 = d
			break
		}
	}
	if v2 == "" {
		return "", "", errors.New("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	}
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup/memory", &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC {
		v1memory = "/sys/fs/cgroup/memory"
	}
	return v2, v1memory, nil
}

func (b *bed) setUp() error {
	o := b.o
	v2root, v1root, err := hierarchies()
	if err != nil {
		return err
	}
	if b.tmp, err = os.MkdirTemp("", "cgfs-bench-"); err != nil {
		return err
	}
	b.cleanups = append(b.cleanups, func() { os.RemoveAll(b.tmp) })
	// The container's root (a mapped uid) runs the worker: a copy of
	// this binary it may reach, whatever directory holds this one.
	if err := os.Chmod(b.tmp, 0o755); err != nil {
		return err
	}
	worker := filepath.Join(b.tmp, "cgfs-worker")
	if err := copyExecutable(o.Self, worker); err != nil {
		return err
	}
	b.v2 = filepath.Join(v2root, b.name, "c")
	if v1root != "" {
		b.v1 = filepath.Join(v1root, b.name, "c")
	}
	// The parent is the bench's in every hierarchy (cgfs run makes what
	// is missing); it goes when the bench ends, whatever happened.
	for _, root := range []string{v2root, v1root} {
		if root == "" {
			continue
		}
		p := filepath.Join(root, b.name)
		b.cleanups = append(b.cleanups, func() { _ = cgroups.RemoveTree(p) })
	}

	// The container: its root's cgroup is b.v2, its worker measures.
	o.logf("starting the container (%s run)", o.Exe)
	b.run, b.inside, err = startWorker(o.Exe, "run", "--parent", b.name, "--name", "c", "--", worker, "bench-worker")
	if err != nil {
		return fmt.Errorf("the container: %w", err)
	}

	o.logf("making the cgroups")
	if err := b.makeTree(); err != nil {
		return err
	}
	for i, n := range append([]int{1}, o.Tasks...) {
		dir := fmt.Sprintf("p%d", i+1)
		o.logf("spawning %d tasks in %s", n, dir)
		if _, err := b.run.ask(request{Op: "spawn", Path: filepath.Join(b.inside, dir), Tasks: n}); err != nil {
			return err
		}
		if got := countLines(filepath.Join(b.v2, dir, "cgroup.procs")); got != n {
			return fmt.Errorf("%s holds %d tasks, not %d", dir, got, n)
		}
	}

	// The container's init, before its hidden leaf takes it.
	init := strings.TrimSpace(readFile(filepath.Join(b.v2, "cgroup.procs")))
	if _, err := strconv.Atoi(init); err != nil {
		return fmt.Errorf("the container's cgroup holds %q, not its init alone", init)
	}
	if err := b.makeLeaves(); err != nil {
		return err
	}

	o.logf("mounting the floor, the host root's view and LXCFS")
	if err := b.serve("floor", o.Self, "bench-floor", b.v2, b.dir("floor")); err != nil {
		return err
	}
	if b.v1 != "" {
		if err := b.serve("floor1", o.Self, "bench-floor", b.v1, b.dir("floor1")); err != nil {
			return err
		}
	}
	// Host root's view of the same cgroups, served by a cgfs of its own
	// (it finds the container's leaves as a restarted server would).
	if err := b.serve("view", o.Exe, "mount", "--cgroup", b.v2, b.dir("view")); err != nil {
		return err
	}
	if b.v1 != "" {
		// v1 hierarchies are served for an owner (its own cgroups); its
		// v2 one, now a hidden leaf, is refused unless shared.
		if err := b.serve("view1", o.Exe, "mount", "--owner", init, "--shared", "unified", b.dir("view1")); err != nil {
			return err
		}
	}
	if lx, err := exec.LookPath("lxcfs"); err == nil && b.v1 != "" {
		if err := b.serve("lxcfs", lx, "-f", "-p", filepath.Join(b.tmp, "lxcfs.pid"), b.dir("lxcfs")); err != nil {
			return err
		}
		// LXCFS shows its reader the cgroups below the reader's own: the
		// worker reading it is host root in the container's v1 cgroup.
		if b.lx, _, err = startWorker(o.Self, "bench-worker"); err != nil {
			return fmt.Errorf("the LXCFS reader: %w", err)
		}
		pid := strconv.Itoa(b.lx.cmd.Process.Pid)
		if err := os.WriteFile(filepath.Join(b.v1, "cgroup.procs"), []byte(pid), 0); err != nil {
			return fmt.Errorf("moving the LXCFS reader: %w", err)
		}
	}
	return nil
}

// dir makes and returns the bench's directory name.
func (b *bed) dir(name string) string {
	d := filepath.Join(b.tmp, name)
	_ = os.Mkdir(d, 0o755)
	return d
}

// makeTree makes the rows' cgroups below the container's root natively:
// s with its children, the tree t, w (written), m (mkdir), p1... (tasks).
func (b *bed) makeTree() error {
	o := b.o
	mk := func(p string) error {
		if err := unix.Mkdir(p, 0o755); err != nil && err != unix.EEXIST {
			return &os.PathError{Op: "mkdir", Path: p, Err: err}
		}
		return nil
	}
	for _, root := range []string{b.v2, b.v1} {
		if root == "" {
			continue
		}
		if err := mk(filepath.Join(root, "s")); err != nil {
			return err
		}
		for i := range o.Children {
			if err := mk(filepath.Join(root, "s", strconv.Itoa(i))); err != nil {
				return err
			}
		}
	}
	for dir, n := range map[string]int{"s2": 2, "s2k": bigChildren(o)} {
		if err := mk(filepath.Join(b.v2, dir)); err != nil {
			return err
		}
		for i := range n {
			if err := mk(filepath.Join(b.v2, dir, strconv.Itoa(i))); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{"t", "w", "m"} {
		if err := mk(filepath.Join(b.v2, d)); err != nil {
			return err
		}
	}
	for i := range len(o.Tasks) + 1 {
		if err := mk(filepath.Join(b.v2, fmt.Sprintf("p%d", i+1))); err != nil {
			return err
		}
	}
	// Tree cgroups in all: ten below t, the rest evenly below those.
	per := max(o.Tree/10-1, 0)
	for i := range min(10, o.Tree) {
		top := filepath.Join(b.v2, "t", strconv.Itoa(i))
		if err := mk(top); err != nil {
			return err
		}
		for j := range per {
			if err := mk(filepath.Join(top, strconv.Itoa(j))); err != nil {
				return err
			}
		}
	}
	return nil
}

// makeLeaves has the container give s/0 and s2k/0 a task each and
// enable a domain controller down to them: cgfs moves the task into a
// hidden leaf (as it does the root's), so cgroup.stat of s and s2k
// subtract one and s/0's *.local counters add the leaf's.
func (b *bed) makeLeaves() error {
	ctrls := strings.Fields(readFile(filepath.Join(b.v2, "cgroup.controllers")))
	if len(ctrls) == 0 {
		b.leafNote = "no hidden leaves: the host's cgroup v2 has no controller"
		return nil
	}
	ctrl := ctrls[0]
	for _, c := range ctrls {
		if c == "memory" {
			ctrl = c
		}
	}
	for _, dir := range []string{"s/0", "s2k/0"} {
		if _, err := b.run.ask(request{Op: "spawn", Path: filepath.Join(b.inside, dir), Tasks: 1}); err != nil {
			return err
		}
	}
	for _, dir := range []string{"", "s", "s/0", "s2k", "s2k/0"} {
		p := filepath.Join(b.inside, dir, "cgroup.subtree_control")
		if _, err := b.run.ask(request{Op: "write", Path: p, Data: "+" + ctrl}); err != nil {
			return fmt.Errorf("enabling %s in %s: %w", ctrl, p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(b.v2, "s", "0", ".cgfs-leaf")); err != nil {
		return fmt.Errorf("cgfs made no hidden leaf in s/0: %w", err)
	}
	matches, _ := filepath.Glob(filepath.Join(b.v2, "s", "0", ctrl+".*events.local"))
	if len(matches) > 0 {
		b.local = filepath.Base(matches[0])
	}
	b.leafNote = fmt.Sprintf("s/0 and s2k/0 hold a task in a hidden leaf (%s enabled down to them)", ctrl)
	return nil
}

// serve starts a server that mounts at mnt and waits for the mount.
func (b *bed) serve(what, exe string, args ...string) error {
	mnt := args[len(args)-1]
	c := exec.Command(exe, args...)
	var log strings.Builder
	c.Stdout, c.Stderr = &log, &log
	if err := c.Start(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	b.procs = append(b.procs, c)
	exited := make(chan struct{})
	go func() { _ = c.Wait(); close(exited) }()
	b.cleanups = append(b.cleanups, func() {
		_ = c.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = c.Process.Kill()
			<-exited
		}
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
	})
	deadline, start := time.Now().Add(2*time.Minute), time.Now()
	for {
		var st unix.Statfs_t
		if unix.Statfs(mnt, &st) == nil && st.Type == unix.FUSE_SUPER_MAGIC {
			b.o.logf("%s mounted in %v", what, time.Since(start).Round(time.Millisecond))
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited before mounting: %s", what, log.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not mount %s: %s", what, mnt, log.String())
		}
	}
}

// columns are the ways the files are reached in this run.
func (b *bed) columns() []column {
	view := b.dir("view")
	cols := []column{{name: "native", v2: b.v2, v1: b.v1}, {name: "floor", v2: b.dir("floor")}}
	if b.v1 != "" {
		cols[1].v1 = b.dir("floor1")
		cols = append(cols, column{name: "cgfs, host root", v2: view, v1: filepath.Join(b.dir("view1"), "memory")})
		cols = append(cols, column{name: "cgfs, container root", v2: b.inside, v1: "/sys/fs/cgroup/memory", container: true})
	} else {
		cols = append(cols, column{name: "cgfs, host root", v2: view})
		cols = append(cols, column{name: "cgfs, container root", v2: b.inside, container: true})
	}
	if _, err := os.Stat(filepath.Join(b.tmp, "lxcfs", "cgroup", "memory")); err == nil {
		cols = append(cols, column{name: "LXCFS", v1: filepath.Join(b.tmp, "lxcfs", "cgroup", "memory", b.name, "c")})
	}
	return cols
}

// measure one op through one column.
func (b *bed) measure(o op, c column) cell {
	base := c.v2
	if o.v1 {
		base = c.v1
	}
	if base == "" || (c.name == "LXCFS" && !o.lxcfs) {
		return cell{err: "n/a"}
	}
	p := filepath.Join(base, o.rel)
	if w := b.workerFor(c); w != nil {
		rep, err := w.ask(request{Op: o.kind, Path: p, Data: o.data, Time: b.o.Time, Rounds: b.o.Rounds})
		if err != nil {
			return cell{err: err.Error()}
		}
		return cell{us: rep.US}
	}
	us, err := measure(o.kind, p, o.data, b.o.Time, b.o.Rounds)
	if err != nil {
		return cell{err: err.Error()}
	}
	return cell{us: us}
}

// workerFor is who measures column c, nil for the bench itself.
func (b *bed) workerFor(c column) *worker {
	switch {
	case c.container:
		return b.run
	case c.name == "LXCFS":
		return b.lx
	}
	return nil
}

// teardown ends the container (its pid namespace takes its tasks), the
// servers, and removes the cgroups and directories, in reverse order of
// their making. It may run twice.
func (b *bed) teardown() {
	for _, w := range []**worker{&b.lx, &b.run} {
		if *w != nil {
			(*w).stop()
			*w = nil
		}
	}
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}

// copyExecutable copies the program from to to, mode 0755.
func copyExecutable(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}

func readFile(p string) string {
	data, _ := os.ReadFile(p)
	return string(data)
}

func countLines(p string) int { return len(strings.Fields(readFile(p))) }
