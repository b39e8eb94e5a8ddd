package translate

import (
	"bytes"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A controlFile is an interface file whose content or writes cgfs
// computes rather than passing through, described as data. A nil render
// passes reads through; a nil write passes writes through.
type controlFile struct {
	match  func(name string) bool
	render func(v *View, vdir string, f *os.File, r Reader) ([]byte, error)
	write  func(v *View, vdir string, data []byte) (int, error)
}

func named(n string) func(string) bool { return func(s string) bool { return s == n } }

var controlFiles = []controlFile{
	// Tasks: merged with the hidden leaf, shown in the reader's pid
	// namespace. Writes go through Migrate (fs needs the policy between
	// resolving the pid and moving it).
	{match: named("cgroup.procs"), render: renderTasks("cgroup.procs")},
	{match: named("cgroup.threads"), render: renderTasks("cgroup.threads")},
	{match: named("tasks"), render: renderTasks("tasks")}, // v1
	// Hidden leaves appear and disappear with domain controllers.
	{match: named("cgroup.subtree_control"), write: (*View).writeSubtreeControl},
	// Descendant counts do not count hidden leaves.
	{match: named("cgroup.stat"), render: renderStat},
	// Limits the container sets leave room for the leaves.
	{match: named("cgroup.max.descendants"), render: renderLimit(decodeDescendants), write: writeLimit("cgroup.max.descendants", encodeDescendants)},
	{match: named("cgroup.max.depth"), render: renderLimit(decodeDepth), write: writeLimit("cgroup.max.depth", encodeDepth)},
	// Non-hierarchical counters: H's plus its leaf's.
	{match: func(n string) bool { return strings.HasSuffix(n, ".local") }, render: renderLocal},
}

func controlFileOf(vpath string) *controlFile {
	name := path.Base(vpath)
	for i := range controlFiles {
		if controlFiles[i].match(name) {
			return &controlFiles[i]
		}
	}
	return nil
}

// Rendered reports whether reads of vpath are computed by cgfs (and so
// may never be served by the kernel from the host file directly).
func (v *View) Rendered(vpath string) bool {
	cf := controlFileOf(vpath)
	return cf != nil && cf.render != nil
}

// Render computes the content of the control file vpath, opened on the
// host as f, for reader r.
func (v *View) Render(vpath string, f *os.File, r Reader) ([]byte, error) {
	cf := controlFileOf(vpath)
	if cf == nil || cf.render == nil {
		return preadAll(f)
	}
	return cf.render(v, parentOf(vpath), f, r)
}

// Write carries one write(2) to the control file vpath, opened on the
// host as f. Like kernfs for cgroup files (atomic_write_len PAGE_SIZE),
// a write larger than a page is E2BIG and changes nothing.
func (v *View) Write(vpath string, f *os.File, data []byte) (int, error) {
	if len(data) > os.Getpagesize() {
		return 0, &Error{Op: "write", Path: vpath, Data: shortData(data), Err: unix.E2BIG}
	}
	if cf := controlFileOf(vpath); cf != nil && cf.write != nil {
		return cf.write(v, parentOf(vpath), data)
	}
	n, err := unix.Pwrite(int(f.Fd()), data, 0)
	if err != nil {
		return 0, &Error{Op: "write", Path: vpath, Data: shortData(data), Err: err}
	}
	return n, nil
}

// parentOf is the virtual cgroup holding a control file.
func parentOf(vpath string) string {
	d := path.Dir(vpath)
	if d == "." {
		return ""
	}
	return d
}

func renderTasks(file string) func(v *View, vdir string, f *os.File, r Reader) ([]byte, error) {
	return func(v *View, vdir string, f *os.File, r Reader) ([]byte, error) {
		raw, err := preadAll(f)
		if err != nil {
			return nil, &Error{Op: "read", Path: Join(vdir, file), Err: err}
		}
		dir := v.hostPath(vdir)
		var leafRaw []byte
		if v.hasLeaf(dir) {
			leafRaw, _ = v.host.ReadFile(Join(Join(dir, LeafName), file))
		}
		if r.Level == 0 {
			// The server's own namespace: the host's text, as it is.
			return append(raw, leafRaw...), nil
		}
		ids := append(parseIDs(raw), parseIDs(leafRaw)...)
		out := make([]byte, 0, len(raw)+16)
		for _, id := range v.pids.Translate(ids, r) {
			out = strconv.AppendInt(out, int64(id), 10)
			out = append(out, '\n')
		}
		return out, nil
	}
}

// renderStat subtracts hidden leaves from nr_descendants.
func renderStat(v *View, vdir string, f *os.File, _ Reader) ([]byte, error) {
	raw, err := preadAll(f)
	if err != nil {
		return nil, &Error{Op: "read", Path: Join(vdir, "cgroup.stat"), Err: err}
	}
	leaves := v.countLeaves(v.hostPath(vdir))
	if leaves == 0 {
		return raw, nil
	}
	return mapKeyed(raw, func(key string, val int64) int64 {
		if key == "nr_descendants" {
			return max(val-int64(leaves), 0)
		}
		return val
	}), nil
}

// renderLocal adds the leaf's non-hierarchical counters to H's.
func renderLocal(v *View, vdir string, f *os.File, _ Reader) ([]byte, error) {
	raw, err := preadAll(f)
	if err != nil {
		return nil, err
	}
	dir := v.hostPath(vdir)
	if !v.hasLeaf(dir) {
		return raw, nil
	}
	leafRaw, err := v.host.ReadFile(Join(Join(dir, LeafName), path.Base(f.Name())))
	if err != nil {
		return raw, nil // the leaf lacks the file: nothing to add
	}
	add := keyed(leafRaw)
	return mapKeyed(raw, func(key string, val int64) int64 { return val + add[key] }), nil
}

// keyed parses flat-keyed cgroup text ("key value" lines) into numbers.
func keyed(b []byte) map[string]int64 {
	out := map[string]int64{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) == 2 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				out[f[0]] = n
			}
		}
	}
	return out
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

