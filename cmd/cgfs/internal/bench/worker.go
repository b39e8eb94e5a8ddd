package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// request is one thing the bench asks of the worker in the container.
type request struct {
	Op     string        `json:"op"` // an op kind, or "spawn"
	Path   string        `json:"path"`
	Data   string        `json:"data,omitempty"`
	Time   time.Duration `json:"time,omitempty"`
	Rounds int           `json:"rounds,omitempty"`
	Tasks  int           `json:"tasks,omitempty"`
}

type reply struct {
	US  float64 `json:"us"`
	Err string  `json:"err,omitempty"`
}

// spawner puts itself into the cgroup.procs file it is given, then
// forks until the cgroup holds n processes, says so, and sleeps: the
// tasks of a cgroup.procs row, all in the container's pid namespace.
const spawner = `$| = 1;
open(my $f, ">", $ARGV[0]) or die "open: $!";
print $f "$$\n"; close($f) or die "move: $!";
for (2..$ARGV[1]) { my $p = fork(); die "fork: $!" unless defined $p; if ($p == 0) { sleep(1e6) while 1; } }
print "ready\n"; sleep(1e6) while 1;`

// WorkerMain is the bench's worker, the command of its container: it
// reads requests, one JSON line each, from stdin and answers each on
// stdout, measuring as the container's root through its own
// /sys/fs/cgroup. It returns at the end of its input (the container's
// end: its pid namespace takes the spawned tasks with it).
func WorkerMain(stdin io.Reader, stdout io.Writer) int {
	base := "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(base, "unified")); err == nil {
		base = filepath.Join(base, "unified")
	}
	enc := json.NewEncoder(stdout)
	_ = enc.Encode(reply{Err: "ready " + base})
	var spawned []*exec.Cmd
	defer func() {
		for _, c := range spawned {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	in := bufio.NewScanner(stdin)
	for in.Scan() {
		var req request
		var rep reply
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			rep.Err = err.Error()
		} else if req.Op == "spawn" {
			c, err := spawn(req.Path, req.Tasks)
			if err != nil {
				rep.Err = err.Error()
			} else {
				spawned = append(spawned, c)
			}
		} else if req.Op == "write" {
			if err := os.WriteFile(req.Path, []byte(req.Data), 0); err != nil {
				rep.Err = err.Error()
			}
		} else if us, err := measure(req.Op, req.Path, req.Data, req.Time, req.Rounds); err != nil {
			rep.Err = err.Error()
		} else {
			rep.US = us
		}
		if err := enc.Encode(rep); err != nil {
			return 1
		}
	}
	return 0
}

// spawn starts the spawner for the cgroup dir with n tasks and waits
// until they all exist.
func spawn(dir string, n int) (*exec.Cmd, error) {
	c := exec.Command("perl", "-e", spawner, filepath.Join(dir, "cgroup.procs"), strconv.Itoa(n))
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	c.Stderr = &stderr
	// Its children keep the stderr pipe open until the container ends.
	c.WaitDelay = 100 * time.Millisecond
	if err := c.Start(); err != nil {
		return nil, err
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		_ = c.Process.Kill()
		_ = c.Wait()
		return nil, fmt.Errorf("spawning %d tasks in %s: %s", n, dir, strings.TrimSpace(stderr.String()))
	}
	return c, nil
}
