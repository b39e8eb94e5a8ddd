package translate

import (
	"bytes"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/test/fake"
)

// Fuzz targets of the write paths: what a container writes to a control
// file, carried onto a fake hierarchy. A write the kernel would refuse
// is refused with the kernel's errno and changes nothing on the host;
// one it would take reaches the host as the kernel would read it.

// fakeTask is one task of a fake proc filesystem, in the cgroup at path
// in both the v2 and the v1 memory hierarchy.
type fakeTask struct {
	tid  int
	path string
}

var (
	tgidLine  = regexp.MustCompile(`(?m)^(Tgid|Pid|NStgid|NSpid):\t.*$`)
	statStart = regexp.MustCompile(`^\d+ \(cat\) R \d+`)
)

// fakeProc builds a proc filesystem of tasks in a temporary directory:
// each task's status and stat are the captured ones with its ids, and
// cgroup names its cgroup as the kernel does. cgroup, if not nil,
// replaces the cgroup text of every task.
func fakeProc(t testing.TB, tasks []fakeTask) (string, *proc.Procs) {
	t.Helper()
	root := t.TempDir()
	status, stat := fake.Kernel(t, "proc-self-status"), fake.Kernel(t, "proc-self-stat")
	for _, k := range tasks {
		writeTask(t, root, k.tid, status, stat, []byte("4:memory:"+k.path+"\n0::"+k.path+"\n"))
	}
	p, err := proc.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	return root, p
}

// writeTask writes task tid's files into the fake proc filesystem root.
func writeTask(t testing.TB, root string, tid int, status, stat, cgroup []byte) {
	t.Helper()
	id := strconv.Itoa(tid)
	dir := filepath.Join(root, id)
	fake.Cgroup(t, dir, map[string]string{
		"status": tgidLine.ReplaceAllString(string(status), "$1:\t"+id),
		"stat":   statStart.ReplaceAllString(string(stat), id+" (cat) R 1"),
		"cgroup": string(cgroup),
	})
}

// taskFilesOf reads every task file of the fake hierarchy dir.
func taskFilesOf(t *testing.T, dir string) map[string]string {
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch d.Name() {
		case "cgroup.procs", "cgroup.threads", "tasks":
			b, err := os.ReadFile(p)
			out[p] = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hostRoot is host root as a known caller: the writer of task ids as
// tid 300 of the fake proc filesystem.
func hostRoot(tid int) *access.Request {
	c := access.Caller{Tid: tid, UserNS: hostChain, CapEff: admin}
	return access.Known(c, proc.Thread{Tid: tid, Tgid: tid, OwnTid: tid, OwnPid: tid})
}

// FuzzTaskWrite: writes to cgroup.procs, cgroup.threads and tasks. An id
// the kernel's parser refuses is EINVAL; 0 is the writer; an id of a
// task inside the view moves that task (the host file gets the id in
// decimal); one outside is ENOENT, one of no task ESRCH; a refused
// write changes no task file.
func FuzzTaskWrite(f *testing.F) {
	for _, s := range taskLines(f) {
		f.Add([]byte(s), uint8(0))
	}
	for i, s := range []string{"0", "0\n", "100", "101\n", "200", "300", " 0x64 ", "0144", "+100", "-100", "999", "1 2",
		"", "abc", "100\n\n", strings.Repeat(" ", 4096) + "1"} {
		f.Add([]byte(s), uint8(i))
	}
	_, procs := fakeProc(f, []fakeTask{{100, "/c1/a"}, {101, "/c1/a/" + LeafName}, {200, "/elsewhere"}, {300, "/c1"}})
	v2, dir2, _ := newView(f, Config{Procs: procs, Policy: access.NewPolicy(hostChain), CgroupPath: "/c1"})
	v1, dir1, _ := newView(f, Config{Procs: procs, Policy: access.NewPolicy(hostChain), CgroupPath: "/c1", V1: true, Controllers: "memory"})
	for _, d := range []string{"", "a", "a/b"} {
		fake.Write(f, filepath.Join(dir1, d, "tasks"), "")
	}
	const writer = 300
	inside := map[int]bool{100: true, 101: true, 300: true}
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		v, dir, files := v2, dir2, []string{"cgroup.procs", "cgroup.threads"}
		if which&1 != 0 {
			v, dir, files = v1, dir1, []string{"cgroup.procs", "tasks"}
		}
		vpath := vp(filepath.Join([]string{"", "a", "a/b"}[int(which>>1)%3], files[int(which>>3)%2]))
		r := hostRoot(writer)
		before := taskFilesOf(t, dir)
		n, werr := kKstrtoint(data)
		if n == 0 && werr == 0 {
			n = writer
		}
		fh, err := v.Open(r, vpath, unix.O_WRONLY)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		got, err := fh.Write(r, data)
		var want error
		switch {
		case len(data) > os.Getpagesize():
			want = unix.E2BIG
		case werr != 0 || n < 0:
			want = unix.EINVAL
		case n == 200:
			want = unix.ENOENT
		case !inside[int(n)]:
			want = unix.ESRCH
		}
		after := taskFilesOf(t, dir)
		if want != nil {
			if !errors.Is(err, want) || ruleOf(err) == "" {
				t.Fatalf("write %q to %s = %d, %v; want %v by a rule", data, vpath, got, err, want)
			}
			if !mapsEqual(before, after) {
				t.Fatalf("refused write %q to %s changed task files: %v -> %v", data, vpath, before, after)
			}
			return
		}
		if err != nil || got != len(data) {
			t.Fatalf("write %q to %s = %d, %v; want %d moving task %d", data, vpath, got, err, len(data), n)
		}
		target := filepath.Join(dir, vpath)
		if after[target] != strconv.Itoa(int(n)) {
			t.Fatalf("write %q to %s gave the host %q, want %d", data, vpath, after[target], n)
		}
		delete(after, target)
		delete(before, target)
		if !mapsEqual(before, after) {
			t.Fatalf("write %q to %s changed other task files: %v -> %v", data, vpath, before, after)
		}
		fake.Write(t, target, "")
	})
}