// Limits below the view root are stored on the host so that hidden
// leaves never use the container's allowance: a container value N of
// cgroup.max.descendants is 2N+1 on the host (N visible cgroups, each
// with a possible leaf, and the cgroup's own leaf), and N of
// cgroup.max.depth is N+1 (a leaf is one level below its cgroup). cgfs
// itself enforces N on the visible tree at mkdir (EAGAIN, as the
// kernel). The view root's limits belong to the host and are shown and
// enforced as they are.
func encodeDescendants(n int64) int64 { return 2*n + 1 }
func decodeDescendants(h int64) int64 { return max(h-1, 0) / 2 }
func encodeDepth(n int64) int64       { return n + 1 }
func decodeDepth(h int64) int64       { return max(h-1, 0) }

func renderLimit(decode func(int64) int64) func(v *View, vdir string, f *os.File, _ Reader) ([]byte, error) {
	return func(v *View, vdir string, f *os.File, _ Reader) ([]byte, error) {
		raw, err := preadAll(f)
		if err != nil || vdir == "" {
			return raw, err
		}
		s := strings.TrimSpace(string(raw))
		n, perr := strconv.ParseInt(s, 10, 64)
		if perr != nil { // "max"
			return raw, nil
		}
		return []byte(strconv.FormatInt(decode(n), 10) + "\n"), nil
	}
}

func writeLimit(file string, encode func(int64) int64) func(v *View, vdir string, data []byte) (int, error) {
	return func(v *View, vdir string, data []byte) (int, error) {
		path := Join(v.hostPath(vdir), file)
		s := strings.TrimSpace(string(data))
		if vdir == "" || s == "max" {
			return v.writeHost(path, data)
		}
		// The kernel's parser: an int in [0, INT_MAX] or "max".
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil || n < 0 {
			return 0, &Error{Op: "write", Path: path, Data: shortData(data), Err: unix.EINVAL}
		}
		if _, err := v.writeHost(path, []byte(strconv.FormatInt(encode(n), 10))); err != nil {
			return 0, err
		}
		return len(data), nil
	}
}

// limitOf returns the container's limit in file of virtual cgroup vdir
// (-1 for max).
func (v *View) limitOf(vdir, file string, decode func(int64) int64) int64 {
	raw, err := v.host.ReadFile(Join(v.hostPath(vdir), file))
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return -1
	}
	if vdir == "" {
		return n
	}
	return decode(n)
}

// checkLimits refuses a new cgroup below vdir when an ancestor's
// container limits are reached (EAGAIN, as cgroup_check_hierarchy_limits
// answers). Limits at the view root are left to the kernel.
func (v *View) checkLimits(vdir string) error {
	depth := int64(1) // the new cgroup is one level below vdir
	for a := vdir; a != ""; a = parentOf(a) {
		if lim := v.limitOf(a, "cgroup.max.depth", decodeDepth); lim >= 0 && depth > lim {
			return unix.EAGAIN
		}
		if lim := v.limitOf(a, "cgroup.max.descendants", decodeDescendants); lim >= 0 {
			if v.visibleDescendants(a) >= lim {
				return unix.EAGAIN
			}
		}
		depth++
	}
	return nil
}

// visibleDescendants counts the container's cgroups below vdir.
func (v *View) visibleDescendants(vdir string) int64 {
	entries, err := v.host.Names(v.hostPath(vdir))
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if e.Mode&unix.S_IFMT == unix.S_IFDIR && e.Name != LeafName {
			n += 1 + v.visibleDescendants(Join(vdir, e.Name))
		}
	}
	return n
}
