package users

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const policyText = `# cgfs users
*        memory=2G pids=500 containers=4
@devs    memory=4G cpus=2
alice    containers=16   # alice's own
1002     refuse
`

func TestPolicyPrecedence(t *testing.T) {
	f, err := Parse(strings.NewReader(policyText))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		uid    int
		groups []string
		want   Policy
	}{
		{"bob", 1001, nil, func() Policy { p := Defaults; p.Memory, p.Pids, p.Containers = 2<<30, 500, 4; return p }()},
		{"carol", 1003, []string{"devs"}, func() Policy { p := Defaults; p.Memory, p.Pids, p.Containers, p.CPUs = 4<<30, 500, 4, 2; return p }()},
		{"alice", 1000, []string{"devs"}, func() Policy {
			p := Defaults
			p.Memory, p.Pids, p.Containers, p.CPUs = 4<<30, 500, 16, 2
			return p
		}()},
		{"mallory", 1002, nil, func() Policy {
			p := Defaults
			p.Memory, p.Pids, p.Containers, p.Refused = 2<<30, 500, 4, true
			return p
		}()},
	} {
		if got := f.For(c.name, c.uid, c.groups); got != c.want {
			t.Errorf("For(%s) = %+v, want %+v", c.name, got, c.want)
		}
	}
	var none *File
	if got := none.For("x", 5, nil); got != Defaults {
		t.Errorf("no file: %+v, want the defaults", got)
	}
}

func TestPolicyParseErrors(t *testing.T) {
	for _, text := range []string{"* memory", "* memory=lots", "* pids=-1", "* cpus=NaN", "* cpus=Inf", "bob color=red", "* containers=1e3"} {
		if _, err := Parse(strings.NewReader(text)); err == nil {
			t.Errorf("Parse(%q) took it", text)
		}
	}
}

// TestLoadOnlyRootsFile: a policy file anyone but root may write is
// refused; a missing one gives the defaults.
func TestLoadOnlyRootsFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "users.conf")
	if f, err := Load(p); err != nil || f != nil {
		t.Errorf("Load of a missing file: %v, %v; want none, no error", f, err)
	}
	if err := os.WriteFile(p, []byte(policyText), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil {
		t.Error("Load took a file everyone may write")
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if os.Getuid() != 0 {
		if err == nil {
			t.Error("Load took a file that is not root's")
		}
		return
	}
	if err != nil || f.For("alice", 1000, nil).Containers != 16 {
		t.Errorf("Load: %v", err)
	}
}

func TestSubIDs(t *testing.T) {
	text := "alice:100000:65536\n1000:300000:10\nbob:200000:65536\nbad line\nalice:x:1\n"
	got, err := parseSubIDs(strings.NewReader(text), Who{Uid: 1000, Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (Range{100000, 65536}) || got[1] != (Range{300000, 10}) {
		t.Errorf("alice's ranges %v", got)
	}
	for _, c := range []struct {
		start, count int64
		want         bool
	}{
		{1000, 1, true}, {100000, 65536, true}, {100001, 10, true}, {300000, 10, true},
		{0, 1, false}, {1001, 1, false}, {1000, 2, false}, {99999, 2, false}, {100000, 65537, false}, {200000, 1, false},
	} {
		if Allowed(1000, got, c.start, c.count) != c.want {
			t.Errorf("Allowed(%d, %d) = %v, want %v", c.start, c.count, !c.want, c.want)
		}
	}
}

// FuzzPolicy: a policy file never panics the parser, and what it takes
// gives every user a policy of no negative number.
func FuzzPolicy(f *testing.F) {
	f.Add(policyText)
	f.Add("* memory=1G pids=512 cpus=0.5 containers=4 descendants=10 v1-descendants=10 open-files=1 nested-views=1 relay-watches=1 pid-helpers=1 in-flight=1\n@g refuse\n")
	f.Fuzz(func(t *testing.T, text string) {
		pf, err := Parse(strings.NewReader(text))
		if err != nil {
			return
		}
		p := pf.For("alice", 1000, []string{"devs", "g"})
		if p.Memory < 0 || p.Pids < 0 || p.CPUs < 0 || p.Containers < 0 || p.Descendants < 0 || p.OpenFiles < 0 {
			t.Fatalf("For of %q = %+v", text, p)
		}
	})
}

// FuzzSubIDs: a subordinate id file never panics the parser, and every
// range it takes is inside the 32-bit ids.
func FuzzSubIDs(f *testing.F) {
	f.Add("alice:100000:65536\n1000:300000:10\n")
	f.Add("alice:4294967294:1\nalice:-1:5\n")
	f.Fuzz(func(t *testing.T, text string) {
		rs, err := parseSubIDs(strings.NewReader(text), Who{Uid: 1000, Name: "alice"})
		if err != nil {
			return
		}
		for _, r := range rs {
			if r.Start < 0 || r.Count <= 0 || r.Start+r.Count > 1<<32-1 {
				t.Fatalf("parseSubIDs(%q) took %+v", text, r)
			}
		}
	})
}

// TestSubordinates: a uid inside a user's /etc/subuid range is that
// user's (by uid, name or, for an owner no host user has, the range),
// never its own owner's; the file is read again when it changes.
func TestSubordinates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(path, []byte("root:100000:65536\n1000:300000:10\nno-such-user-here:500000:5\n1001:1001:1\nbad\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewSubordinates(path)
	for _, c := range []struct {
		uid   int
		owner int
		name  string
		ok    bool
	}{
		{100000, 0, "root", true}, {165535, 0, "root", true}, {300009, 1000, "1000", true},
		{500004, 500000, "no-such-user-here", true},
		{99999, 0, "", false}, {165536, 0, "", false}, {300010, 0, "", false}, {1000, 0, "", false},
		{1001, 0, "", false}, // its own id in its range
		{0, 0, "", false},
	} {
		owner, name, ok, err := s.Owner(c.uid)
		if err != nil || owner != c.owner || name != c.name || ok != c.ok {
			t.Errorf("Owner(%d) = %d %q %v %v, want %d %q %v", c.uid, owner, name, ok, err, c.owner, c.name, c.ok)
		}
	}
	if err := os.WriteFile(path, []byte("1000:300000:20\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := s.Owner(100000); ok {
		t.Error("a range gone from the file still counts")
	}
	if owner, _, ok, _ := s.Owner(300015); !ok || owner != 1000 {
		t.Error("a range new in the file does not count")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := s.Owner(300015); ok || err != nil {
		t.Errorf("no file: %v %v, want no owner", ok, err)
	}
	if _, _, _, err := NewSubordinates(t.TempDir()).Owner(1); err == nil {
		t.Error("a file that cannot be read gives no error")
	}
}
