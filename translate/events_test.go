package translate

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/test/fake"
)

func TestParseEventControl(t *testing.T) {
	for _, c := range []struct {
		in       string
		efd, cfd int
		args     string
		ok       bool
	}{
		{"3 4", 3, 4, "", true},
		{"3 4\n", 3, 4, "", true},
		{" 3 4 ", 3, 4, "", true},
		{"3 4 1048576", 3, 4, "1048576", true},
		{"5 6 low,hierarchy", 5, 6, "low,hierarchy", true},
		{" 4", 0, 0, "", false}, // stripped first, as strstrip does
		{"3,4", 0, 0, "", false},
		{"3", 0, 0, "", false},
		{"3 4x", 0, 0, "", false},
		{"99999999999 4", -1, 4, "", true}, // no such descriptor: EBADF later
		{"", 0, 0, "", false},
	} {
		efd, cfd, args, ok := parseEventControl([]byte(c.in))
		if ok != c.ok || ok && (efd != c.efd || cfd != c.cfd || args != c.args) {
			t.Errorf("parseEventControl(%q) = %d, %d, %q, %v; want %d, %d, %q, %v", c.in, efd, cfd, args, ok, c.efd, c.cfd, c.args, c.ok)
		}
	}
}

// TestEventControlBadInputChangesNothing: a write that is not the
// kernel's form is EINVAL, and one whose writer cannot be pinned (here
// a request of no process) reaches nothing; the host file is never
// written.
func TestEventControlBadInputChangesNothing(t *testing.T) {
	policy := access.NewPolicy(ownerChain)
	v, dir, _ := newView(t, Config{Policy: policy, V1: true, Controllers: "memory", CgroupPath: "/c1"})
	fake.Write(t, filepath.Join(dir, "a/cgroup.event_control"), "")
	fake.Write(t, filepath.Join(dir, "a/memory.oom_control"), "")
	r := access.Known(access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, proc.Thread{})
	f, err := v.Open(r, "a/cgroup.event_control", unix.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(r, []byte("3,4")); !errors.Is(err, unix.EINVAL) || ruleOf(err) != RuleEventControl {
		t.Errorf("write of 3,4 = %v, want EINVAL by %s", err, RuleEventControl)
	}
	if _, err := f.Write(r, []byte("3 4")); err == nil {
		t.Errorf("write of 3 4 by no process succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a/cgroup.event_control")); len(b) != 0 {
		t.Errorf("the host file was written: %q", b)
	}
}
