package access

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
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
		RuleCommonAncestor: unix.EACCES, RuleV1TaskOwner: unix.EACCES}[rule]
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

// nestedMap maps one host uid and gid, 101000, as unshare -Ur by the
// container's uid 1000 does.
type nestedMap struct{}

func (nestedMap) UIDMapped(uid uint32) bool { return uid == 101000 }
func (nestedMap) GIDMapped(gid uint32) bool { return gid == 101000 }

// TestNestedPolicy: a view owned by a user namespace the container's
// uid 1000 made (its cgroup namespace's owner) gives its root no more
// than the kernel's cgroupfs would: CAP_SYS_ADMIN there overrides the
// mode only of files whose ids it maps; the container's tree (shown as
// the container's root's) is what its mode gives uid 1000; what the
// container delegated to uid 1000 stays writable; host root keeps all.
func TestNestedPolicy(t *testing.T) {
	nestedNS := proc.NS{Dev: 4, Ino: 4026532010}
	nestedChain := append([]proc.Ancestor{{NS: nestedNS, OwnerUID: 101000}}, ownerChain...)
	p := NewNestedPolicy(nestedChain, nestedMap{})
	nestedRoot := Caller{UserNS: nestedChain, CapEff: admin, Uid: 101000, Gid: 101000}
	delegated := unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Uid: 101000, Gid: 101000}
	delegatedFile := unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 101000, Gid: 101000}
	containerRoot := Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}
	hostRoot := Caller{UserNS: hostChain, CapEff: admin}
	for _, c := range []struct {
		name string
		err  error
		rule Rule
	}{
		{"mkdir in the container root's cgroup", p.MayChangeEntries(known(nestedRoot), &dirStat), RuleMode},
		{"a write to the container root's file", p.MayWrite(known(nestedRoot), File{Attr: &fileStat}), RuleMode},
		{"a move across the container root's cgroup", p.MayMigrate(nestedRoot, &fileStat), RuleCommonAncestor},
		{"chown of the container root's cgroup", p.MayChown(known(nestedRoot), &dirStat, false), RuleNotOwner},
		{"chmod of the container root's cgroup", p.MayChmod(known(nestedRoot), &dirStat, false), RuleNotOwner},
		{"moving a v1 task of the container's root", p.MayMoveV1Task(nestedRoot, 100000, 100000), RuleV1TaskOwner},
		{"mkdir in a cgroup delegated to uid 1000", p.MayChangeEntries(known(nestedRoot), &delegated), ""},
		{"a write to a delegated file", p.MayWrite(known(nestedRoot), File{Attr: &delegatedFile}), ""},
		{"chown of a delegated cgroup", p.MayChown(known(nestedRoot), &delegated, false), ""},
		{"a move below a delegated cgroup", p.MayMigrate(nestedRoot, &delegatedFile), ""},
		{"the container's root, privileged over the nested namespace", p.MayChangeEntries(known(containerRoot), &dirStat), ""},
		{"host root", p.MayWrite(known(hostRoot), File{Attr: &fileStat}), ""},
		{"the view root's limits, even to its root", p.MayWrite(known(nestedRoot), File{Attr: &delegatedFile, AtRoot: true}), RuleRootLocked},
	} {
		checkRule(t, c.name, c.err, c.rule)
	}
}

// TestCapableOver: CAP_SYS_ADMIN over a namespace, as a mount needs it
// of the owners of the caller's mount and cgroup namespaces.
func TestCapableOver(t *testing.T) {
	nestedNS := proc.NS{Dev: 4, Ino: 4026532010}
	nestedChain := append([]proc.Ancestor{{NS: nestedNS, OwnerUID: 101000}}, ownerChain...)
	for _, c := range []struct {
		name   string
		caller Caller
		over   []proc.Ancestor
		want   bool
	}{
		{"uid 1000's own namespace over the container's", Caller{UserNS: nestedChain, CapEff: admin, Uid: 101000}, ownerChain, false},
		{"uid 1000's own namespace over itself", Caller{UserNS: nestedChain, CapEff: admin, Uid: 101000}, nestedChain, true},
		{"the container's root over its namespace", Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, ownerChain, true},
		{"the container's root without the capability", Caller{UserNS: ownerChain, Uid: 100000}, ownerChain, false},
		{"the container's root over a namespace below", Caller{UserNS: ownerChain, CapEff: admin, Uid: 100000}, nestedChain, true},
		{"uid 1000, the creator, from the parent", Caller{UserNS: ownerChain, Uid: 101000}, nestedChain, true},
		{"another container's root", Caller{UserNS: otherChain, CapEff: admin}, ownerChain, false},
		{"host root", Caller{UserNS: hostChain, CapEff: admin}, nestedChain, true},
	} {
		if got := CapableOver(c.caller, c.over); got != c.want {
			t.Errorf("%s: CapableOver = %v, want %v", c.name, got, c.want)
		}
	}
}
