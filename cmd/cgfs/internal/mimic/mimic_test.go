package mimic

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/agent"
)

var hybrid = []Mount{
	{Dir: "cpu,cpuacct", FSType: "cgroup", Data: "cpu,cpuacct"},
	{Dir: "memory", FSType: "cgroup", Data: "memory"},
	{Dir: "systemd", FSType: "cgroup", Data: "none,name=systemd"},
	{Dir: "unified", FSType: "cgroup2"},
}

func TestMagic(t *testing.T) {
	for _, c := range []struct {
		name     string
		mounts   []Mount
		dev, ino uint64
		want     int64
		ok       bool
	}{
		{"v2 view file", []Mount{{FSType: "cgroup2"}}, 7, 12345, unix.CGROUP2_SUPER_MAGIC, true},
		{"another device", []Mount{{FSType: "cgroup2"}}, 8, 12345, 0, false},
		{"layout root", hybrid, 7, 1, unix.TMPFS_MAGIC, true},
		{"v1 hierarchy", hybrid, 7, 2<<48 | 99, unix.CGROUP_SUPER_MAGIC, true},
		{"v1 leaf path", hybrid, 7, 2<<48 | 1<<47 | 99, unix.CGROUP_SUPER_MAGIC, true},
		{"v2 of hybrid", hybrid, 7, 4<<48 | 5, unix.CGROUP2_SUPER_MAGIC, true},
		{"no such hierarchy", hybrid, 7, 9<<48 | 5, 0, false},
	} {
		got, ok := Magic(7, c.mounts)(c.dev, c.ino)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: Magic(%d, %#x) = %#x, %v; want %#x, %v", c.name, c.dev, c.ino, got, ok, c.want, c.ok)
		}
	}
}

func TestSetHasOnlyItsDevices(t *testing.T) {
	s := NewSet(hybrid)
	if _, ok := s.Magic(7, 1); ok {
		t.Errorf("an empty set answers for device 7")
	}
	s.Add(7)
	if got, ok := s.Magic(7, 1); !ok || got != unix.TMPFS_MAGIC {
		t.Errorf("Magic(7, 1) = %#x, %v after Add(7)", got, ok)
	}
}

func TestHierarchyOfAMount(t *testing.T) {
	n := &Nester{Mounts: hybrid}
	for _, c := range []struct {
		fstype, data, want string
		ok                 bool
	}{
		{"cgroup2", "", "unified", true},
		{"cgroup", "memory", "memory", true},
		{"cgroup", "cpuacct,cpu", "cpu,cpuacct", true},
		{"cgroup", "name=systemd", "systemd", true},
		{"cgroup", "none,name=systemd,xattr", "systemd", true},
		{"cgroup", "cpu", "", false}, // not a hierarchy of its own here
		{"cgroup", "devices", "", false},
	} {
		got, ok := n.hierarchy(agent.MountCall{FSType: c.fstype, Data: c.data})
		if got != c.want || ok != c.ok {
			t.Errorf("mount -t %s -o %q: hierarchy %q, %v; want %q, %v", c.fstype, c.data, got, ok, c.want, c.ok)
		}
	}
}

// TestSetRemovesWhatItAdded: a device leaves the set when its view's
// connection ends, and a removal that comes after the number went to
// another view of the set leaves that one's.
func TestSetRemovesWhatItAdded(t *testing.T) {
	s := NewSet([]Mount{{FSType: "cgroup2"}})
	in := func(dev uint64) bool { _, ok := s.Magic(dev, 5); return ok }
	first := s.Add(7)
	if !in(7) || in(8) {
		t.Fatal("Add(7): 7 not in the set, or 8 in it")
	}
	first()
	if in(7) || s.Len() != 0 {
		t.Errorf("7 removed: still in the set (%d devices)", s.Len())
	}
	// The number goes to another view before the first's removal runs.
	a := s.Add(9)
	b := s.Add(9)
	a()
	if !in(9) {
		t.Error("a late removal of 9 took the view that has it now")
	}
	b()
	b() // twice: nothing more
	if in(9) || s.Len() != 0 {
		t.Errorf("9 removed: still in the set (%d devices)", s.Len())
	}
}
