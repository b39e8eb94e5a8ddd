package translate

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/test/fake"
)

// Fuzz targets of host text as views read it.

// FuzzCounters: cgroup.stat and the *.local counters, host text that
// the view rewrites. Every line is kept, in order: a "key value" line
// with a value less the hidden leaves below (nr_descendants, never
// below 0) or plus the leaf's (*.local), any other line byte for byte;
// a cgroup without a leaf shows the host's text as it is.
func FuzzCounters(f *testing.F) {
	local := []byte(fake.Files["cgroup.events"])
	for _, name := range []string{"v2-root-cgroup.stat", "v2-root-cpu.stat", "v1-memory.stat", "v1-memory.oom_control",
		"v2-root-memory.pressure"} {
		f.Add(fake.Kernel(f, name), local, local)
	}
	f.Add([]byte(fake.Files["cgroup.stat"]), []byte("low 0\nhigh 2\nmax 1\noom 0\noom_kill 0\noom_group_kill 0\n"),
		[]byte("low 0\nhigh 1\nmax 0\noom 1\noom_kill 1\noom_group_kill 0\n"))
	f.Add([]byte("nr_descendants 0"), []byte("oom 1\noom 2\n"), []byte("oom 3\nnew 1\n"))
	f.Add([]byte("nr_descendants  -4\n\nx\n"), []byte("a 9223372036854775807\n"), []byte("a 0\n"))
	v, dir, r := newView(f, Config{})
	leaves := map[string]int64{"": 1, "a": 1, "a/b": 0} // a's leaf is below the root and a
	f.Fuzz(func(t *testing.T, stat, local, leafLocal []byte) {
		for _, d := range []string{"", "a", "a/b"} {
			fake.Write(t, filepath.Join(dir, d, "cgroup.stat"), string(stat))
			fake.Write(t, filepath.Join(dir, d, "memory.events.local"), string(local))
		}
		fake.Write(t, filepath.Join(dir, "a", LeafName, "memory.events.local"), string(leafLocal))
		add := keyedModel(leafLocal)
		for _, d := range []string{"", "a", "a/b"} {
			got := read(t, v, r, vp(d+"/cgroup.stat"))
			checkRewrite(t, d+"/cgroup.stat", stat, got, leaves[d] == 0, func(key string, n int64) (int64, bool) {
				if key == "nr_descendants" {
					return max(n-leaves[d], 0), true
				}
				return n, true
			})
			if d == "" {
				continue // the root has no memory.events.local of its own
			}
			got = read(t, v, r, vp(d+"/memory.events.local"))
			checkRewrite(t, d+"/memory.events.local", local, got, d == "a/b", func(key string, n int64) (int64, bool) {
				if m := add[key]; m > 0 && n > math.MaxInt64-m || m < 0 && n < math.MinInt64-m {
					return 0, false // past 64 bits: no kernel counter gets there
				}
				return n + add[key], true
			})
		}
	})
}

// keyedModel is what the kernel's flat-keyed lines say: the last value
// of each key whose line is "key value".
func keyedModel(b []byte) map[string]int64 {
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				out[f[0]] = n
			}
		}
	}
	return out
}

// checkRewrite holds the view's text got of host text in to a rewrite
// of each "key value" line by want; same: the text is the host's as it
// is.
func checkRewrite(t *testing.T, file string, in []byte, got string, same bool, want func(string, int64) (int64, bool)) {
	t.Helper()
	if same {
		if got != string(in) {
			t.Fatalf("%s: host %q reads %q, want it as it is", file, in, got)
		}
		return
	}
	inLines := strings.SplitAfter(string(in), "\n")
	gotLines := strings.SplitAfter(got, "\n")
	if inLines[len(inLines)-1] == "" {
		inLines = inLines[:len(inLines)-1]
	}
	if gotLines[len(gotLines)-1] == "" {
		gotLines = gotLines[:len(gotLines)-1]
	}
	if len(gotLines) != len(inLines) || len(got) > len(in)+21*len(inLines) {
		t.Fatalf("%s: host %q (%d lines) reads %q (%d lines)", file, in, len(inLines), got, len(gotLines))
	}
	for i, line := range inLines {
		f := strings.Fields(line)
		n, err := int64(0), error(nil)
		if len(f) == 2 {
			n, err = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) != 2 || err != nil {
			if gotLines[i] != line {
				t.Fatalf("%s: host line %q reads %q, want it as it is", file, line, gotLines[i])
			}
			continue
		}
		w, ok := want(f[0], n)
		if !ok {
			continue
		}
		if wl := f[0] + " " + strconv.FormatInt(w, 10) + "\n"; gotLines[i] != wl {
			t.Fatalf("%s: host line %q reads %q, want %q", file, line, gotLines[i], wl)
		}
	}
}

