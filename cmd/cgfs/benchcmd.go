package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/bench"
)

const benchUsage = `usage: cgfs bench [--out FILE] [--label TITLE] [--cgfs BINARY] [--time D] [--rounds N] [--children N] [--tree N] [--tasks N,N] [--views N,N] [--idle D] [--quick]

Measures, as root, µs per operation on the same host cgroups natively,
through a floor FUSE server, through a cgfs view read by host root and
through the view a container's root reads at its /sys/fs/cgroup (and LXCFS's
cgroup tree when lxcfs is installed); prints the table and writes it to FILE
as the section TITLE. --cgfs measures another cgfs binary's views. --views
attaches that many views to a daemon and reports its memory and idle CPU.
Everything it makes is removed when it ends.
`

// benchNSEnv marks the bench re-executed in a mount namespace of its own:
// its mounts are seen by nobody else and go with it.
const benchNSEnv = "CGFS_BENCH_NS"

func benchCmd(args []string, stdout, stderr io.Writer) (int, error) {
	fl := flag.NewFlagSet("bench", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, benchUsage) }
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	o := bench.Options{Self: self}
	fl.StringVar(&o.Out, "out", "", "markdown `file` to write the table into")
	fl.StringVar(&o.Label, "label", "cgfs bench", "the section's `title` in the file")
	fl.StringVar(&o.Exe, "cgfs", self, "the cgfs `binary` whose views are measured")
	fl.DurationVar(&o.Time, "time", 300*time.Millisecond, "`duration` of one round of one cell")
	fl.IntVar(&o.Rounds, "rounds", 3, "rounds per cell (the fastest counts)")
	fl.IntVar(&o.Children, "children", 200, "child cgroups read by cgroup.stat and readdir")
	fl.IntVar(&o.Tree, "tree", 1000, "cgroups in the tree find walks")
	tasks := fl.String("tasks", "1000,10000", "sizes of the big cgroup.procs rows")
	views := fl.String("views", "", "numbers of views to measure the daemon with (1,100,1000)")
	fl.DurationVar(&o.Idle, "idle", 10*time.Second, "how long the daemon's idle CPU is watched")
	only := fl.String("ops", "", "measure only these `rows` (keys, comma-separated: orc-events, readdir, ...)")
	quick := fl.Bool("quick", false, "a fast run that shows every row works (short rounds, small sizes)")
	if err := fl.Parse(args); err != nil {
		return 0, usageError{err.Error()}
	}
	var perr error
	if o.Tasks, perr = intList(*tasks); perr != nil {
		return 0, usageError{"--tasks: " + perr.Error()}
	}
	if o.Views, perr = intList(*views); perr != nil {
		return 0, usageError{"--views: " + perr.Error()}
	}
	for _, k := range strings.Split(*only, ",") {
		if k = strings.TrimSpace(k); k != "" {
			o.Only = append(o.Only, k)
		}
	}
	if *quick {
		o.Time, o.Rounds, o.Children, o.Tree, o.Tasks, o.Idle = 5*time.Millisecond, 1, 20, 100, []int{50}, time.Second
	}
	if o.Rounds < 1 || o.Children < 1 || o.Tree < 10 || o.Time <= 0 {
		return 0, usageError{"--rounds and --children must be at least 1, --tree at least 10, --time positive"}
	}
	if os.Getenv(benchNSEnv) == "" {
		// Again, in a mount namespace of its own (Go makes its mounts
		// private before the exec).
		c := exec.Command(self, append([]string{"bench"}, args...)...)
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, stdout, stderr
		c.Env = append(os.Environ(), benchNSEnv+"=1")
		c.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
		err := c.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), nil // it said why
		}
		return 0, err
	}
	o.Log = func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }
	res, err := bench.Run(o)
	if err != nil {
		return 0, err
	}
	fmt.Fprint(stdout, bench.Table(res))
	return 0, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}