// vp is a virtual path as Open takes it ("a/cgroup.procs").
func vp(p string) string { return strings.TrimPrefix(filepath.Clean("/"+p), "/") }

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// FuzzLimitWrite: cgroup.max.descendants and cgroup.max.depth. At the
// view root a write is the host's, carried as it is. Below it, "max" as
// the kernel reads it goes to the host as it is; a number the kernel
// takes goes as the host value that leaves room for hidden leaves, a
// value the kernel's parser takes too, or as "max" where that value would
// reach INT_MAX, and reads back as the number written (INT_MAX as "max",
// as the kernel reads it); one the kernel refuses is refused with its
// errno (EINVAL, ERANGE) and changes nothing. The host's own text reads
// as the container's limit.
func FuzzLimitWrite(f *testing.F) {
	for i, s := range []string{"max", "max\n", " max ", "0", "1\n", "5", "0x10", "010", " 5 \n", "+3", "-1", "99999999999",
		"1 2", "abc", "0b1", "", "maxx", "-0", "2147483648", "4\x00", "\t7\t",
		"max\xa0", "max\u00a0", "2147483647", "1073741824", "1073741823", "1500000000", "2147483646"} {
		f.Add([]byte(s), uint8(i))
	}
	f.Add(fake.Kernel(f, "v2-root-cgroup.stat"), uint8(0)) // the host text phase reads it as a limit file
	v, dir, r := newView(f, Config{})
	files := []string{"cgroup.max.descendants", "cgroup.max.depth"}
	codecs := [][2]func(int64) int64{{encodeDescendants, decodeDescendants}, {encodeDepth, decodeDepth}}
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		i := int(which & 1)
		d := "a"
		if which&2 != 0 {
			d = ""
		}
		vpath := vp(d + "/" + files[i])
		hostFile := filepath.Join(dir, vpath)
		const before = "max\n"
		fake.Write(t, hostFile, before)
		if err := unix.Removexattr(hostFile, limitXattr); err != nil && err != unix.ENODATA {
			t.Fatal(err)
		}
		err := write(v, r, vpath, string(data))
		b, rerr := os.ReadFile(hostFile)
		if rerr != nil {
			t.Fatal(rerr)
		}
		got := string(b)
		switch {
		case len(data) > os.Getpagesize():
			if !errors.Is(err, unix.E2BIG) || got != before {
				t.Fatalf("%d bytes to %s = %v, host %q; want E2BIG, host unchanged", len(data), vpath, err, got)
			}
			return
		case d == "":
			if err != nil || got != string(data) {
				t.Fatalf("write %q to the root's %s = %v, host %q; want it carried as it is", data, files[i], err, got)
			}
			return
		case string(kStrstrip(data)) == "max":
			if err != nil || got != string(data) {
				t.Fatalf("write %q to %s = %v, host %q; want it carried as it is", data, vpath, err, got)
			}
			return
		}
		n, errno := kKstrtoint(data)
		if errno == 0 && n < 0 {
			errno = unix.ERANGE // cgroup_max_descendants_write, cgroup_max_depth_write
		}
		if errno != 0 {
			if !errors.Is(err, errno) || ruleOf(err) != RuleBadValue || got != before {
				t.Fatalf("write %q to %s = %v, host %q; want %v by %s, host unchanged", data, vpath, err, got, errno, RuleBadValue)
			}
			return
		}
		if err != nil {
			t.Fatalf("write %q to %s = %v; the kernel takes %d", data, vpath, err, n)
		}
		encoded := codecs[i][0](n)
		hostN, herr := kKstrtoint([]byte(got))
		switch {
		case encoded >= math.MaxInt32:
			if string(kStrstrip([]byte(got))) != "max" {
				t.Fatalf("write %q (%d) to %s gave the host %q, want max (%d is past what it holds)", data, n, vpath, got, encoded)
			}
		case herr != 0 || hostN != encoded:
			t.Fatalf("write %q (%d) to %s gave the host %q (%v), want %d, a value the kernel takes", data, n, vpath, got, errnoOrNil(herr), encoded)
		}
		want := strconv.FormatInt(n, 10)
		if n == math.MaxInt32 {
			want = "max" // what "max" stores
		}
		if shown := strings.TrimSpace(read(t, v, r, vpath)); shown != want {
			t.Fatalf("write %q (%d) to %s reads back %q, want %q", data, n, vpath, shown, want)
		}

		// The host's own text, as the view shows it.
		fake.Write(t, hostFile, string(data))
		shown := read(t, v, r, vpath)
		if h, err := strconv.ParseInt(strings.TrimSuffix(string(data), "\n"), 10, 32); err == nil && h >= 0 && strconv.FormatInt(h, 10)+"\n" == string(data) {
			if want := strconv.FormatInt(codecs[i][1](h), 10) + "\n"; shown != want {
				t.Fatalf("host %s %q reads %q, want %q", vpath, data, shown, want)
			}
		}
	})
}

