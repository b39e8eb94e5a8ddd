package translate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/test/fake"
)

// TestParallelReadsOfOneFile: threads reading one open computed file
// share its rendering (run under -race).
func TestParallelReadsOfOneFile(t *testing.T) {
	v, _, r := newView(t, Config{})
	f, err := v.Open(r, "cgroup.stat", unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := "nr_descendants 2\nnr_dying_descendants 0\n"
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				off := int64((g + i) % 2 * 5)
				b, err := f.Read(make([]byte, 64), off)
				if err != nil || string(b) != want[off:] {
					t.Errorf("pread at %d = %q, %v; want %q", off, b, err, want[off:])
					return
				}
			}
		}()
	}
	wg.Wait()
}

// 32 racing mkdirs under a container limit (defect 2 of the review)
// are tested on real cgroups (test.TestConcurrentMkdirsUnderAContainerLimit):
// the limit is judged on the kernel's nr_descendants, which a fake tree
// does not keep.

// TestOversizedWritesChangeNothing: any write over a page is E2BIG, the
// task files' included (the kernel answers so before parsing).
func TestOversizedWritesChangeNothing(t *testing.T) {
	v, dir, r := newView(t, Config{CgroupPath: "/cgfs-unit"})
	data := strings.Repeat(" ", 5000) + "0"
	for _, file := range []string{"a/cgroup.procs", "a/cgroup.threads", "a/cgroup.subtree_control", "a/cgroup.freeze", "a/cgroup.max.depth"} {
		before, _ := os.ReadFile(filepath.Join(dir, file))
		err := write(v, r, file, data)
		if !errors.Is(err, unix.E2BIG) || ruleOf(err) != RuleWriteSize {
			t.Errorf("%d bytes to %s: %v, want E2BIG by %s", len(data), file, err, RuleWriteSize)
		}
		if after, _ := os.ReadFile(filepath.Join(dir, file)); string(after) != string(before) {
			t.Errorf("a refused write changed %s: %q -> %q", file, before, after)
		}
	}
}

// TestNoConfigurationMakesAWritePanic writes odd data to every control
// file cgfs knows, and to plain ones, in every kind of view, by callers
// known, unknown and gone: each answer is an error or a success, never
// a panic.
func TestNoConfigurationMakesAWritePanic(t *testing.T) {
	procs := openProcs(t)
	if _, err := New(nil, Config{}); err == nil {
		t.Error("New without host, policy or proc filesystem succeeded")
	}
	names := []string{"memory.max", "memory.events.local", "cgroup.events"}
	for name := range controlFiles {
		names = append(names, name)
	}
	payloads := []string{"", "0", "1", "-1", "max", "+memory", "-memory +pids", "garbage\n", "0x10",
		"\x00\xff", strings.Repeat("9", 40), strings.Repeat(" ", 5000) + "0"}
	configs := map[string]Config{
		"v2, no cgroup path":   {},
		"v2 with a cgroup":     {CgroupPath: "/cgfs-unit"},
		"v1":                   {V1: true, Controllers: "memory", CgroupPath: "/cgfs-unit"},
		"delegating":           {CgroupPath: "/", Delegate: []string{"memory.max"}},
		"owned by a container": {Policy: access.NewPolicy(ownerChain)},
	}
	id := access.NewIdentifier(procs)
	callers := map[string]func() *access.Request{
		"the test itself": func() *access.Request { return self(t, procs) },
		"a gone thread":   func() *access.Request { return id.Request(1<<30, 0, 0) },
		"no identifier": func() *access.Request {
			return access.Known(access.Caller{UserNS: ownerChain}, proc.Thread{Tid: 1 << 30})
		},
	}
	for cname, cfg := range configs {
		v, dir, _ := newView(t, cfg)
		for _, name := range names {
			for _, d := range []string{"", "a"} {
				fake.Write(t, filepath.Join(dir, d, name), "")
			}
		}
		for who, req := range callers {
			for _, name := range names {
				for _, d := range []string{"", "a"} {
					for _, p := range payloads {
						func() {
							defer func() {
								if x := recover(); x != nil {
									t.Fatalf("%s, %s: writing %q to %s/%s panicked: %v", cname, who, p, d, name, x)
								}
							}()
							r := req()
							defer r.Done()
							f, err := v.Open(r, filepath.Join(d, name), unix.O_RDWR)
							if err != nil {
								return
							}
							defer f.Close()
							_, _ = f.Write(r, []byte(p))
							_, _ = f.Read(make([]byte, 4096), 0)
						}()
					}
				}
			}
		}
	}
}
