package pidns

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/test/fake"
)

// FuzzMoveAll: the host's cgroup.procs as moveAll reads it to move a
// cgroup's processes (into a hidden leaf, and back). Each id listed is
// written, once, in order, to the destination's cgroup.procs and
// nothing else is; a process gone meanwhile (ESRCH) is skipped, any
// other refusal stops the move and is returned.
func FuzzMoveAll(f *testing.F) {
	for _, name := range []string{"v2-root-cgroup.procs", "v1-memory-cgroup.procs"} {
		f.Add(fake.Kernel(f, name), uint8(0))
	}
	for i, s := range []string{"", "1\n", "1\n2\n3\n", "x\n5\n", "7 8\t9", "-1\n", "99999999999999999999\n"} {
		f.Add([]byte(s), uint8(i))
	}
	f.Fuzz(func(t *testing.T, procs []byte, fail uint8) {
		var want []int
		for _, field := range strings.Fields(string(procs)) {
			if n, err := strconv.Atoi(field); err == nil {
				want = append(want, n)
			}
		}
		// The write numbered fail%8 fails: odd ones as gone, even ones
		// with EBUSY.
		var wrote []int
		failAt, gone := int(fail%8), fail%2 == 1
		err := moveAll(func(rel string) ([]byte, error) {
			if rel != "a/cgroup.procs" {
				t.Fatalf("moveAll read %s", rel)
			}
			return procs, nil
		}, func(rel string, n int) error {
			if rel != "a/.leaf/cgroup.procs" {
				t.Fatalf("moveAll wrote %s", rel)
			}
			wrote = append(wrote, n)
			switch {
			case len(wrote)-1 != failAt:
			case gone:
				return unix.ESRCH
			default:
				return unix.EBUSY
			}
			return nil
		}, "a", "a/.leaf")
		if !gone && failAt < len(want) {
			if !errors.Is(err, unix.EBUSY) || !slices.Equal(wrote, want[:failAt+1]) {
				t.Fatalf("moveAll(%q) failing at write %d = %v, wrote %v; want EBUSY after %v", procs, failAt, err, wrote, want[:failAt+1])
			}
			return
		}
		if err != nil || !slices.Equal(wrote, want) {
			t.Fatalf("moveAll(%q) = %v, wrote %v; want %v", procs, err, wrote, want)
		}
	})
}