// FuzzSubtreeControlWrite: cgroup.subtree_control. The kernel parses the
// tokens: cgfs carries them to the host byte for byte, in one write.
// Only a write that enables a controller ('+') in a plain domain with
// processes makes a hidden leaf; no other write does, whatever its
// text. (Moving processes into a new leaf needs a real hierarchy: the
// test/ tier covers it.)
func FuzzSubtreeControlWrite(f *testing.F) {
	for i, s := range []string{"+hugetlb", "-hugetlb", "+memory +pids", "+memory -pids\n", "", " ", "\n", "memory", "+",
		"++memory", "+\x00", "-", strings.Repeat("+cpu ", 900)} {
		f.Add([]byte(s), uint8(i))
	}
	f.Add(fake.Kernel(f, "sys-kernel-cgroup-delegate"), uint8(0))
	v, dir, r := newView(f, Config{CgroupPath: "/c1"})
	dirsOf := func(t *testing.T) string {
		var out []string
		if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if d != nil && d.IsDir() {
				out = append(out, p)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return strings.Join(out, "\n")
	}
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		d := []string{"", "a/b"}[which&1]
		typ := []string{"domain\n", "threaded\n", "domain threaded\n", "domain invalid\n"}[which>>1&3]
		procs := ""
		if !bytes.Contains(data, []byte("+")) || typ != "domain\n" {
			procs = "100\n" // would move into a leaf, were it made
		}
		for name, text := range map[string]string{"cgroup.type": typ, "cgroup.procs": procs, "cgroup.subtree_control": "\n"} {
			fake.Write(t, filepath.Join(dir, d, name), text)
		}
		leaves, made, _ := v.Leaves()
		listed := dirsOf(t)
		vpath := vp(d + "/cgroup.subtree_control")
		fh, err := v.Open(r, vpath, unix.O_WRONLY)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		n, err := fh.Write(r, data)
		got, _ := os.ReadFile(filepath.Join(dir, vpath))
		if len(data) > os.Getpagesize() {
			if !errors.Is(err, unix.E2BIG) || string(got) != "\n" {
				t.Fatalf("%d bytes to %s = %v, host %q; want E2BIG, host unchanged", len(data), vpath, err, got)
			}
		} else if err != nil || n != len(data) || !bytes.Equal(got, data) {
			t.Fatalf("write %q to %s = %d, %v, host %q; want it carried as it is", data, vpath, n, err, got)
		}
		now, madeNow, _ := v.Leaves()
		if after := dirsOf(t); after != listed || now != leaves || madeNow != made || v.hasLeaf(d) {
			t.Fatalf("write %q to %s (%s, procs %q) made a leaf: dirs %q -> %q", data, vpath, strings.TrimSpace(typ), procs, listed, after)
		}
	})
}

