// Package users is what each unprivileged host user may have of cgfs: the
// admin's policy (a root-owned file naming limits and bounds per user,
// per group and for everyone else, and who is refused), and the ids a
// user may map into its containers (its own and its ranges in
// /etc/subuid and /etc/subgid, as shadow's newuidmap grants them).
package users

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Policy is what one user may have: the limits its parent cgroup
// carries (what all of its containers use together, and what one
// container may ask for at most), and its bounds on the daemon.
type Policy struct {
	Refused bool // the user gets nothing

	Memory int64   // bytes, its parent cgroup's memory limit; 0 none
	Pids   int64   // tasks, its parent cgroup's; 0 none
	CPUs   float64 // CPUs of bandwidth, its parent cgroup's; 0 none
	// Descendants bounds the cgroups below its parent (cgroup v2's
	// cgroup.max.descendants there); V1Descendants those below each of
	// its containers on a v1 hierarchy (cgfs counts them).
	Descendants, V1Descendants int
	// Containers bounds how many containers it has at once.
	Containers int
	// What its containers hold of the daemon, together.
	OpenFiles, NestedViews, RelayWatches, PidHelpers, InFlight int
}

// Defaults are the policy of a user the file does not name when it has
// no "*" line either.
var Defaults = Policy{Memory: 1 << 30, Pids: 1024, Descendants: 256, V1Descendants: 256, Containers: 8,
	OpenFiles: 4096, NestedViews: 64, RelayWatches: 1024, PidHelpers: 8, InFlight: 32}

// File is a parsed policy file: lines of "WHO key=value ...", WHO a
// user name or uid, @group, or * for everyone; "refuse" refuses. Later
// lines for the same user override earlier keys; a user's own line is
// applied last, over its groups' (in file order), over *.
type File struct {
	all    []setting
	groups map[string][]setting
	byUser map[string][]setting
	order  []string // groups in file order
}

type setting struct {
	key, value string
}

// ParseError is a line of the policy file cgfs cannot take.
type ParseError struct {
	Line int
	Msg  string
}

func (e *ParseError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Parse reads a policy file.
func Parse(r io.Reader) (*File, error) {
	f := &File{groups: map[string][]setting{}, byUser: map[string][]setting{}}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		who := fields[0]
		var ss []setting
		for _, kv := range fields[1:] {
			if kv == "refuse" {
				ss = append(ss, setting{"refuse", "1"})
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, &ParseError{n, fmt.Sprintf("%q is no key=value", kv)}
			}
			if err := check(k, v); err != nil {
				return nil, &ParseError{n, err.Error()}
			}
			ss = append(ss, setting{k, v})
		}
		switch {
		case who == "*":
			f.all = append(f.all, ss...)
		case strings.HasPrefix(who, "@") && len(who) > 1:
			g := who[1:]
			if _, seen := f.groups[g]; !seen {
				f.order = append(f.order, g)
			}
			f.groups[g] = append(f.groups[g], ss...)
		default:
			f.byUser[who] = append(f.byUser[who], ss...)
		}
	}
	return f, sc.Err()
}

// check refuses a key or value the policy does not know.
func check(k, v string) error {
	var p Policy
	return p.set(k, v)
}

func (p *Policy) set(k, v string) error {
	ints := map[string]*int{"descendants": &p.Descendants, "v1-descendants": &p.V1Descendants, "containers": &p.Containers,
		"open-files": &p.OpenFiles, "nested-views": &p.NestedViews, "relay-watches": &p.RelayWatches,
		"pid-helpers": &p.PidHelpers, "in-flight": &p.InFlight}
	if dst, ok := ints[k]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%s=%s: a number of at least 0", k, v)
		}
		*dst = n
		return nil
	}
	switch k {
	case "refuse":
		p.Refused = true
	case "memory":
		n, err := ParseBytes(v)
		if err != nil {
			return fmt.Errorf("memory=%s: %v", v, err)
		}
		p.Memory = n
	case "pids":
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("pids=%s: a number of at least 0", v)
		}
		p.Pids = n
	case "cpus":
		c, err := strconv.ParseFloat(v, 64)
		if err != nil || c < 0 || math.IsNaN(c) || math.IsInf(c, 0) || c > 1<<20 {
			return fmt.Errorf("cpus=%s: a number of CPUs of at least 0", v)
		}
		p.CPUs = c
	default:
		return fmt.Errorf("no key %q (memory, pids, cpus, descendants, v1-descendants, containers, open-files, nested-views, relay-watches, pid-helpers, in-flight, refuse)", k)
	}
	return nil
}

