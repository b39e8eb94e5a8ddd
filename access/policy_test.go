package access

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

var (
	hostNS  = NS{Dev: 4, Ino: 4026531837}
	ownerNS = NS{Dev: 4, Ino: 4026532001}
	otherNS = NS{Dev: 4, Ino: 4026532002}
	admin   = uint64(1) << capSysAdmin
)

func TestMayChange(t *testing.T) {
	p := NewPolicy(ownerNS, hostNS)
	cases := []struct {
		name   string
		caller Caller
		want   error
	}{
		{"host root", Caller{UserNS: hostNS, CapEff: admin}, nil},
		{"owner root", Caller{UserNS: ownerNS, CapEff: admin}, nil},
		{"owner root without the capability", Caller{UserNS: ownerNS, Uid: 100000}, unix.EACCES},
		{"host user", Caller{UserNS: hostNS, Uid: 1000}, unix.EACCES},
		{"root of another namespace", Caller{UserNS: otherNS, CapEff: admin}, unix.EACCES},
	}
	for _, c := range cases {
		err := p.MayChange(c.caller)
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: MayChange = %v, want nil", c.name, err)
			}
			continue
		}
		var r *Refusal
		if !errors.As(err, &r) || r.Rule != RuleWriteNeedsAdmin || !errors.Is(err, c.want) {
			t.Errorf("%s: MayChange = %v, want a %s refusal with %v", c.name, err, RuleWriteNeedsAdmin, c.want)
		}
	}
	if err := p.MayChangeAttr(Caller{UserNS: hostNS, Uid: 1000}); !errors.Is(err, unix.EPERM) {
		t.Errorf("MayChangeAttr by a host user = %v, want EPERM", err)
	}
}

func TestMayRead(t *testing.T) {
	p := NewPolicy(hostNS, hostNS)
	user := Caller{UserNS: hostNS, Uid: 1000, Gid: 1000}
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
		err := p.MayRead(&c.st, func() (Caller, error) { asked = true; return user, nil })
		if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s: MayRead = %v, want %v", c.name, err, c.want)
		}
		if c.st.Mode&0o444 == 0o444 && asked {
			t.Errorf("%s: identified the caller for a world-readable file", c.name)
		}
	}
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
	self, err := NamespaceOf("/proc", os.Getpid(), "user")
	if err != nil {
		t.Fatal(err)
	}
	if c.Uid != uint32(os.Geteuid()) || c.UserNS != self {
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
