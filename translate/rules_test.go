package translate

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
)

// The write rules as a container meets them: which control file, where,
// by whom. The view describes the file (root? delegated? guarded?), the
// policy decides.

var (
	hostNS  = proc.NS{Dev: 4, Ino: 4026531837}
	ownerNS = proc.NS{Dev: 4, Ino: 4026532001}
	otherNS = proc.NS{Dev: 4, Ino: 4026532002}
	nestNS  = proc.NS{Dev: 4, Ino: 4026532003}
	admin   = uint64(1) << 21 // CAP_SYS_ADMIN

	hostChain   = []proc.Ancestor{{NS: hostNS}}
	ownerChain  = []proc.Ancestor{{NS: ownerNS, OwnerUID: 1000}, {NS: hostNS}}
	nestedChain = []proc.Ancestor{{NS: nestNS, OwnerUID: 100000}, {NS: ownerNS, OwnerUID: 1000}, {NS: hostNS}}
	otherChain  = []proc.Ancestor{{NS: otherNS}, {NS: hostNS}}

	fileStat = unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 100000, Gid: 100000}
)

func mayWrite(v *View, c access.Caller, vpath string, st unix.Stat_t) error {
	return v.policy.MayWrite(access.Known(c, proc.Thread{}), v.target(vpath, &st))
}

func TestWriteRules(t *testing.T) {
	v, _, _ := newView(t, Config{Policy: access.NewPolicy(ownerChain), Delegate: []string{"memory.oom.group"}})
	cases := []struct {
		name   string
		caller access.Caller
		path   string
		st     unix.Stat_t
		rule   access.Rule // "" for allowed
	}{
		{"host root, child file", access.Caller{UserNS: hostChain, CapEff: admin}, "a/memory.max", fileStat, ""},
		{"host root, root resource file", access.Caller{UserNS: hostChain, CapEff: admin}, "memory.max", fileStat, ""},
		{"owner root, child file", access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "a/memory.max", fileStat, ""},
		{"owner root, root cgroup.procs", access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "cgroup.procs", fileStat, ""},
		{"owner root, root delegate file", access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "memory.oom.group", fileStat, ""},
		{"owner root, root memory.max", access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "memory.max", fileStat, access.RuleRootLocked},
		{"owner root, root cgroup.freeze", access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "cgroup.freeze", fileStat, access.RuleRootLocked},
		{"creator of the owner namespace", access.Caller{UserNS: hostChain, Uid: 1000}, "a/memory.max", fileStat, ""},
		{"owner user, not the file owner", access.Caller{UserNS: ownerChain, Uid: 101000}, "a/memory.max", fileStat, access.RuleMode},
		{"owner user owning the file", access.Caller{UserNS: ownerChain, Uid: 101000}, "a/memory.max",
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 101000}, ""},
		{"nested namespace root", access.Caller{UserNS: nestedChain, CapEff: admin, Uid: 100000}, "a/memory.max",
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 0}, access.RuleMode},
		{"root of another namespace", access.Caller{UserNS: otherChain, CapEff: admin}, "a/memory.max", fileStat, access.RuleOutsider},
		{"host user", access.Caller{UserNS: hostChain, Uid: 1001}, "a/memory.max", fileStat, access.RuleOutsider},
	}
	for _, c := range cases {
		checkRule(t, c.name, mayWrite(v, c.caller, c.path, c.st), c.rule)
	}
}

func TestV1Rules(t *testing.T) {
	v, _, _ := newView(t, Config{Policy: access.NewPolicy(ownerChain), V1: true})
	root := access.Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}
	host := access.Caller{UserNS: hostChain, CapEff: admin}
	for _, c := range []struct {
		name   string
		caller access.Caller
		path   string
		rule   access.Rule
	}{
		{"release_agent at the root", root, "release_agent", access.RuleV1ReleaseAgent},
		{"notify_on_release below", root, "a/notify_on_release", access.RuleV1ReleaseAgent},
		{"devices.allow below", root, "a/devices.allow", access.RuleV1DevicesAllow},
		{"devices.allow at the root", root, "devices.allow", access.RuleRootLocked},
		{"devices.deny below", root, "a/devices.deny", ""},
		{"memory.limit_in_bytes at the root", root, "memory.limit_in_bytes", access.RuleRootLocked},
		{"freezer.state at the root", root, "freezer.state", access.RuleRootLocked},
		{"tasks at the root", root, "tasks", ""},
		{"cgroup.procs at the root", root, "cgroup.procs", ""},
		{"memory.limit_in_bytes below", root, "a/memory.limit_in_bytes", ""},
		{"host root, release_agent", host, "release_agent", ""},
		// Open for writing; each write is judged (events.go).
		{"cgroup.event_control below", root, "a/cgroup.event_control", ""},
		{"cgroup.event_control at the root", root, "cgroup.event_control", ""},
	} {
		checkRule(t, c.name, mayWrite(v, c.caller, c.path, fileStat), c.rule)
	}
}

func checkRule(t *testing.T, name string, err error, rule access.Rule) {
	t.Helper()
	if rule == "" {
		if err != nil {
			t.Errorf("%s: %v, want allowed", name, err)
		}
		return
	}
	var r *access.Refusal
	if !errors.As(err, &r) || r.Rule != rule {
		t.Errorf("%s: %v, want refusal by %s", name, err, rule)
		return
	}
	want := map[access.Rule]error{access.RuleOutsider: unix.EACCES, access.RuleMode: unix.EACCES, access.RuleRootLocked: unix.EPERM,
		access.RuleNotOwner: unix.EPERM, access.RuleV1ReleaseAgent: unix.EPERM, access.RuleV1DevicesAllow: unix.EPERM}[rule]
	if !errors.Is(err, want) {
		t.Errorf("%s: errno %v, want %v", name, r.Errno, want)
	}
}
