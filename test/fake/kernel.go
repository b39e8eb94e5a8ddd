package fake

import (
	"embed"
	"path"
	"strings"
	"testing"
)

// kernel holds text captured from Linux 6.18 on the CI machine kind (a
// hybrid layout: v1 controllers at /sys/fs/cgroup/NAME, cgroup2 at
// /sys/fs/cgroup/unified), one file per capture:
//
//	v2-root-*            /sys/fs/cgroup/unified/FILE
//	v1-memory-* etc.     a v1 cgroup's FILE (the shell's memory cgroup)
//	proc-self-*          /proc/self/FILE of cat (the memory cgroup's
//	                     path renamed /cgfs-ci; mountinfo without the
//	                     machine's own sandbox mounts)
//	proc-pidns-*         /proc/self/FILE of a task in a child pid
//	                     namespace, read through the host's /proc
//	proc-cgroupns-cgroup /proc/1/cgroup read from a cgroup namespace
//	                     rooted two levels below init's memory cgroup:
//	                     cgroups above the namespace root show as /..
//
//go:embed kernel
var kernel embed.FS

// Kernel returns the captured text called name (see kernel above).
func Kernel(t testing.TB, name string) []byte {
	t.Helper()
	b, err := kernel.ReadFile(path.Join("kernel", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// KernelText returns every captured text whose name has the prefix, by
// name: the seeds of fuzz targets.
func KernelText(t testing.TB, prefix string) map[string][]byte {
	t.Helper()
	entries, err := kernel.ReadDir("kernel")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out[e.Name()] = Kernel(t, e.Name())
		}
	}
	return out
}
