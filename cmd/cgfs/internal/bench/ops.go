package bench

import (
	"fmt"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// An op is one measured operation, the same for every column: only the
// base directory it runs below changes.
type op struct {
	key   string // stable name, also the worker's
	title string // the table's row
	kind  string // orc, pread, owc, mkdir, readdir, find
	rel   string // path below the column's base
	data  string // what owc writes
	v1    bool   // below the v1 base (memory), not the v2 one
	// lxcfs: LXCFS serves it too (its cgroup tree is v1 only).
	lxcfs bool
	// tasks is how many processes the row's cgroup holds (set up by the
	// container, so that every column sees the same ones).
	tasks int
}

// ops is every row, in the table's order.
func ops(o Options, v1 bool, local string) []op {
	out := []op{
		{key: "orc-events", title: "open-read-close cgroup.events", kind: "orc", rel: "s/cgroup.events"},
		{key: "orc-stat", title: fmt.Sprintf("open-read-close cgroup.stat (%d children)", o.Children), kind: "orc", rel: "s/cgroup.stat"},
		{key: "orc-stat-2", title: "open-read-close cgroup.stat (2 children)", kind: "orc", rel: "s2/cgroup.stat"},
		{key: "orc-stat-big", title: fmt.Sprintf("open-read-close cgroup.stat (%d children)", bigChildren(o)), kind: "orc", rel: "s2k/cgroup.stat"},
		{key: "orc-procs", title: "open-read-close cgroup.procs (1 task)", kind: "orc", rel: "p1/cgroup.procs", tasks: 1},
		{key: "pread-events", title: "pread on an open fd, cgroup.events", kind: "pread", rel: "s/cgroup.events"},
		{key: "pread-stat", title: fmt.Sprintf("pread on an open fd, cgroup.stat (%d children)", o.Children), kind: "pread", rel: "s/cgroup.stat"},
		{key: "pread-procs", title: "pread on an open fd, cgroup.procs (1 task)", kind: "pread", rel: "p1/cgroup.procs"},
		{key: "owc-maxdesc", title: "open-write-close cgroup.max.descendants", kind: "owc", rel: "w/cgroup.max.descendants", data: "1000\n"},
		{key: "mkdir-rmdir", title: "mkdir+rmdir", kind: "mkdir", rel: "m/x"},
		{key: "readdir", title: fmt.Sprintf("readdir of %d children", o.Children), kind: "readdir", rel: "s"},
		{key: "lsl", title: fmt.Sprintf("readdir and lstat of each of %d children (ls -l)", o.Children), kind: "lsl", rel: "s"},
	}
	for i, n := range o.Tasks {
		out = append(out, op{key: fmt.Sprintf("orc-procs-%d", n), title: fmt.Sprintf("open-read-close cgroup.procs (%d tasks)", n),
			kind: "orc", rel: fmt.Sprintf("p%d/cgroup.procs", i+2), tasks: n})
	}
	if local != "" {
		out = append(out, op{key: "orc-local", title: "open-read-close " + local + " (a hidden leaf's added)", kind: "orc", rel: "s/0/" + local})
	}
	out = append(out, op{key: "find", title: fmt.Sprintf("find of a %d-cgroup tree", o.Tree), kind: "find", rel: "t"})
	if v1 {
		out = append(out,
			op{key: "v1-orc-limit", title: "v1: open-read-close memory.limit_in_bytes", kind: "orc", rel: "s/memory.limit_in_bytes", v1: true, lxcfs: true},
			op{key: "v1-orc-procs", title: "v1: open-read-close cgroup.procs (empty)", kind: "orc", rel: "s/cgroup.procs", v1: true, lxcfs: true},
			op{key: "v1-pread-limit", title: "v1: pread on an open fd, memory.limit_in_bytes", kind: "pread", rel: "s/memory.limit_in_bytes", v1: true, lxcfs: true},
			op{key: "v1-readdir", title: fmt.Sprintf("v1: readdir of %d children", o.Children), kind: "readdir", rel: "s", v1: true, lxcfs: true},
			op{key: "v1-lsl", title: fmt.Sprintf("v1: readdir and lstat of each of %d children (ls -l)", o.Children), kind: "lsl", rel: "s", v1: true, lxcfs: true},
		)
	}
	return out
}

// bigChildren is the child count of the big cgroup.stat row: ten times
// the usual one (2,000 by default).
func bigChildren(o Options) int { return 10 * o.Children }

// runner returns one iteration of kind on path, and what to release
// after the last (an open fd for pread).
func runner(kind, path, data string) (iter func() error, done func(), err error) {
	buf := make([]byte, 1<<16)
	switch kind {
	case "orc": // as cat does: read until end of file
		return func() error {
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			for {
				n, err := unix.Read(fd, buf)
				if err != nil || n == 0 {
					return err
				}
			}
		}, func() {}, nil
	case "pread":
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, err
		}
		return func() error {
			_, err := unix.Pread(fd, buf, 0)
			return err
		}, func() { unix.Close(fd) }, nil
	case "owc":
		b := []byte(data)
		return func() error {
			fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			_, err = unix.Write(fd, b)
			return err
		}, func() {}, nil
	case "mkdir":
		return func() error {
			if err := unix.Mkdir(path, 0o755); err != nil {
				return err
			}
			return unix.Rmdir(path)
		}, func() {}, nil
	case "readdir":
		return func() error {
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			for {
				n, err := unix.Getdents(fd, buf)
				if err != nil || n == 0 {
					return err
				}
			}
		}, func() {}, nil
	case "lsl": // as ls -l does: the names, then each one's attributes
		var names []string
		return func() error {
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			names = names[:0]
			for {
				n, err := unix.Getdents(fd, buf)
				if err != nil {
					unix.Close(fd)
					return err
				}
				if n == 0 {
					break
				}
				_, _, names = unix.ParseDirent(buf[:n], -1, names)
			}
			unix.Close(fd)
			var st unix.Stat_t
			for _, name := range names {
				if err := unix.Lstat(path+"/"+name, &st); err != nil {
					return err
				}
			}
			return nil
		}, func() {}, nil
	case "find":
		return func() error { return exec.Command("find", path).Run() }, func() {}, nil
	}
	return nil, nil, fmt.Errorf("unknown operation %q", kind)
}

// measure runs the operation for rounds rounds of at least d (and at
// least 3 iterations) each, after a warm-up, and returns the fastest
// round's mean in µs: the least disturbed by the rest of the machine.
func measure(kind, path, data string, d time.Duration, rounds int) (float64, error) {
	iter, done, err := runner(kind, path, data)
	if err != nil {
		return 0, err
	}
	defer done()
	for range 3 {
		if err := iter(); err != nil {
			return 0, err
		}
	}
	best := -1.0
	for range max(rounds, 1) {
		start := time.Now()
		n := 0
		for n < 3 || time.Since(start) < d {
			if err := iter(); err != nil {
				return 0, err
			}
			n++
		}
		us := float64(time.Since(start).Nanoseconds()) / 1e3 / float64(n)
		if best < 0 || us < best {
			best = us
		}
	}
	return best, nil
}
