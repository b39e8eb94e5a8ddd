package access

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/translate"
)

var (
	hostNS  = NS{Dev: 4, Ino: 4026531837}
	ownerNS = NS{Dev: 4, Ino: 4026532001}
	otherNS = NS{Dev: 4, Ino: 4026532002}
	nestNS  = NS{Dev: 4, Ino: 4026532003}
	admin   = uint64(1) << capSysAdmin

	hostChain   = []UserNSLink{{NS: hostNS}}
	ownerChain  = []UserNSLink{{NS: ownerNS, OwnerUID: 1000}, {NS: hostNS}}
	nestedChain = []UserNSLink{{NS: nestNS, OwnerUID: 100000}, {NS: ownerNS, OwnerUID: 1000}, {NS: hostNS}}
	otherChain  = []UserNSLink{{NS: otherNS}, {NS: hostNS}}
)

var (
	fileStat = unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 100000, Gid: 100000}
	dirStat  = unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Uid: 100000, Gid: 100000}
)

func TestMayWriteFile(t *testing.T) {
	p := NewPolicy(ownerChain, []string{"memory.oom.group"})
	cases := []struct {
		name   string
		caller Caller
		path   string
		st     unix.Stat_t
		rule   Rule // "" for allowed
	}{
		{"host root, child file", Caller{UserNS: hostChain, CapEff: admin}, "a/memory.max", fileStat, ""},
		{"host root, root resource file", Caller{UserNS: hostChain, CapEff: admin}, "memory.max", fileStat, ""},
		{"owner root, child file", Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "a/memory.max", fileStat, ""},
		{"owner root, root cgroup.procs", Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "cgroup.procs", fileStat, ""},
		{"owner root, root delegate file", Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "memory.oom.group", fileStat, ""},
		{"owner root, root memory.max", Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "memory.max", fileStat, RuleRootLocked},
		{"owner root, root cgroup.freeze", Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, "cgroup.freeze", fileStat, RuleRootLocked},
		{"creator of the owner namespace", Caller{UserNS: hostChain, Uid: 1000}, "a/memory.max", fileStat, ""},
		{"owner user, not the file owner", Caller{UserNS: ownerChain, Uid: 101000}, "a/memory.max", fileStat, RuleMode},
		{"owner user owning the file", Caller{UserNS: ownerChain, Uid: 101000}, "a/memory.max",
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 101000}, ""},
		{"nested namespace root", Caller{UserNS: nestedChain, CapEff: admin, Uid: 100000}, "a/memory.max",
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 0}, RuleMode},
		{"root of another namespace", Caller{UserNS: otherChain, CapEff: admin}, "a/memory.max", fileStat, RuleOutsider},
		{"host user", Caller{UserNS: hostChain, Uid: 1001}, "a/memory.max", fileStat, RuleOutsider},
	}
	for _, c := range cases {
		err := p.MayWriteFile(c.caller, c.path, &c.st)
		checkRule(t, c.name, err, c.rule)
	}
}

func TestV1Rules(t *testing.T) {
	p := NewPolicyV1(ownerChain)
	root := Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}
	host := Caller{UserNS: hostChain, CapEff: admin}
	for _, c := range []struct {
		name   string
		caller Caller
		path   string
		rule   Rule
	}{
		{"release_agent at the root", root, "release_agent", RuleV1ReleaseAgent},
		{"notify_on_release below", root, "a/notify_on_release", RuleV1ReleaseAgent},
		{"devices.allow below", root, "a/devices.allow", RuleV1DevicesAllow},
		{"devices.allow at the root", root, "devices.allow", RuleRootLocked},
		{"devices.deny below", root, "a/devices.deny", ""},
		{"memory.limit_in_bytes at the root", root, "memory.limit_in_bytes", RuleRootLocked},
		{"freezer.state at the root", root, "freezer.state", RuleRootLocked},
		{"tasks at the root", root, "tasks", ""},
		{"cgroup.procs at the root", root, "cgroup.procs", ""},
		{"memory.limit_in_bytes below", root, "a/memory.limit_in_bytes", ""},
		{"host root, release_agent", host, "release_agent", ""},
		{"cgroup.event_control below", root, "a/cgroup.event_control", RuleV1EventControl},
		{"host root, cgroup.event_control", host, "a/cgroup.event_control", RuleV1EventControl},
	} {
		checkRule(t, c.name, p.MayWriteFile(c.caller, c.path, &fileStat), c.rule)
	}
}

func checkRule(t *testing.T, name string, err error, rule Rule) {
	t.Helper()
	if rule == "" {
		if err != nil {
			t.Errorf("%s: %v, want allowed", name, err)
		}
		return
	}
	var r *Refusal
	if !errors.As(err, &r) || r.Rule != rule {
		t.Errorf("%s: %v, want refusal by %s", name, err, rule)
		return
	}
	want := map[Rule]error{RuleOutsider: unix.EACCES, RuleMode: unix.EACCES, RuleRootLocked: unix.EPERM, RuleNotOwner: unix.EPERM,
		RuleV1ReleaseAgent: unix.EPERM, RuleV1DevicesAllow: unix.EPERM, RuleV1EventControl: unix.EPERM}[rule]
	if !errors.Is(err, want) {
		t.Errorf("%s: errno %v, want %v", name, r.Errno, want)
	}
}