// For is the policy of user u (its name, uid and groups' names).
func (f *File) For(name string, uid int, groups []string) Policy {
	p := Defaults
	apply := func(ss []setting) {
		for _, s := range ss {
			_ = p.set(s.key, s.value) // checked when parsed
		}
	}
	if f == nil {
		return p
	}
	apply(f.all)
	for _, g := range f.order {
		for _, mine := range groups {
			if mine == g {
				apply(f.groups[g])
			}
		}
	}
	apply(f.byUser[strconv.Itoa(uid)])
	apply(f.byUser[name])
	return p
}

// Load reads the policy file at path, which must be root's and writable
// by root alone (a policy anyone could edit bounds nothing). A missing
// file is no error: every user gets Defaults.
func Load(path string) (*File, error) {
	fd, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, err
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid != 0 || st.Mode().Perm()&0o022 != 0 || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s must be a file of root's that only root may write (it is %v, owner %d)", path, st.Mode(), sys.Uid)
	}
	f, err := Parse(fd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ParseBytes parses 67108864, 64K, 64M, 1G.
func ParseBytes(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.New("not a positive number of bytes")
	}
	if n > math.MaxInt64/mult {
		return 0, errors.New("more bytes than a limit holds")
	}
	return n * mult, nil
}

// Who is a host user as cgfs knows it.
type Who struct {
	Uid, Gid int
	Name     string
	Groups   []string
}

// Lookup is the host user uid: its name, primary group and groups'
// names (from /etc/passwd and /etc/group; a uid without a name is its
// number, in no group).
func Lookup(uid int) Who {
	w := Who{Uid: uid, Gid: -1, Name: strconv.Itoa(uid)}
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return w
	}
	w.Name = u.Username
	if g, err := strconv.Atoi(u.Gid); err == nil {
		w.Gid = g
	}
	if gids, err := u.GroupIds(); err == nil {
		for _, id := range gids {
			if g, err := user.LookupGroupId(id); err == nil {
				w.Groups = append(w.Groups, g.Name)
			}
		}
	}
	return w
}

// Range is count ids from Start.
type Range struct{ Start, Count int64 }

// Contains reports whether [start, start+count) is inside r.
func (r Range) Contains(start, count int64) bool {
	return start >= r.Start && count >= 0 && start+count <= r.Start+r.Count
}

// SubIDs reads a user's ranges from a subordinate id file (/etc/subuid,
// /etc/subgid: "name-or-id:start:count" lines), as newuidmap does.
func SubIDs(path string, w Who) ([]Range, error) {
	fd, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	return parseSubIDs(fd, w)
}

func parseSubIDs(r io.Reader, w Who) ([]Range, error) {
	var out []Range
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, r, ok := parseSubIDLine(sc.Text())
		if ok && (name == w.Name || name == strconv.Itoa(w.Uid)) {
			out = append(out, r)
		}
	}
	return out, sc.Err()
}

// parseSubIDLine is one "name-or-id:start:count" line, if it is one.
func parseSubIDLine(line string) (name string, r Range, ok bool) {
	f := strings.Split(strings.TrimSpace(line), ":")
	if len(f) != 3 {
		return "", Range{}, false
	}
	start, err1 := strconv.ParseInt(f[1], 10, 64)
	count, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || start < 0 || count <= 0 || start+count > math.MaxUint32 {
		return "", Range{}, false
	}
	return f[0], Range{start, count}, true
}