// FuzzTaskCgroup: /proc/PID/cgroup as a view reads it to place a task.
// A task is inside the view exactly when its line for the view's
// hierarchy names the view root or a cgroup below it, each step a name
// a cgroup can have; a task elsewhere (beside the root, above it, or
// outside the server's cgroup namespace, which the kernel shows as
// "/..") is ENOENT, and a task without a line, or with text procfs
// cannot read, ESRCH. Only a task inside can be moved in by a write of
// its id.
func FuzzTaskCgroup(f *testing.F) {
	f.Add(fake.Kernel(f, "proc-self-cgroup"), uint8(0))
	// Init, as a server in a cgroup namespace two levels down reads it,
	// by a v1 memory view at that namespace's root.
	f.Add(fake.Kernel(f, "proc-cgroupns-cgroup"), uint8(3))
	for i, s := range []string{"0::/c1/a\n", "0::/c1\n", "0::/c1/a/" + LeafName + "\n", "0::/c10\n", "0::/\n",
		"4:memory:/c1/a\n0::/elsewhere\n", "4:memory:/c1\n", "1:cpu,cpuacct:/c1\n", "9:name=systemd:/c1\n", ""} {
		f.Add([]byte(s), uint8(i))
	}
	root, procs := fakeProc(f, []fakeTask{{300, "/c1"}})
	type view struct {
		v     *View
		dir   string
		root  string
		ctrls string
	}
	var views []view
	for _, root := range []string{"/c1", "/", "/c1/a"} {
		for _, ctrls := range []string{"", "memory"} {
			v, dir, _ := newView(f, Config{Procs: procs, Policy: access.NewPolicy(hostChain), CgroupPath: root,
				V1: ctrls != "", Controllers: proc.Controllers(ctrls)})
			views = append(views, view{v, dir, root, ctrls})
		}
	}
	status, stat := fake.Kernel(f, "proc-self-status"), fake.Kernel(f, "proc-self-stat")
	f.Fuzz(func(t *testing.T, cgroup []byte, which uint8) {
		vw := views[int(which)%len(views)]
		writeTask(t, root, 100, status, stat, cgroup)
		lines, perr := procs.Cgroups(100)
		p, found := "", false
		if perr == nil {
			p, found = vw.v.controllers.In(lines)
		}
		pin, err := procs.Pin(100)
		if err != nil {
			t.Fatal(err)
		}
		defer pin.Close()
		rel, err := vw.v.cgroupOfPin(pin)
		switch {
		case !found:
			if !errors.Is(err, unix.ESRCH) {
				t.Fatalf("task with cgroup text %q (parsed: %v) = %q, %v; want ESRCH", cgroup, perr, rel, err)
			}
			return
		case !below(p, vw.root):
			if !errors.Is(err, unix.ENOENT) {
				t.Fatalf("view at %s (%q): task in %q is at %q, %v; want ENOENT", vw.root, vw.ctrls, p, rel, err)
			}
		case err != nil:
			t.Fatalf("view at %s (%q): task in %q = %v; want it inside", vw.root, vw.ctrls, p, err)
		case rel != placed(p, vw.root):
			t.Fatalf("view at %s: task in %q is at %q, want %q", vw.root, p, rel, placed(p, vw.root))
		}
		procsFile := filepath.Join(vw.dir, "cgroup.procs")
		fake.Write(t, procsFile, "")
		werr := write(vw.v, hostRoot(300), "cgroup.procs", "100")
		moved, _ := os.ReadFile(procsFile)
		if (werr == nil) != (err == nil) || werr == nil && string(moved) != "100" || werr != nil && len(moved) != 0 {
			t.Fatalf("view at %s: task in %q (placed at %q, %v): moving it in = %v, host %q", vw.root, p, rel, err, werr, moved)
		}
	})
}

// below reports whether the host cgroup path p is the cgroup root or
// one below it, each step a cgroup name.
func below(p, root string) bool {
	if p == root {
		return true
	}
	rest, ok := strings.CutPrefix(p, strings.TrimSuffix(root, "/")+"/")
	if !ok {
		return false
	}
	for _, name := range strings.Split(rest, "/") {
		if ValidName(name) != nil {
			return false
		}
	}
	return true
}

// placed is where a view rooted at root shows a task of the host cgroup
// p below it: p's path below the root, and a hidden leaf's task in the
// leaf's cgroup.
func placed(p, root string) string {
	rel := ""
	if p != root {
		rel = strings.TrimPrefix(p, strings.TrimSuffix(root, "/")+"/")
	}
	if rel == LeafName {
		return ""
	}
	return strings.TrimSuffix(rel, "/"+LeafName)
}
