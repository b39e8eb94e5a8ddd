package layout

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/procfs"

	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/test/fake"
)

// FuzzDiscover: the server's mountinfo and /proc/PID/cgroup, as
// Discover reads them from a proc filesystem (a fake one here, holding
// the fuzzed text). Each hierarchy found is a cgroup mount of the table
// holding one of the server's cgroup lines, once; a v2-only layout is
// its mount itself; otherwise the hierarchies are sorted by the name
// they take in the layout, their mount's directory name, and the
// symbolic links found name only them.
func FuzzDiscover(f *testing.F) {
	mountinfo, cgroup := fake.Kernel(f, "proc-self-mountinfo"), fake.Kernel(f, "proc-self-cgroup")
	f.Add(mountinfo, cgroup)
	f.Add(mountinfo, fake.Kernel(f, "proc-cgroupns-cgroup"))
	// A pure cgroup v2 host: its cgroup2 mount at /sys/fs/cgroup.
	var v2 []string
	for _, line := range strings.Split(string(mountinfo), "\n") {
		if !strings.Contains(line, " /sys/fs/cgroup") {
			v2 = append(v2, line)
		} else if strings.Contains(line, "cgroup2") {
			v2 = append(v2, strings.Replace(line, "/sys/fs/cgroup/unified", "/sys/fs/cgroup", 1))
		}
	}
	f.Add([]byte(strings.Join(v2, "\n")), []byte("0::/init.scope\n"))
	f.Add(mountinfo, []byte("0::/\n"))
	f.Add([]byte("41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate\n"), []byte("0::/\n"))
	root := f.TempDir()
	self := filepath.Join(root, strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(self, 0o755); err != nil {
		f.Fatal(err)
	}
	procs, err := proc.Open(root)
	if err != nil {
		f.Fatal(err)
	}
	pfs, err := procfs.NewFS(root)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, mountinfo, cgroup []byte) {
		fake.Write(t, filepath.Join(self, "mountinfo"), string(mountinfo))
		fake.Write(t, filepath.Join(self, "cgroup"), string(cgroup))
		l, err := Discover(procs)
		if err != nil {
			return // a table or lines procfs cannot read, or no hierarchy
		}
		mounts, merr := pfs.GetProcMounts(os.Getpid())
		lines, lerr := procs.SelfCgroups()
		if merr != nil || lerr != nil || len(l.Hierarchies) == 0 {
			t.Fatalf("Discover = %+v, nil; but the table reads %v, the lines %v", l, merr, lerr)
		}
		seen := map[string]bool{}
		for _, h := range l.Hierarchies {
			if seen[h.MountPoint] {
				t.Fatalf("Discover = %+v: %s twice", l, h.MountPoint)
			}
			seen[h.MountPoint] = true
			ok := slices.ContainsFunc(mounts, func(m *procfs.MountInfo) bool {
				return m.MountPoint == h.MountPoint && m.Root == h.Root && h.V1 == (m.FSType == "cgroup") &&
					slices.ContainsFunc(lines, func(line procfs.Cgroup) bool {
						return mountIs(m, line) && strings.Join(line.Controllers, ",") == string(h.Controllers)
					})
			})
			if !ok {
				t.Fatalf("Discover = %+v: %+v is no cgroup mount holding one of the server's lines", l, h)
			}
		}
		if len(l.Hierarchies) == 1 && !l.Hierarchies[0].V1 {
			if h := l.Hierarchies[0]; h.Name != "" || l.Dir != h.MountPoint {
				t.Fatalf("Discover = %+v: a v2-only layout is its mount", l)
			}
			return
		}
		if !slices.IsSortedFunc(l.Hierarchies, func(a, b Hierarchy) int { return strings.Compare(a.Name, b.Name) }) {
			t.Fatalf("Discover = %+v: not sorted by name", l)
		}
		for _, h := range l.Hierarchies {
			if h.Name != filepath.Base(h.MountPoint) {
				t.Fatalf("Discover = %+v: %s is named %q", l, h.MountPoint, h.Name)
			}
		}
		for link, target := range l.Symlinks {
			if !slices.ContainsFunc(l.Hierarchies, func(h Hierarchy) bool { return h.Name == target }) {
				t.Fatalf("Discover = %+v: link %s names no hierarchy", l, link)
			}
		}
	})
}

// TestDiscoverCapturedLayout: the captured hybrid table, the first seed
// of FuzzDiscover, reads as this machine's layout.
func TestDiscoverCapturedLayout(t *testing.T) {
	root := t.TempDir()
	fake.Cgroup(t, filepath.Join(root, strconv.Itoa(os.Getpid())), map[string]string{
		"mountinfo": string(fake.Kernel(t, "proc-self-mountinfo")),
		"cgroup":    string(fake.Kernel(t, "proc-self-cgroup")),
	})
	procs, err := proc.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Discover(procs)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range l.Hierarchies {
		names = append(names, h.Name+"="+string(h.Controllers))
	}
	want := "blkio=blkio cpu=cpu cpuacct=cpuacct cpuset=cpuset devices=devices freezer=freezer memory=memory pids=pids systemd=name=systemd unified="
	if l.Dir != "/sys/fs/cgroup" || strings.Join(names, " ") != want {
		t.Errorf("Discover = %s %v, want /sys/fs/cgroup %s", l.Dir, names, want)
	}
}
