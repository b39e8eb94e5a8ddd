package translate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/test/fake"
	"github.com/cgfs/cgfs/translate/host"
)

func openProcs(t testing.TB) *proc.Procs {
	t.Helper()
	p, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// self is the test process as a caller: host root in the server's
// namespaces when the tests run as root.
func self(t testing.TB, procs *proc.Procs) *access.Request {
	t.Helper()
	id := access.NewIdentifier(procs)
	defer id.Close() // what it remembers holds descriptors
	c, err := id.Identify(unix.Gettid(), uint32(os.Geteuid()), uint32(os.Getegid()))
	if err != nil {
		t.Fatal(err)
	}
	th, err := procs.Thread(unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	return access.Known(c, th)
}

// newView serves a fake hierarchy (root, a, a/b; a has a hidden leaf
// with counters of its own) to its owner, the test process.
func newView(t testing.TB, cfg Config) (*View, string, *access.Request) {
	t.Helper()
	dir := fake.Hierarchy(t, "", "a", "a/b")
	fake.Cgroup(t, filepath.Join(dir, "a", LeafName), fake.Files)
	fake.Write(t, filepath.Join(dir, "a/memory.events.local"), "low 0\nhigh 2\nmax 1\noom 0\noom_kill 0\noom_group_kill 0\n")
	fake.Write(t, filepath.Join(dir, "a", LeafName, "memory.events.local"), "low 0\nhigh 1\nmax 0\noom 1\noom_kill 1\noom_group_kill 0\n")
	// The kernel's counts: the root has a, a/b and a's leaf below it.
	fake.Write(t, filepath.Join(dir, "cgroup.stat"), "nr_descendants 3\nnr_dying_descendants 0\n")
	fake.Write(t, filepath.Join(dir, "a/cgroup.stat"), "nr_descendants 2\nnr_dying_descendants 0\n")
	h, err := host.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	procs := openProcs(t)
	r := self(t, procs)
	if cfg.Procs == nil {
		cfg.Procs = procs
	}
	if cfg.Policy == nil {
		c, _ := r.Caller()
		cfg.Policy = access.NewPolicy(c.UserNS[len(c.UserNS)-1:])
	}
	v, err := New(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v, dir, r
}

func read(t testing.TB, v *View, r *access.Request, vpath string) string {
	t.Helper()
	f, err := v.Open(r, vpath, unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := f.Read(make([]byte, 1<<16), 0)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func write(v *View, r *access.Request, vpath, data string) error {
	f, err := v.Open(r, vpath, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(r, []byte(data))
	return err
}

// ruleOf is the rule of a refusal, "" for other errors.
func ruleOf(err error) access.Rule {
	var ref *access.Refusal
	if errors.As(err, &ref) {
		return ref.Rule
	}
	return ""
}

func TestLeafIsInvisible(t *testing.T) {
	v, _, r := newView(t, Config{})
	entries, err := v.List("a")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name == LeafName {
			t.Errorf("List(a) shows the hidden leaf")
		}
	}
	// a/b has no leaf: its leaf path does not exist.
	if _, err := v.Lookup(r, "a/b", LeafName); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Lookup(a/b, leaf) = %v, want ENOENT", err)
	}
	if _, err := v.Mkdir(r, "", LeafName, 0o755); !errors.Is(err, unix.EINVAL) || ruleOf(err) != RuleReservedName {
		t.Errorf("Mkdir(leaf) = %v, want EINVAL by %s", err, RuleReservedName)
	}
	if err := v.Rmdir(r, "a", LeafName); !errors.Is(err, unix.EPERM) || ruleOf(err) != RuleLeafPath {
		t.Errorf("Rmdir(a, leaf) = %v, want EPERM by %s", err, RuleLeafPath)
	}
	if err := v.Rmdir(r, "a/b", LeafName); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Rmdir(a/b, leaf) = %v, want ENOENT", err)
	}
	if err := v.Rename(r, "a", "b", "a", LeafName, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Rename(a/b, leaf) = %v, want EINVAL", err)
	}
}

// TestLeafPath: the path a process in a's leaf reads in /proc/self/cgroup
// resolves, showing a's files (merged, as a shows them) read-only, and no
// cgroups.
func TestLeafPath(t *testing.T) {
	v, _, r := newView(t, Config{})
	lp := "a/" + LeafName
	a, err := v.Lookup(r, "", "a")
	if err != nil {
		t.Fatal(err)
	}
	st, err := v.Lookup(r, "a", LeafName)
	if err != nil {
		t.Fatalf("Lookup(a, leaf) = %v, want the leaf path", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o222 != 0 || st.Ino == a.Ino {
		t.Errorf("leaf path: mode %o ino %d (a's %d), want a read-only directory of its own inode", st.Mode, st.Ino, a.Ino)
	}
	if got, want := read(t, v, r, lp+"/memory.events.local"), read(t, v, r, "a/memory.events.local"); got != want {
		t.Errorf("%s/memory.events.local = %q, want a's %q", lp, got, want)
	}
	fst, err := v.Lookup(r, lp, "cgroup.freeze")
	if err != nil {
		t.Fatal(err)
	}
	ast, _ := v.Lookup(r, "a", "cgroup.freeze")
	if fst.Ino != ast.Ino+LeafPathIno || fst.Mode&0o222 != 0 {
		t.Errorf("leaf path cgroup.freeze: ino %d mode %o, want %d, read-only", fst.Ino, fst.Mode, ast.Ino+LeafPathIno)
	}
	if got, _ := v.Getattr(r, lp+"/cgroup.freeze", nil); got.Ino != fst.Ino {
		t.Errorf("Getattr ino %d, Lookup ino %d", got.Ino, fst.Ino)
	}
	entries, err := v.List(lp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("List(%s) shows the cgroup %s", lp, e.Name)
		}
	}
	if len(entries) == 0 {
		t.Errorf("List(%s) is empty", lp)
	}
	for _, name := range []string{"b", LeafName} {
		if _, err := v.Lookup(r, lp, name); !errors.Is(err, unix.ENOENT) {
			t.Errorf("Lookup(%s, %s) = %v, want ENOENT", lp, name, err)
		}
	}
	if _, err := v.Lookup(r, "a/b/"+LeafName, "cgroup.freeze"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("a/b has no leaf, but its leaf path resolves: %v", err)
	}
	// Nothing changes through it.
	refused := map[string]error{
		"write cgroup.freeze": write(v, r, lp+"/cgroup.freeze", "1"),
		"write cgroup.procs":  write(v, r, lp+"/cgroup.procs", "0"),
		"rmdir b":             v.Rmdir(r, lp, "b"),
		"rename":              v.Rename(r, lp, "x", "", "y", 0),
	}
	_, refused["mkdir"] = v.Mkdir(r, lp, "x", 0o755)
	mode := uint32(0o777)
	_, refused["chmod"] = v.Setattr(r, lp+"/cgroup.freeze", nil, Attrs{Mode: &mode})
	for op, err := range refused {
		if !errors.Is(err, unix.EPERM) || ruleOf(err) != RuleLeafPath {
			t.Errorf("%s through the leaf path = %v, want EPERM by %s", op, err, RuleLeafPath)
		}
	}
}

func TestLocalFilesMergeTheLeaf(t *testing.T) {
	v, _, r := newView(t, Config{})
	got := read(t, v, r, "a/memory.events.local")
	want := "low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n"
	if got != want {
		t.Errorf("a/memory.events.local = %q, want %q", got, want)
	}
}

func TestStatDoesNotCountLeaves(t *testing.T) {
	v, _, r := newView(t, Config{})
	// The fake root has a and a/b (2) plus a's leaf; the host says 3.
	got := read(t, v, r, "cgroup.stat")
	if want := "nr_descendants 2\nnr_dying_descendants 0\n"; got != want {
		t.Errorf("cgroup.stat = %q, want %q", got, want)
	}
}

func TestLimitsLeaveRoomForLeaves(t *testing.T) {
	v, dir, r := newView(t, Config{})
	if err := write(v, r, "a/cgroup.max.descendants", "1\n"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a/cgroup.max.descendants")); string(b) != "3" {
		t.Errorf("host a/cgroup.max.descendants = %q, want 3", b)
	}
	if got := read(t, v, r, "a/cgroup.max.descendants"); got != "1\n" {
		t.Errorf("view reads %q, want 1", got)
	}
	// a has one visible child (b): a second is over the container's 1.
	if _, err := v.Mkdir(r, "a", "c", 0o755); !errors.Is(err, unix.EAGAIN) || ruleOf(err) != RuleContainerLimit {
		t.Errorf("Mkdir over the limit = %v, want EAGAIN by %s", err, RuleContainerLimit)
	}
	// The kernel answers ERANGE to a negative limit (measured on 6.18).
	if err := write(v, r, "a/cgroup.max.descendants", "-1"); !errors.Is(err, unix.ERANGE) {
		t.Errorf("negative limit = %v, want ERANGE", err)
	}
	if err := write(v, r, "a/cgroup.max.descendants", strings.Repeat("1", 5000)); !errors.Is(err, unix.E2BIG) {
		t.Errorf("a write over a page = %v, want E2BIG", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a/cgroup.max.descendants")); string(b) != "3" {
		t.Errorf("refused writes changed host a/cgroup.max.descendants to %q", b)
	}
	// The view root's limits are the host's, as they are.
	fake.Write(t, filepath.Join(dir, "cgroup.max.depth"), "4\n")
	if got := read(t, v, r, "cgroup.max.depth"); got != "4\n" {
		t.Errorf("root cgroup.max.depth = %q, want the host's 4", got)
	}
}

// TestLimitsUpToIntMaxReadBack: the kernel keeps any limit up to INT_MAX
// (cgroup_max_descendants_write, cgroup_max_depth_write: an int; INT_MAX
// is what "max" stores and reads back as "max"); one whose host value
// (2N+1, N+1) would pass INT_MAX is "max" on the host and reads back as
// written. Written over, it leaves nothing behind.
func TestLimitsUpToIntMaxReadBack(t *testing.T) {
	v, dir, r := newView(t, Config{})
	for _, c := range []struct {
		file, in   string
		host, want string // host text after, what the view reads
	}{
		{"cgroup.max.descendants", "1500000000", "max", "1500000000"},
		{"cgroup.max.descendants", "1073741823", "max", "1073741823"}, // 2N+1 is INT_MAX
		{"cgroup.max.descendants", "1073741822", "2147483645", "1073741822"},
		{"cgroup.max.descendants", "2147483647", "max", "max"},
		{"cgroup.max.descendants", "1500000000", "max", "1500000000"},
		{"cgroup.max.descendants", "max", "max", "max"},
		{"cgroup.max.descendants", "1500000000", "max", "1500000000"},
		{"cgroup.max.descendants", "5", "11", "5"},
		{"cgroup.max.depth", "1500000000", "1500000001", "1500000000"},
		{"cgroup.max.depth", "2147483646", "max", "2147483646"}, // N+1 is INT_MAX
		{"cgroup.max.depth", "2147483645", "2147483646", "2147483645"},
		{"cgroup.max.depth", "2147483647", "max", "max"},
	} {
		vpath := "a/" + c.file
		if err := write(v, r, vpath, c.in); err != nil {
			t.Errorf("write %s %s: %v", c.in, vpath, err)
			continue
		}
		if b, _ := os.ReadFile(filepath.Join(dir, vpath)); strings.TrimSpace(string(b)) != c.host {
			t.Errorf("write %s %s: host %q, want %q", c.in, vpath, b, c.host)
		}
		if got := read(t, v, r, vpath); strings.TrimSpace(got) != c.want {
			t.Errorf("write %s %s reads back %q, want %q", c.in, vpath, got, c.want)
		}
	}
	// Past INT_MAX the kernel answers ERANGE, and nothing changes.
	if err := write(v, r, "a/cgroup.max.descendants", "2147483648"); !errors.Is(err, unix.ERANGE) {
		t.Errorf("write 2147483648 = %v, want ERANGE", err)
	}
	// The host's own "max", once the container wrote a number below it,
	// is max.
	fake.Write(t, filepath.Join(dir, "a/cgroup.max.descendants"), "max\n")
	if got := read(t, v, r, "a/cgroup.max.descendants"); strings.TrimSpace(got) != "max" {
		t.Errorf("the host's max reads %q, want max", got)
	}
}

// TestLimitValuesAsTheKernelParses: what cgroup_max_descendants_write
// answers on Linux 6.18 (measured natively).
func TestLimitValuesAsTheKernelParses(t *testing.T) {
	v, dir, r := newView(t, Config{})
	for _, c := range []struct {
		in   string
		host string // host text after, "" when refused
		want error
	}{
		{"0x10", "33", nil},
		{"010", "17", nil},
		{" 5 \n", "11", nil},
		{"+3", "7", nil},
		{"max", "max", nil},
		{"-1", "", unix.ERANGE},
		{"99999999999", "", unix.ERANGE},
		{"1 2", "", unix.EINVAL},
		{"abc", "", unix.EINVAL},
		{"0b1", "", unix.EINVAL},
	} {
		fake.Write(t, filepath.Join(dir, "a/cgroup.max.descendants"), "before")
		err := write(v, r, "a/cgroup.max.descendants", c.in)
		b, _ := os.ReadFile(filepath.Join(dir, "a/cgroup.max.descendants"))
		if c.want != nil {
			if !errors.Is(err, c.want) || ruleOf(err) != RuleBadValue || string(b) != "before" {
				t.Errorf("write %q = %v, host %q; want %v by %s, host unchanged", c.in, err, b, c.want, RuleBadValue)
			}
			continue
		}
		if err != nil || strings.TrimSpace(string(b)) != c.host {
			t.Errorf("write %q = %v, host %q; want host %q", c.in, err, b, c.host)
		}
	}
}

func TestViewRefusesOddNamesWithoutTouchingHost(t *testing.T) {
	v, dir, r := newView(t, Config{})
	before, _ := os.ReadDir(dir)
	for _, name := range []string{"..", "a\nb", strings.Repeat("y", 300), "x/y"} {
		if _, err := v.Mkdir(r, "", name, 0o755); err == nil || ruleOf(err) != RuleBadName {
			t.Errorf("Mkdir(%q) = %v, want a refusal by %s", name, err, RuleBadName)
		}
		if _, err := v.Lookup(r, "", name); err == nil {
			t.Errorf("Lookup(%q) succeeded", name)
		}
	}
	after, _ := os.ReadDir(dir)
	if len(before) != len(after) {
		t.Errorf("host root changed: %d entries before, %d after", len(before), len(after))
	}
}

func TestOpenDropsCreateAndTruncate(t *testing.T) {
	v, dir, r := newView(t, Config{})
	if _, err := v.Open(r, "a/nothere", unix.O_WRONLY|unix.O_CREAT); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Open(O_CREAT) of a missing file = %v, want ENOENT", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a/nothere")); !os.IsNotExist(err) {
		t.Errorf("host file was created: %v", err)
	}
	f, err := v.Open(r, "a/cgroup.freeze", unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC)
	if err != nil {
		t.Fatalf("Open(O_WRONLY|O_CREAT|O_TRUNC) = %v", err)
	}
	f.Close()
	if b, _ := os.ReadFile(filepath.Join(dir, "a/cgroup.freeze")); string(b) != "0\n" {
		t.Errorf("an O_TRUNC open changed the host file to %q", b)
	}
}

func TestValidName(t *testing.T) {
	cases := []struct {
		name string
		want error
	}{
		{"child", nil},
		{"with space", nil},
		{"ünïcode", nil},
		{strings.Repeat("x", 255), nil},
		{strings.Repeat("x", 256), unix.ENAMETOOLONG},
		{"", unix.EINVAL},
		{".", unix.EINVAL},
		{"..", unix.EINVAL},
		{"a/b", unix.EINVAL},
		{"a\nb", unix.EINVAL},
		{"a\x00b", unix.EINVAL},
	}
	for _, c := range cases {
		if got := ValidName(c.name); got != c.want {
			t.Errorf("ValidName(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestParseIDs(t *testing.T) {
	cases := []struct {
		in   string
		want []int
	}{
		{"", []int{}},
		{"1\n", []int{1}},
		{"12\n7\n300000\n", []int{12, 7, 300000}},
		{"5", []int{5}},
	}
	for _, c := range cases {
		got := ParseIDs([]byte(c.in))
		if len(got) != len(c.want) {
			t.Errorf("ParseIDs(%q) = %v, want %v", c.in, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("ParseIDs(%q) = %v, want %v", c.in, got, c.want)
			}
		}
	}
}

func TestParsePid(t *testing.T) {
	cases := []struct {
		in   string
		want int
		err  error
	}{
		{"42", 42, nil},
		{" 42\n", 42, nil},
		{"0", 0, nil},
		{"", 0, unix.EINVAL},
		{"1 2", 0, unix.EINVAL},
		{"-1", 0, unix.EINVAL},
		{"+3", 3, nil},
		{"0x10", 16, nil},
		{"010", 8, nil},
		{"0b1", 0, unix.EINVAL},
		{"1_000", 0, unix.EINVAL},
		{"abc", 0, unix.EINVAL},
		{"-+1", 0, unix.EINVAL},
		{strings.Repeat("9", 40), 0, unix.EINVAL},
	}
	for _, c := range cases {
		got, err := ParsePid([]byte(c.in))
		if got != c.want || err != c.err {
			t.Errorf("ParsePid(%q) = %d, %v; want %d, %v", c.in, got, err, c.want, c.err)
		}
	}
}

// TestOwnershipIsTheViews: a cgroup made for a container uid, and a
// chown or chmod through the view, change what the view shows and never
// the host files' owner or mode.
func TestOwnershipIsTheViews(t *testing.T) {
	v, dir, r := newView(t, Config{})
	c, _ := r.Caller()
	th, _ := r.Thread()
	c.Uid, c.Gid = 100000, 100000
	creator := access.Known(c, th)
	st, err := v.Mkdir(creator, "", "mine", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if st.Uid != 100000 || st.Gid != 100000 {
		t.Errorf("the new cgroup shows %d:%d, want its creator 100000:100000", st.Uid, st.Gid)
	}
	hostOwner := func(p string) string {
		var hs unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, p), &hs); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%d:%d %o", hs.Uid, hs.Gid, hs.Mode&0o7777)
	}
	fake.Write(t, filepath.Join(dir, "mine/cgroup.procs"), "")
	before := hostOwner("mine/cgroup.procs")
	mode, uid := uint32(0o600), uint32(101000)
	if _, err := v.Setattr(r, "mine/cgroup.procs", nil, Attrs{Mode: &mode, Uid: &uid}); err != nil {
		t.Fatal(err)
	}
	got, err := v.stat("mine/cgroup.procs")
	if err != nil {
		t.Fatal(err)
	}
	if got.Uid != 101000 || got.Mode&0o7777 != 0o600 {
		t.Errorf("after chown 101000 and chmod 600 the view shows %d %o", got.Uid, got.Mode&0o7777)
	}
	if after := hostOwner("mine/cgroup.procs"); after != before {
		t.Errorf("the host file changed from %s to %s", before, after)
	}
	if hostOwner("mine") != hostOwner("") {
		t.Errorf("the new cgroup's host owner %s differs from its parent's %s", hostOwner("mine"), hostOwner(""))
	}
}

// TestV1DescendantLimit: v1 has no cgroup.max.descendants; cgfs keeps a
// limit of its own there, recounting when the host removed cgroups.
func TestV1DescendantLimit(t *testing.T) {
	v, dir, r := newView(t, Config{V1: true, V1Descendants: 4}) // a and a/b count
	for _, name := range []string{"c", "d"} {
		if _, err := v.Mkdir(r, "", name, 0o755); err != nil {
			t.Fatalf("mkdir %s under the limit: %v", name, err)
		}
	}
	if _, err := v.Mkdir(r, "a", "e", 0o755); !errors.Is(err, unix.EAGAIN) || ruleOf(err) != RuleV1Descendants {
		t.Errorf("a fifth cgroup under a v1 limit of 4 = %v, want EAGAIN by %s", err, RuleV1Descendants)
	}
	if err := v.Rmdir(r, "", "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Mkdir(r, "", "e", 0o755); err != nil {
		t.Errorf("mkdir after an rmdir: %v", err)
	}
	// The host removes one behind cgfs's back: the recount finds room
	// (it comes at most once a second; the last was just now).
	if err := os.Remove(filepath.Join(dir, "d")); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Mkdir(r, "", "f", 0o755); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("mkdir within a second of the last recount = %v, want EAGAIN on the count kept", err)
	}
	v.v1Counted = time.Time{} // as if a second had passed
	if _, err := v.Mkdir(r, "", "f", 0o755); err != nil {
		t.Errorf("mkdir after the host removed a cgroup: %v", err)
	}
}

// TestCgroupsOfTheNamespaceRoot: a cgroup the owner namespace's root
// makes shows as its own with nothing written on the host (what host
// root owns shows as that root already); one another user makes is that
// user's, with the view's owner on it (and on each of its files).
func TestCgroupsOfTheNamespaceRoot(t *testing.T) {
	ids := user.IdentityMapping{
		UIDMaps: []user.IDMap{{ID: 0, ParentID: 100000, Count: 65536}},
		GIDMaps: []user.IDMap{{ID: 0, ParentID: 100000, Count: 65536}},
	}
	v, dir, r := newView(t, Config{IDs: &ids})
	c, _ := r.Caller()
	th, _ := r.Thread()
	for _, k := range []struct {
		name     string
		uid, gid uint32
		xattr    bool
	}{{"byroot", 100000, 100000, false}, {"byuser", 100005, 100005, true}} {
		c.Uid, c.Gid = k.uid, k.gid
		st, err := v.Mkdir(access.Known(c, th), "", k.name, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		again, err := v.stat(k.name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Uid != k.uid || st.Gid != k.gid || again.Uid != k.uid || again.Gid != k.gid {
			t.Errorf("%s: the cgroup shows %d:%d, then %d:%d; want %d:%d", k.name, st.Uid, st.Gid, again.Uid, again.Gid, k.uid, k.gid)
		}
		_, err = unix.Lgetxattr(filepath.Join(dir, k.name), ownerXattr, make([]byte, 64))
		if has := err == nil; has != k.xattr {
			t.Errorf("%s: owner written on the host: %v, want %v", k.name, has, k.xattr)
		}
	}
}

// TestLeafDirsHandOver: the leaves a view knows are what a server that
// takes over sets, and all it sets: a path that is no clean path inside
// the view is left out.
func TestLeafDirsHandOver(t *testing.T) {
	v, _, _ := newView(t, Config{})
	if got := v.LeafDirs(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("LeafDirs = %q, want [a]: a has the fake hierarchy's leaf", got)
	}
	next, _, _ := newView(t, Config{})
	next.SetLeafDirs([]string{"a/b", "", "../x", "/a", "a//b", "a/../a", "a/."})
	if got := next.LeafDirs(); !slices.Equal(got, []string{"", "a/b"}) {
		t.Fatalf("after SetLeafDirs, LeafDirs = %q, want the root and a/b", got)
	}
	if next.hasLeaf("a") || !next.hasLeaf("a/b") {
		t.Fatalf("hasLeaf(a) = %v, hasLeaf(a/b) = %v: the set index is not the one used", next.hasLeaf("a"), next.hasLeaf("a/b"))
	}
	if err := next.IndexLeaves(); err != nil {
		t.Fatal(err)
	}
	if got := next.LeafDirs(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("IndexLeaves after SetLeafDirs = %q, want what the host has, [a]", got)
	}
}
