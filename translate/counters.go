package translate

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/cgfs/cgfs/translate/host"
)

// Counters stay true to the tree the container sees: cgroup.stat does
// not count hidden leaves among the descendants, and the
// non-hierarchical *.local counters (memory.events.local,
// hugetlb.*.events.local, ...) add the leaf's, so an OOM kill inside the
// leaf is reported on its cgroup (sysbox lost exactly these reports).
func init() {
	register("cgroup.stat", &controlFile{read: readStat})
	registerSuffix(".local", &controlFile{read: readLocal})
}

// readStat subtracts hidden leaves from nr_descendants.
func readStat(f *File) ([]byte, error) {
	raw, err := f.readHost()
	if err != nil {
		return nil, err
	}
	leaves := f.v.leaves.under(f.cgroup) // its own leaf is a descendant on the host too
	if leaves == 0 {
		return raw, nil
	}
	return mapKeyed(raw, func(key string, val int64) int64 {
		if key == "nr_descendants" {
			return max(val-leaves, 0)
		}
		return val
	}), nil
}

// readLocal adds the leaf's non-hierarchical counters to the cgroup's.
func readLocal(f *File) ([]byte, error) {
	raw, err := f.readHost()
	if err != nil {
		return nil, err
	}
	if !f.v.hasLeaf(f.cgroup) {
		return raw, nil
	}
	leafRaw, err := f.v.host.ReadFile(host.Join(host.Join(f.cgroup, LeafName), f.name))
	if err != nil {
		return raw, nil // the leaf lacks the file: nothing to add
	}
	add := host.Keyed(leafRaw)
	return mapKeyed(raw, func(key string, val int64) int64 { return val + add[key] }), nil
}

// mapKeyed rewrites the numeric values of flat-keyed text, keeping
// order and any line it cannot parse.
func mapKeyed(b []byte, f func(key string, val int64) int64) []byte {
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		fields := strings.Fields(string(line))
		if len(fields) == 2 {
			if n, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
				out.WriteString(fields[0] + " " + strconv.FormatInt(f(fields[0], n), 10) + "\n")
				continue
			}
		}
		out.Write(line)
	}
	return out.Bytes()
}