func TestAttributes(t *testing.T) {
	p := NewPolicy(ownerChain, nil)
	root := Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}
	user := Caller{UserNS: ownerChain, Uid: 101000}
	owned := unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Uid: 101000}
	checkRule(t, "chown of a child cgroup by owner root", p.MayChown(root, "sub", &dirStat), "")
	checkRule(t, "chown of the view root", p.MayChown(root, "", &dirStat), RuleRootLocked)
	checkRule(t, "chown of a root file", p.MayChown(root, "cgroup.procs", &fileStat), RuleRootLocked)
	checkRule(t, "chmod of a root file", p.MayChmod(root, "cgroup.procs", &fileStat), RuleRootLocked)
	checkRule(t, "chmod by the file owner", p.MayChmod(user, "sub", &owned), "")
	checkRule(t, "chmod by another user", p.MayChmod(user, "sub", &dirStat), RuleNotOwner)
	checkRule(t, "chown by a user", p.MayChown(user, "sub", &owned), RuleNotOwner)
	checkRule(t, "host root chowns the view root", p.MayChown(Caller{UserNS: hostChain, CapEff: admin}, "", &dirStat), "")
	checkRule(t, "mkdir by a user in a root-owned dir", p.MayChangeEntries(user, &dirStat), RuleMode)
	checkRule(t, "mkdir by a user in a delegated dir", p.MayChangeEntries(user, &owned), "")
}

func TestMayRead(t *testing.T) {
	hostOnly := NewPolicy(hostChain, nil)
	user := Caller{UserNS: hostChain, Uid: 1000, Gid: 1000}
	cases := []struct {
		name string
		st   unix.Stat_t
		want error
	}{
		{"world readable", unix.Stat_t{Mode: unix.S_IFREG | 0o644}, nil},
		{"write only", unix.Stat_t{Mode: unix.S_IFREG | 0o200}, unix.EACCES},
		{"owner readable, caller owns", unix.Stat_t{Mode: unix.S_IFREG | 0o600, Uid: 1000}, nil},
		{"group readable, caller in group", unix.Stat_t{Mode: unix.S_IFREG | 0o640, Gid: 1000}, nil},
		{"owner bits decide for the owner", unix.Stat_t{Mode: unix.S_IFREG | 0o044, Uid: 1000}, unix.EACCES},
	}
	for _, c := range cases {
		asked := false
		err := hostOnly.MayRead(&c.st, func() (Caller, error) { asked = true; return user, nil })
		if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s: MayRead = %v, want %v", c.name, err, c.want)
		}
		if c.st.Mode&0o444 == 0o444 && asked {
			t.Errorf("%s: identified the caller for a world-readable file", c.name)
		}
	}
	// With a container owner, outsiders may not even read.
	p := NewPolicy(ownerChain, nil)
	other := Caller{UserNS: otherChain, CapEff: admin}
	err := p.MayRead(&fileStat, func() (Caller, error) { return other, nil })
	checkRule(t, "read by another container", err, RuleOutsider)
}

func TestIdentifySelf(t *testing.T) {
	id, err := NewIdentifier("/proc")
	if err != nil {
		t.Fatal(err)
	}
	c, err := id.Identify(unix.Gettid(), uint32(os.Geteuid()), uint32(os.Getegid()))
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := id.ThreadGroup(c.Tid); err != nil || pid != os.Getpid() {
		t.Errorf("ThreadGroup(%d) = %d, %v; want %d", c.Tid, pid, err, os.Getpid())
	}
	self, err := translate.NamespaceOf("/proc", os.Getpid(), "user")
	if err != nil {
		t.Fatal(err)
	}
	if c.Uid != uint32(os.Geteuid()) || len(c.UserNS) == 0 || c.UserNS[0].NS != self {
		t.Errorf("Identify(self) = %+v; want uid %d userns %v", c, os.Geteuid(), self)
	}
	if c.HasCapSysAdmin() != (os.Geteuid() == 0) {
		t.Errorf("HasCapSysAdmin = %v for euid %d", c.HasCapSysAdmin(), os.Geteuid())
	}
	if _, err := id.Identify(1<<30, 0, 0); !errors.Is(err, ErrGone) {
		t.Errorf("Identify(no such tid) = %v, want ErrGone", err)
	}
}

func BenchmarkIdentify(b *testing.B) {
	id, err := NewIdentifier("/proc")
	if err != nil {
		b.Fatal(err)
	}
	tid := unix.Gettid()
	for b.Loop() {
		if _, err := id.Identify(tid, 0, 0); err != nil {
			b.Fatal(err)
		}
	}
}