// Allowed says whether every range of an id map (outside start, count:
// host ids) is the user's: its own id or inside one of its ranges.
func Allowed(own int, ranges []Range, start, count int64) bool {
	if start == int64(own) && count == 1 {
		return true
	}
	for _, r := range ranges {
		if r.Contains(start, count) {
			return true
		}
	}
	return false
}

// Subordinates says whose subordinate uid a host uid is, from a
// subordinate id file (/etc/subuid), read again whenever it changes. A
// process running as one of a user's subordinate ids is that user's,
// inside a user namespace the user made (newuidmap): not a user of its
// own, though the kernel names it by a uid no other process has.
type Subordinates struct {
	path string

	mu     sync.Mutex
	stamps [2]stamp // the file and /etc/passwd (its owners) as last read
	ranges []owned
}

// passwdFile is where the host's users are, whose ids the owners named
// in the subordinate id file resolve to.
const passwdFile = "/etc/passwd"

// stampOf is file path's stamp (not there: the zero stamp).
func stampOf(path string) (stamp, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return stamp{}, nil
		}
		return stamp{}, err
	}
	return stamp{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Nano(), there: true}, nil
}

// stamp is what tells a file changed.
type stamp struct {
	dev, ino, size uint64
	mtime          int64
	there          bool
}

// owned is a range of subordinate ids and its owner as the file names it.
type owned struct {
	Range
	owner string // as the file names it
	// uid and name are the owner's, resolved when the file was read:
	// its uid, or for an owner no host user has, the first id of the
	// range (so that the range's ids still count as one).
	uid  int
	name string
}

// NewSubordinates reads path (/etc/subuid) when asked.
func NewSubordinates(path string) *Subordinates { return &Subordinates{path: path} }

// Owner is the user whose subordinate ids hold uid, other than uid
// itself: its uid (or, for an owner the file names that no host user
// has, the first id of the range, so that the range's ids still count
// as one), its name, and whether there is one. A file cgfs cannot read
// is an error: the caller refuses rather than take uid for a user.
func (s *Subordinates) Owner(uid int) (owner int, name string, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reload(); err != nil {
		return 0, "", false, err
	}
	for _, r := range s.ranges {
		if r.Contains(int64(uid), 1) && r.uid != uid { // a user's own id in its range is still its own
			return r.uid, r.name, true, nil
		}
	}
	return 0, "", false, nil
}

// resolve is o with its owner's uid and name, from the host's users.
func resolve(o owned) owned {
	o.uid, o.name = int(o.Start), o.owner
	if u, err := user.Lookup(o.owner); err == nil {
		if id, err := strconv.Atoi(u.Uid); err == nil {
			o.uid, o.name = id, u.Username
			return o
		}
	}
	if id, err := strconv.Atoi(o.owner); err == nil && id >= 0 {
		o.uid = id
	}
	return o
}

// reload reads the file again, and resolves its owners, if it or the
// host's users changed since: a peer's connection costs two stats.
func (s *Subordinates) reload() error {
	var now [2]stamp
	for i, path := range []string{s.path, passwdFile} {
		var err error
		if now[i], err = stampOf(path); err != nil {
			return err
		}
	}
	if now == s.stamps && (s.ranges != nil || !now[0].there) {
		return nil
	}
	var ranges []owned
	if now[0].there {
		f, err := os.Open(s.path)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			name, r, ok := parseSubIDLine(sc.Text())
			if ok {
				ranges = append(ranges, resolve(owned{Range: r, owner: name}))
			}
		}
		if err := sc.Err(); err != nil {
			return err
		}
		if ranges == nil {
			ranges = []owned{} // read, and empty
		}
	}
	s.stamps, s.ranges = now, ranges
	return nil
}
