package host

import (
	"bytes"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cgfs/cgfs/test/fake"
)

// FuzzKeyed: flat-keyed cgroup text (cgroup.stat, memory.events,
// cpu.stat, memory.stat ...), the one parser of it. Every key read is a
// word of the text holding the value its last "key value" line gives;
// the text the kernel writes reads whole, one key a line; what Keyed
// reads, written back as the kernel would, reads the same; and a log
// line of any text stays short.
func FuzzKeyed(f *testing.F) {
	for _, text := range fake.KernelText(f, "v") {
		f.Add(text)
	}
	for _, name := range []string{"cgroup.stat", "cgroup.events"} {
		f.Add([]byte(fake.Files[name]))
	}
	for _, s := range []string{"", "a 1", "a 1\na 2\n", "a  -3\n", "a 1 2\n", "a\n", " a\t5 \n", "a 99999999999999999999\n",
		"some avg10=0.00 total=0\n", "a 0x10\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := Keyed(b)
		if len(m) > bytes.Count(b, []byte("\n"))+1 {
			t.Fatalf("Keyed(%q) = %v: more keys than lines", b, m)
		}
		for k, v := range m {
			if k == "" || strings.ContainsFunc(k, func(r rune) bool { return strings.TrimSpace(string(r)) == "" }) {
				t.Fatalf("Keyed(%q) has the key %q", b, k)
			}
			last := int64(0)
			found := false
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == k {
					if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
						last, found = n, true
					}
				}
			}
			if !found || last != v {
				t.Fatalf("Keyed(%q)[%q] = %d, but its last line says %d (%v)", b, k, v, last, found)
			}
		}
		var canon []byte
		for _, k := range slices.Sorted(maps.Keys(m)) {
			canon = append(canon, k+" "+strconv.FormatInt(m[k], 10)+"\n"...)
		}
		if again := Keyed(canon); !maps.Equal(again, m) {
			t.Fatalf("Keyed(%q) = %v, written back %q reads %v", b, m, canon, again)
		}
		if kernelText(b) && len(m) != bytes.Count(b, []byte("\n")) {
			t.Fatalf("Keyed(%q) = %v: the kernel's lines do not all read", b, m)
		}
		if s := Shorten(b); len(s) > 67 || !strings.HasPrefix(string(b), strings.TrimSuffix(s, "...")) {
			t.Fatalf("Shorten(%q) = %q", b, s)
		}
	})
}

// kernelText: b is flat-keyed text as the kernel writes it, "key value\n"
// lines of distinct keys without white space, decimal values.
func kernelText(b []byte) bool {
	seen := map[string]bool{}
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || strconv.FormatInt(n, 10) != v || k == "" || strings.ContainsAny(k, " \t\v\f\r") ||
			!strings.HasSuffix(line, "\n") || seen[k] || strings.TrimSpace(k) != k || len(strings.Fields(k)) != 1 {
			return false
		}
		seen[k] = true
	}
	return true
}
