package access

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access/proc"
)

var (
	hostNS  = proc.NS{Dev: 4, Ino: 4026531837}
	ownerNS = proc.NS{Dev: 4, Ino: 4026532001}
	otherNS = proc.NS{Dev: 4, Ino: 4026532002}
	admin   = uint64(1) << capSysAdmin

	hostChain  = []proc.Ancestor{{NS: hostNS}}
	ownerChain = []proc.Ancestor{{NS: ownerNS, OwnerUID: 1000}, {NS: hostNS}}
	otherChain = []proc.Ancestor{{NS: otherNS}, {NS: hostNS}}
)

var (
	fileStat = unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 100000, Gid: 100000}
	dirStat  = unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Uid: 100000, Gid: 100000}
)

func known(c Caller) *Request { return Known(c, proc.Thread{}) }

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
		RuleCommonAncestor: unix.EACCES}[rule]
	if !errors.Is(err, want) {
		t.Errorf("%s: errno %v, want %v", name, r.Errno, want)
	}
}

func TestAttributes(t *testing.T) {
	p := NewPolicy(ownerChain)
	root := known(Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000})
	user := known(Caller{UserNS: ownerChain, Uid: 101000})
	owned := unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Uid: 101000}
	checkRule(t, "chown of a child cgroup by owner root", p.MayChown(root, &dirStat, false), "")
	checkRule(t, "chown of the view root", p.MayChown(root, &dirStat, true), RuleRootLocked)
	checkRule(t, "chown of a root file", p.MayChown(root, &fileStat, true), RuleRootLocked)
	checkRule(t, "chmod of a root file", p.MayChmod(root, &fileStat, true), RuleRootLocked)
	checkRule(t, "chmod by the file owner", p.MayChmod(user, &owned, false), "")
	checkRule(t, "chmod by another user", p.MayChmod(user, &dirStat, false), RuleNotOwner)
	checkRule(t, "chown by a user", p.MayChown(user, &owned, false), RuleNotOwner)
	checkRule(t, "host root chowns the view root", p.MayChown(known(Caller{UserNS: hostChain, CapEff: admin}), &dirStat, true), "")
	checkRule(t, "mkdir by a user in a root-owned dir", p.MayChangeEntries(user, &dirStat), RuleMode)
	checkRule(t, "mkdir by a user in a delegated dir", p.MayChangeEntries(user, &owned), "")
}

func TestMayMigrate(t *testing.T) {
	p := NewPolicy(ownerChain)
	root := Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}
	user := Caller{UserNS: ownerChain, Uid: 101000}
	owned := unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 101000}
	checkRule(t, "owner root moves anywhere", p.MayMigrate(root, &fileStat), "")
	checkRule(t, "user owning the common ancestor's cgroup.procs", p.MayMigrate(user, &owned), "")
	checkRule(t, "user across a root-owned ancestor", p.MayMigrate(user, &fileStat), RuleCommonAncestor)
}

func TestMayRead(t *testing.T) {
	hostOnly := NewPolicy(hostChain)
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
		r := known(user)
		err := hostOnly.MayRead(r, &c.st)
		if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s: MayRead = %v, want %v", c.name, err, c.want)
		}
		if c.st.Mode&0o444 == 0o444 && r.asked {
			t.Errorf("%s: identified the caller for a world-readable file", c.name)
		}
	}
	// With a container owner, outsiders may not even read.
	p := NewPolicy(ownerChain)
	err := p.MayRead(known(Caller{UserNS: otherChain, CapEff: admin}), &fileStat)
	checkRule(t, "read by another container", err, RuleOutsider)
}

func openProcs(t testing.TB) *proc.Procs {
	t.Helper()
	p, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestIdentifySelf(t *testing.T) {
	id := NewIdentifier(openProcs(t))
	c, err := id.Identify(unix.Gettid(), uint32(os.Geteuid()), uint32(os.Getegid()))
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := id.ThreadGroup(c.Tid); err != nil || pid != os.Getpid() {
		t.Errorf("ThreadGroup(%d) = %d, %v; want %d", c.Tid, pid, err, os.Getpid())
	}
	var self unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &self); err != nil {
		t.Fatal(err)
	}
	if c.Uid != uint32(os.Geteuid()) || len(c.UserNS) == 0 || c.UserNS[0].NS != (proc.NS{Dev: self.Dev, Ino: self.Ino}) {
		t.Errorf("Identify(self) = %+v; want uid %d userns %d", c, os.Geteuid(), self.Ino)
	}
	if c.HasCapSysAdmin() != (os.Geteuid() == 0) {
		t.Errorf("HasCapSysAdmin = %v for euid %d", c.HasCapSysAdmin(), os.Geteuid())
	}
	if _, err := id.Identify(1<<30, 0, 0); !errors.Is(err, ErrGone) {
		t.Errorf("Identify(no such tid) = %v, want ErrGone", err)
	}
}

// TestRequestIdentifiesOnce: however many decisions ask, one request
// pins and identifies its caller once, and its thread once.
func TestRequestIdentifiesOnce(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	id := NewIdentifier(openProcs(t))
	r := id.Request(unix.Gettid(), uint32(os.Geteuid()), uint32(os.Getegid()))
	defer r.Done()
	if _, ok := r.Identified(); ok {
		t.Fatal("a new request is identified before anything asked")
	}
	for range 3 {
		if _, err := r.Caller(); err != nil {
			t.Fatal(err)
		}
		th, err := r.Thread()
		if err != nil {
			t.Fatal(err)
		}
		if th.Tgid != os.Getpid() || th.Tid != unix.Gettid() {
			t.Errorf("Thread() = %+v, want tid %d tgid %d", th, unix.Gettid(), os.Getpid())
		}
	}
	if got := id.Identifications(); got != 1 {
		t.Errorf("three decisions identified the caller %d times, want 1", got)
	}
}

func BenchmarkIdentify(b *testing.B) {
	id := NewIdentifier(openProcs(b))
	tid := unix.Gettid()
	for b.Loop() {
		if _, err := id.Identify(tid, 0, 0); err != nil {
			b.Fatal(err)
		}
	}
}
