package test

import (
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// pidList parses "OK" plus one pid per line, as a container read answers.
func pidList(t *testing.T, ans string) []string {
	t.Helper()
	body, ok := strings.CutPrefix(ans, "OK")
	if !ok {
		t.Fatalf("read failed: %s", ans)
	}
	return strings.Fields(body)
}

// psIn returns the container's pids (from its own /proc) in cgroup path.
func psIn(t *testing.T, c *container, path string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(c.do(t, "ps"), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == path {
			out = append(out, f[0])
		}
	}
	sort.Slice(out, func(i, j int) bool { a, _ := strconv.Atoi(out[i]); b, _ := strconv.Atoi(out[j]); return a < b })
	return out
}

func TestProcsInTheReadersNamespace(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, s := containerWithView(t, l, containerBase)
	c.do(t, "spawn")
	c.do(t, "spawn")
	c.expect(t, "OK", "mkdir", cg+"/child")

	got := pidList(t, c.do(t, "read", cg+"/cgroup.procs"))
	want := psIn(t, c, "/")
	if !slices.Equal(got, want) || len(want) < 3 {
		t.Errorf("cgroup.procs in the container = %v, its /proc says %v", got, want)
	}
	if !slices.Contains(got, "1") {
		t.Errorf("the container's init (pid 1) is missing from %v", got)
	}

	// echo $$ > child/cgroup.procs moves the writer.
	self := c.do(t, "pid")
	c.expect(t, "OK", "write", cg+"/child/cgroup.procs", self)
	c.expect(t, "0::/child", "cgroup")
	if hostProcs := strings.Fields(readFile(t, filepath.Join(host, "child/cgroup.procs"))); !slices.Equal(hostProcs, []string{strconv.Itoa(c.pid())}) {
		t.Errorf("host child/cgroup.procs = %v, want the container init's host pid %d", hostProcs, c.pid())
	}
	if got := pidList(t, c.do(t, "read", cg+"/child/cgroup.procs")); !slices.Equal(got, []string{self}) {
		t.Errorf("child/cgroup.procs in the container = %v, want [%s]", got, self)
	}
	// echo 0 > cgroup.procs does the same.
	c.expect(t, "OK", "write", cg+"/cgroup.procs", "0")
	c.expect(t, "0::/", "cgroup")

	// The host's view of the same file is the host's file, untranslated.
	hostView := strings.Fields(readFile(t, s.path("cgroup.procs")))
	native := strings.Fields(readFile(t, filepath.Join(host, "cgroup.procs")))
	if !slices.Equal(hostView, native) {
		t.Errorf("host reads %v through cgfs, %v natively", hostView, native)
	}

	// A pid of a nested pid namespace shows in that namespace's numbers:
	// a reader there is pid 1 and sees itself only.
	if got := c.do(t, "newpidns", "read", cg+"/cgroup.procs"); got != "OK1" {
		t.Errorf("reader in a nested pid namespace reads %q, want itself as pid 1", got)
	}
}

func TestThreadMovedByTid(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	host, c, _ := containerWithView(t, l, containerBase)
	ids := strings.Fields(c.do(t, "threads", "3"))
	if len(ids) != 4 {
		t.Fatalf("threads: %v", ids)
	}
	c.expect(t, "OK", "mkdir", cg+"/t")
	c.expect(t, "OK", "write", cg+"/t/cgroup.type", "threaded")
	tid := ids[2]
	c.expect(t, "OK", "write", cg+"/t/cgroup.threads", tid)
	if got := pidList(t, c.do(t, "read", cg+"/t/cgroup.threads")); !slices.Equal(got, []string{tid}) {
		t.Errorf("t/cgroup.threads in the container = %v, want [%s]", got, tid)
	}
	if got := strings.Fields(readFile(t, filepath.Join(host, "t/cgroup.threads"))); len(got) != 1 || got[0] == tid {
		t.Errorf("host t/cgroup.threads = %v, want one host tid", got)
	}
	// The thread's process is still in the root; its other threads too.
	rootThreads := pidList(t, c.do(t, "read", cg+"/cgroup.threads"))
	if slices.Contains(rootThreads, tid) || !slices.Contains(rootThreads, ids[1]) {
		t.Errorf("root cgroup.threads = %v after moving %s", rootThreads, tid)
	}
	// cgroup.procs of a threaded cgroup cannot be read: EOPNOTSUPP (its
	// name is ENOTSUP on Linux, the same number), as the kernel answers.
	c.expect(t, "ENOTSUP", "read", cg+"/t/cgroup.procs")
}

// BenchmarkReadProcs reads cgroup.threads of a cgroup holding 1,000 and
// 10,000 threads from inside a container, natively and through cgfs.
func BenchmarkReadProcs(b *testing.B) {
	requireRoot(b)
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			benchReadProcs(b, n)
		})
	}
}

func benchReadProcs(b *testing.B, n int) {
	l := detectLane(b)
	host := newCgroup(b, l)
	native := publicDir(b)
	c := startContainer(b, host, containerBase)
	s := mountView(b, host, "--owner", strconv.Itoa(c.pid()))
	if got := c.do(b, "attach", s.mnt, host, native); got != "OK" {
		b.Fatalf("attach: %s", got)
	}
	ids := strings.Fields(c.do(b, "threads", strconv.Itoa(n)))
	if len(ids) != n+1 {
		b.Fatalf("threads: got %d ids", len(ids))
	}
	reads := strconv.Itoa(max(b.N, 1))
	// Warm both paths once (the cgfs pid cache fills on first read).
	c.do(b, "readloop", native+"/cgroup.threads", "1")
	c.do(b, "readloop", cg+"/cgroup.threads", "1")
	nat, _ := strconv.ParseFloat(c.do(b, "readloop", native+"/cgroup.threads", reads), 64)
	via, _ := strconv.ParseFloat(c.do(b, "readloop", cg+"/cgroup.threads", reads), 64)
	b.ReportMetric(nat/1000, "native-µs/read")
	b.ReportMetric(via/1000, "cgfs-µs/read")
	b.ReportMetric(via/nat, "ratio")
}
