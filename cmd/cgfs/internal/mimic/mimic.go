// Package mimic makes a container's cgroupfs syscalls answer as a
// host's would, for the views this process serves: the statfs types of
// view files (by device and inode) and, for a nested runtime's mount of
// cgroupfs, a view of its own cgroups in its place. It is what the
// seccomp agent is configured with by cgfs run and the daemon.
package mimic

import (
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/agent"
	"github.com/cgfs/cgfs/translate/layout"
)

// Mount is one cgroup hierarchy as the kernel mounts it: where in
// the layout, and its file system type and options.
type Mount struct {
	Dir    string // "" for the whole of /sys/fs/cgroup (a cgroup v2 only host)
	FSType string // cgroup2 or cgroup
	Data   string // v1: the controllers ("cpu,cpuacct", "none,name=systemd")
}

// MountOf is how the kernel mounts hierarchy h.
func MountOf(h layout.Hierarchy) Mount {
	if !h.V1 {
		return Mount{Dir: h.Name, FSType: "cgroup2"}
	}
	data := string(h.Controllers)
	if strings.HasPrefix(data, "name=") {
		data = "none," + data
	}
	return Mount{Dir: h.Name, FSType: "cgroup", Data: data}
}

// Magic is what statfs reports for the files of a view served as
// mounts lays out, on the FUSE device dev: cgroup2 for a cgroup v2 only
// host; on v1 and hybrid hosts tmpfs for the layout root (its inode
// numbers carry no hierarchy) and, by the hierarchy each inode number's
// base names (serve gives view i the base (i+1)<<48), cgroup for v1 and
// cgroup2 for the v2 one.
func Magic(dev uint64, mounts []Mount) agent.Magic {
	return func(d, ino uint64) (int64, bool) {
		if d != dev {
			return 0, false
		}
		if len(mounts) == 1 && mounts[0].Dir == "" {
			return unix.CGROUP2_SUPER_MAGIC, true
		}
		i := ino >> 48
		switch {
		case i == 0:
			return unix.TMPFS_MAGIC, true
		case int(i) > len(mounts):
			return 0, false
		case mounts[i-1].FSType == "cgroup2":
			return unix.CGROUP2_SUPER_MAGIC, true
		}
		return unix.CGROUP_SUPER_MAGIC, true
	}
}

// Set is what the agent reports for the views of one container:
// its own and the nested ones, all of the host's layout.
type Set struct {
	mounts []Mount
	mu     sync.Mutex
	devs   map[uint64]uint64 // device: the Add that made it the set's
	adds   uint64
}

// NewSet is a set of no views yet, of the host layout mounts.
func NewSet(mounts []Mount) *Set {
	return &Set{mounts: mounts, devs: map[uint64]uint64{}}
}

// Add makes the views on FUSE device dev the set's until the func it
// returns is called, when their connection has ended. The kernel gives a
// device number to the next file system at once, so a number left in
// the set would show another file system (a tmpfs, an overlay, another
// FUSE one) as a cgroupfs to statfs; and a removal that comes after the
// number went to a view of the set again leaves that one's alone.
func (s *Set) Add(dev uint64) (remove func()) {
	s.mu.Lock()
	s.adds++
	add := s.adds
	s.devs[dev] = add
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.devs[dev] == add {
			delete(s.devs, dev)
		}
		s.mu.Unlock()
	}
}

// Len is how many devices the set holds.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.devs)
}

// Magic is the agent's Magic for the set.
func (s *Set) Magic(dev, ino uint64) (int64, bool) {
	s.mu.Lock()
	_, ok := s.devs[dev]
	s.mu.Unlock()
	if !ok {
		return 0, false
	}
	return Magic(dev, s.mounts)(dev, ino)
}
