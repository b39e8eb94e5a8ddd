package translate

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/test/fake"
)

// Fuzz targets of the parsers cgfs applies to what a container writes
// and to what the host holds. Each runs its seeds (real kernel text,
// the cases of the unit tests, and the crashers kept under
// testdata/fuzz) in a plain `go test`; .ci/fuzz runs each with -fuzz.

// pidMaxLimit is the kernel's PID_MAX_LIMIT (4M on 64-bit): no task id
// is above it.
const pidMaxLimit = 1 << 22

// taskLines splits real task files into the single-id writes that
// clients make of them ("1234\n" from a shell's echo, "1234" from runc).
func taskLines(f *testing.F) []string {
	var out []string
	for _, name := range taskFiles {
		if ids := ParseIDs(fake.Kernel(f, name)); len(ids) > 0 {
			out = append(out, strconv.Itoa(ids[0])+"\n", strconv.Itoa(ids[len(ids)-1]))
		}
	}
	return out
}

// taskFiles are the captured task files.
var taskFiles = []string{"v2-root-cgroup.procs", "v2-root-cgroup.threads", "v1-memory-tasks", "v1-memory-cgroup.procs"}

// FuzzParsePid holds ParsePid and kstrtoint to the kernel's own parser
// (kstrtoint(strstrip(buf), 0, ...) as cgroup_procs_write_start calls
// it): the same number or the same errno for every write, and the id of
// an accepted write reads back the same in every notation the kernel
// takes.
func FuzzParsePid(f *testing.F) {
	for _, s := range taskLines(f) {
		f.Add([]byte(s))
	}
	for _, s := range []string{"42", " 42\n", "0", "", "1 2", "-1", "+3", "0x10", "010", "0b1", "1_000", "abc",
		"-+1", "-0", "0x", "0xg", "08", "\t7\v", "2147483647",
		// Past fixes: a C string, the kernel's white space (0xa0, not
		// UTF-8's), ERANGE only for an overflow before any junk.
		"7\x00junk", "7\xa0", "7\u00a0", "\u20087", "5000000000x", "9999999999999999999999_",
		"2147483648", "-2147483648", "0x7fffffff", "0X7FFFFFFF", "017777777777", "1\n\n",
		strings.Repeat("9", 40), strings.Repeat("9", 40) + "x", "4194304"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, werr := kKstrtoint(data)
		n, err := kstrtoint(data)
		if (err == nil) != (werr == 0) || werr != 0 && !errors.Is(err, werr) || werr == 0 && n != want {
			t.Fatalf("kstrtoint(%q) = %d, %v; the kernel's gives %d, %v", data, n, err, want, errnoOrNil(werr))
		}
		pid, err := ParsePid(data)
		if werr != 0 || want < 0 {
			// Every refusal of a task id is EINVAL, ERANGE included.
			if err != unix.EINVAL {
				t.Fatalf("ParsePid(%q) = %d, %v; want EINVAL", data, pid, err)
			}
			return
		}
		if err != nil || int64(pid) != want {
			t.Fatalf("ParsePid(%q) = %d, %v; want %d", data, pid, err, want)
		}
		for _, s := range []string{strconv.Itoa(pid), strconv.Itoa(pid) + "\n", fmt.Sprintf("%#x", pid), fmt.Sprintf("%#o", pid), "+" + strconv.Itoa(pid)} {
			if again, err := ParsePid([]byte(s)); err != nil || again != pid {
				t.Errorf("ParsePid(%q) = %d, %v; the id %d written as %q reads %d", data, pid, err, pid, s, again)
			}
		}
	})
}