// FuzzPassThroughWrite: the control files cgfs has no parser of its own
// for (cgroup.freeze, cgroup.type, cgroup.kill, resource limits, v1
// files) reach the host as written, byte for byte, in one write; the v1
// files guarded against containers (release_agent, notify_on_release,
// devices.allow) are refused at open with EPERM and change nothing.
func FuzzPassThroughWrite(f *testing.F) {
	for i, name := range []string{"v1-memory.limit_in_bytes", "v1-cpuset.cpus", "v1-devices.list"} {
		f.Add(fake.Kernel(f, name), uint8(i))
	}
	for i, s := range []string{"1", "0\n", "threaded", "max", "100000 100000", "8:0 rbps=1048576", "0-1", "a *:* rwm",
		"/bin/sh", "FROZEN", "", "\x00", "-1", "3 4"} {
		f.Add([]byte(s), uint8(i))
	}
	v2Files := []string{"a/cgroup.freeze", "a/cgroup.type", "a/cgroup.kill", "a/memory.max", "a/memory.high",
		"a/pids.max", "a/cpu.max", "a/cpu.weight", "a/io.max", "a/hugetlb.2MB.max", "a/memory.oom.group"}
	v1Files := []string{"a/memory.limit_in_bytes", "a/cpuset.cpus", "a/cpuset.mems", "a/devices.deny", "a/freezer.state",
		"a/cgroup.clone_children", "a/memory.soft_limit_in_bytes"}
	guarded := map[string]access.Rule{"release_agent": access.RuleV1ReleaseAgent, "a/notify_on_release": access.RuleV1ReleaseAgent,
		"a/devices.allow": access.RuleV1DevicesAllow}
	v1Files = append(v1Files, "release_agent", "a/notify_on_release", "a/devices.allow")
	policy := access.NewPolicy(ownerChain)
	v2, dir2, _ := newView(f, Config{Policy: policy})
	v1, dir1, _ := newView(f, Config{Policy: policy, V1: true, Controllers: "memory", CgroupPath: "/c1"})
	for _, p := range v2Files {
		fake.Write(f, filepath.Join(dir2, p), "")
	}
	for _, p := range v1Files {
		fake.Write(f, filepath.Join(dir1, p), "")
	}
	containerRoot := access.Known(access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, proc.Thread{})
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		v, dir, files := v2, dir2, v2Files
		if which&1 != 0 {
			v, dir, files = v1, dir1, v1Files
		}
		vpath := files[int(which>>1)%len(files)]
		r, byHost := containerRoot, which&0x80 != 0
		if byHost {
			r = hostRoot(1)
		}
		const before = "before\n"
		hostFile := filepath.Join(dir, vpath)
		fake.Write(t, hostFile, before)
		fh, err := v.Open(r, vpath, unix.O_WRONLY)
		rule, isGuarded := guarded[vpath]
		if isGuarded && !byHost {
			got, _ := os.ReadFile(hostFile)
			if !errors.Is(err, unix.EPERM) || ruleOf(err) != rule || string(got) != before {
				t.Fatalf("open of %s for writing = %v, host %q; want EPERM by %s, host unchanged", vpath, err, got, rule)
			}
			return
		}
		if err != nil {
			t.Fatalf("open of %s for writing: %v", vpath, err)
		}
		defer fh.Close()
		n, err := fh.Write(r, data)
		got, _ := os.ReadFile(hostFile)
		if len(data) > os.Getpagesize() {
			if !errors.Is(err, unix.E2BIG) || string(got) != before {
				t.Fatalf("%d bytes to %s = %v, host %q; want E2BIG, host unchanged", len(data), vpath, err, got)
			}
			return
		}
		if err != nil || n != len(data) || !bytes.Equal(got, data) {
			t.Fatalf("write %q to %s = %d, %v, host %q; want it carried as it is", data, vpath, n, err, got)
		}
	})
}