func errnoOrNil(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// FuzzParseIDs: host task files. Every id is the value of one run of
// digits, in order; a run too long for an id becomes an id no task can
// have (never a negative one, never a real task's by wrapping around);
// a list the kernel writes reads back exactly; the ids are never more
// than the text could hold.
func FuzzParseIDs(f *testing.F) {
	for _, name := range taskFiles {
		f.Add(fake.Kernel(f, name))
	}
	for _, s := range []string{"", "1\n", "12\n7\n300000\n", "5", "0\n", "007\n", "1 2\t3", "-5\n", "x1y22z",
		"\n\n\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ids := ParseIDs(b)
		if len(ids) > (len(b)+1)/2 {
			t.Fatalf("ParseIDs(%q): %d ids from %d bytes", b, len(ids), len(b))
		}
		runs := strings.FieldsFunc(string(b), func(r rune) bool { return r < '0' || r > '9' })
		if len(runs) != len(ids) {
			t.Fatalf("ParseIDs(%q) = %v: %d ids for %d runs of digits", b, ids, len(ids), len(runs))
		}
		for i, run := range runs {
			n, err := strconv.ParseInt(run, 10, 64)
			switch {
			case ids[i] < 0:
				t.Fatalf("ParseIDs(%q) = %v: id %d from %q is negative", b, ids, ids[i], run)
			case err == nil && n <= pidMaxLimit && int64(ids[i]) != n:
				t.Fatalf("ParseIDs(%q) = %v: id %d from %q", b, ids, ids[i], run)
			case (err != nil || n > pidMaxLimit) && ids[i] <= pidMaxLimit:
				t.Fatalf("ParseIDs(%q) = %v: %q, more than any task id, read as the id %d", b, ids, run, ids[i])
			}
		}
		var canon []byte
		for _, id := range ids {
			canon = strconv.AppendInt(canon, int64(id), 10)
			canon = append(canon, '\n')
		}
		if again := ParseIDs(canon); !slices.Equal(again, ids) {
			t.Fatalf("ParseIDs(%q) = %v, but its rendering %q reads %v", b, ids, canon, again)
		}
		if isCanonical(b) && !bytes.Equal(canon, b) {
			t.Fatalf("the kernel's list %q reads as %v", b, ids)
		}
	})
}

// isCanonical: b is a task file as the kernel writes it, one id in
// decimal without leading zeros per line.
func isCanonical(b []byte) bool {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(line, "\n"))
		if err != nil || n < 0 || n > pidMaxLimit || strconv.Itoa(n)+"\n" != line {
			return false
		}
	}
	return true
}

// FuzzParseOwner: the owner xattr. What cgfs writes reads back the
// same; anything else reads as some owner whose rendering reads back
// as that owner; the mode never carries file-type bits.
func FuzzParseOwner(f *testing.F) {
	for _, s := range []string{"", "u=100000 g=100000", "u=101000 g=101000 m=600", "m=755", "u=0", "g=4294967295",
		"u=4294967296", "m=17777", "u=1 u=2", "u=-1", "m=8", "u= g=", "x=1", "u=1\ng=2\tm=644", "u=1=2"} {
		f.Add([]byte(s), uint32(0), uint32(0), uint32(0), uint8(0))
	}
	f.Add([]byte(nil), uint32(100000), uint32(100005), uint32(0o4755), uint8(7))
	f.Fuzz(func(t *testing.T, b []byte, uid, gid, mode uint32, has uint8) {
		o := parseOwner(b)
		if o.mode&^0o7777 != 0 {
			t.Fatalf("parseOwner(%q) = %+v: mode %o beyond the permission bits", b, o, o.mode)
		}
		if again := parseOwner(o.bytes()); again != o {
			t.Fatalf("parseOwner(%q) = %+v, rendered %q, reads back %+v", b, o, o.bytes(), again)
		}
		if len(o.bytes()) > len("u=4294967295 g=4294967295 m=7777") {
			t.Fatalf("parseOwner(%q) renders %d bytes: %q", b, len(o.bytes()), o.bytes())
		}
		st := unix.Stat_t{Mode: unix.S_IFREG | 0o644, Uid: 7, Gid: 8}
		o.apply(&st)
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Fatalf("parseOwner(%q).apply changed the file type: mode %o", b, st.Mode)
		}
		// What cgfs itself writes (setOwner, giveTree).
		w := shownOwner{uid: uid, gid: gid, mode: mode & 0o7777, hasUID: has&1 != 0, hasGID: has&2 != 0, hasMode: has&4 != 0}
		if !w.hasUID {
			w.uid = 0
		}
		if !w.hasGID {
			w.gid = 0
		}
		if !w.hasMode {
			w.mode = 0
		}
		if got := parseOwner(w.bytes()); got != w {
			t.Fatalf("owner %+v written as %q reads back %+v", w, w.bytes(), got)
		}
	})
}

// FuzzCgroupName: the names a container gives mkdir, lookup and rename.
// A name the kernel would take is one plain component, made as exactly
// that directory and found again; any other is refused with the
// kernel's errno (EINVAL, ENAMETOOLONG) and changes nothing on the host.
func FuzzCgroupName(f *testing.F) {
	for _, s := range []string{"child", "with space", "ünïcode", strings.Repeat("x", 255), strings.Repeat("x", 256), "",
		".", "..", "a/b", "a\nb", "a\x00b", "/", LeafName, LeafName + "x", "...", "cgroup.procs", "a", "init.scope",
		"-", "\xff\xfe", " "} {
		f.Add(s)
	}
	v, dir, r := newView(f, Config{})
	listing := func(t *testing.T) string {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return strings.Join(names, "/")
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := error(nil)
		switch {
		case name == "" || name == "." || name == "..":
			want = unix.EINVAL
		case len(name) > 255:
			want = unix.ENAMETOOLONG
		case strings.ContainsAny(name, "/\x00\n"):
			want = unix.EINVAL
		}
		if got := ValidName(name); got != want {
			t.Fatalf("ValidName(%q) = %v, want %v", name, got, want)
		}
		if want == nil && name == LeafName {
			want = unix.EINVAL // reserved: it cannot be made
		}
		before := listing(t)
		_, exists := os.Lstat(dir + "/" + name)
		st, err := v.Mkdir(r, "", name, 0o755)
		switch {
		case want != nil:
			if !errors.Is(err, want) || ruleOf(err) == "" {
				t.Fatalf("Mkdir(%q) = %v, want %v by a rule", name, err, want)
			}
		case exists == nil:
			if !errors.Is(err, unix.EEXIST) {
				t.Fatalf("Mkdir(%q) of an existing name = %v, want EEXIST", name, err)
			}
		default:
			if err != nil {
				t.Fatalf("Mkdir(%q) = %v", name, err)
			}
			var hst unix.Stat_t
			if err := unix.Lstat(dir+"/"+name, &hst); err != nil || hst.Mode&unix.S_IFMT != unix.S_IFDIR || hst.Ino != st.Ino {
				t.Fatalf("Mkdir(%q) made no directory of that name in the host root: %v", name, err)
			}
			if got, err := v.Lookup(r, "", name); err != nil || got.Ino != st.Ino {
				t.Fatalf("Lookup(%q) after Mkdir = %d, %v; want inode %d", name, got.Ino, err, st.Ino)
			}
			if err := v.Rename(r, "", name, "", name+"x", 0); len(name) < 255 && err != nil {
				t.Fatalf("Rename(%q, %q) = %v", name, name+"x", err)
			} else if err == nil {
				if err := v.Rename(r, "", name+"x", "", name, 0); err != nil {
					t.Fatalf("Rename back to %q = %v", name, err)
				}
			}
			if err := v.Rmdir(r, "", name); err != nil {
				t.Fatalf("Rmdir(%q) = %v", name, err)
			}
		}
		if want != nil {
			if _, err := v.Lookup(r, "", name); err == nil {
				t.Fatalf("Lookup(%q) found a name the kernel refuses", name)
			}
			if err := v.Rename(r, "", "a", "", name, 0); err == nil || ruleOf(err) == "" {
				t.Fatalf("Rename(a, %q) = %v, want a refusal", name, err)
			}
		}
		if after := listing(t); after != before {
			t.Fatalf("after %q the host root lists %q, before %q", name, after, before)
		}
	})
}
