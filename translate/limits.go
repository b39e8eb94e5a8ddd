package translate

import (
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate/host"
)

// Limits below the view root are stored on the host so that hidden
// leaves never use the container's allowance: a container value N of
// cgroup.max.descendants is 2N+1 on the host (N visible cgroups, each
// with a possible leaf, and the cgroup's own leaf), and N of
// cgroup.max.depth is N+1 (a leaf is one level below its cgroup). cgfs
// itself enforces N on the visible tree at mkdir (EAGAIN, as the
// kernel). The view root's limits belong to the host and are shown and
// enforced as they are.
//
// The kernel keeps any N up to INT_MAX (an int; INT_MAX itself is what
// "max" stores, and reads back as "max"). Where 2N+1 or N+1 reaches
// INT_MAX, the host holds "max" (no host limit: no host holds a billion
// cgroups) and N is kept beside it, in limitXattr on the host file, to
// be read back as written. The attribute counts only while the host
// file says "max": a value cgfs writes otherwise removes it.
func init() {
	register("cgroup.max.descendants", limitFile(decodeDescendants, encodeDescendants))
	register("cgroup.max.depth", limitFile(decodeDepth, encodeDepth))
}

// limitXattr keeps a container's limit that its host file holds as
// "max" (see above): the decimal number.
const limitXattr = "trusted.cgfs.limit"

func encodeDescendants(n int64) int64 { return 2*n + 1 }
func decodeDescendants(h int64) int64 { return max(h-1, 0) / 2 }
func encodeDepth(n int64) int64       { return n + 1 }
func decodeDepth(h int64) int64       { return max(h-1, 0) }

func limitFile(decode, encode func(int64) int64) *controlFile {
	return &controlFile{
		read: func(f *File) ([]byte, error) {
			raw, err := f.readHost()
			if err != nil || f.cgroup == "" {
				return raw, err
			}
			if string(strstrip(raw)) == "max" { // or the container's limit beside it
				kept, _ := host.Xattr(f.host, limitXattr) // none where it cannot be kept
				if k, kerr := strconv.ParseInt(string(kept), 10, 32); kerr == nil && k >= 0 {
					return []byte(strconv.FormatInt(k, 10) + "\n"), nil
				}
				return raw, nil
			}
			n, perr := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
			if perr != nil {
				return raw, nil
			}
			return []byte(strconv.FormatInt(decode(n), 10) + "\n"), nil
		},
		write: func(f *File, _ *access.Request, data []byte) (int, error) {
			v := f.v
			v.mu.Lock() // mkdir reads the limits under the view lock
			defer v.mu.Unlock()
			if f.cgroup == "" {
				return v.host.Write(f.host, f.vpath, data)
			}
			if string(strstrip(data)) == "max" {
				// The container's "max": nothing kept beside it.
				if err := host.SetFileXattr(f.host, limitXattr, nil); err != nil {
					return 0, err
				}
				return v.host.Write(f.host, f.vpath, data)
			}
			// The kernel's parser (cgroup_max_descendants_write,
			// cgroup_max_depth_write): "max" or kstrtoint, negative
			// ERANGE; INT_MAX is "max".
			n, err := kstrtoint(data)
			if err == nil && n < 0 {
				err = unix.ERANGE
			}
			if err != nil {
				return 0, refuse(RuleBadValue, err.(unix.Errno), "not a limit (data "+strconv.Quote(host.Shorten(data))+")")
			}
			if encode(n) < math.MaxInt32 {
				if _, err := v.host.Write(f.host, f.vpath, []byte(strconv.FormatInt(encode(n), 10))); err != nil {
					return 0, err
				}
				if err := host.SetFileXattr(f.host, limitXattr, nil); err != nil {
					return 0, err
				}
				return len(data), nil
			}
			// More than the host holds: "max" there, n beside it (none
			// for INT_MAX, the kernel's own "max").
			old, err := host.Xattr(f.host, limitXattr)
			if err != nil {
				return 0, err
			}
			var kept []byte
			if n < math.MaxInt32 {
				kept = []byte(strconv.FormatInt(n, 10))
			}
			if err := host.SetFileXattr(f.host, limitXattr, kept); err != nil {
				return 0, err
			}
			if _, err := v.host.Write(f.host, f.vpath, []byte("max")); err != nil {
				_ = host.SetFileXattr(f.host, limitXattr, old) // as it was
				return 0, err
			}
			return len(data), nil
		},
	}
}

// limitOf returns the container's limit in file of virtual cgroup vdir
// (-1 for max). A limit kept beside a host "max" (limitXattr) counts as
// max here: it is more cgroups, or deeper, than any host holds.
func (v *View) limitOf(vdir, file string, decode func(int64) int64) int64 {
	raw, err := v.host.ReadFile(host.Join(vdir, file))
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

// checkLimitsLocked refuses a new cgroup below vdir when an ancestor's
// container limits are reached (EAGAIN, as cgroup_check_hierarchy_limits
// answers). Limits at the view root are left to the kernel.
func (v *View) checkLimitsLocked(vdir string) error {
	depth := int64(1) // the new cgroup is one level below vdir
	for a := vdir; a != ""; a, _ = split(a) {
		if lim := v.limitOf(a, "cgroup.max.depth", decodeDepth); lim >= 0 && depth > lim {
			return refuse(RuleContainerLimit, unix.EAGAIN, "cgroup.max.depth of /"+a+" reached")
		}
		if lim := v.limitOf(a, "cgroup.max.descendants", decodeDescendants); lim >= 0 && v.visibleDescendants(a) >= lim {
			return refuse(RuleContainerLimit, unix.EAGAIN, "cgroup.max.descendants of /"+a+" reached")
		}
		depth++
	}
	return nil
}

// visibleDescendants counts the container's cgroups below vdir: the
// host's count (cgroup.stat nr_descendants) less the hidden leaves.
func (v *View) visibleDescendants(vdir string) int64 {
	raw, err := v.host.ReadFile(host.Join(vdir, "cgroup.stat"))
	if err != nil {
		return 0
	}
	return max(host.Keyed(raw)["nr_descendants"]-v.leaves.under(vdir), 0)
}

// DefaultV1Descendants is how many cgroups a container may make below a
// v1 view root unless told otherwise. cgroup v1 has no
// cgroup.max.descendants, and every memory cgroup takes one of the
// kernel's 65,535 memcg ids: without a limit of cgfs's own one container
// could stop every memory cgroup creation on the host.
const DefaultV1Descendants = 500

// checkV1LimitLocked refuses a new cgroup in a v1 view that has as many
// as it may (EAGAIN, as the kernel answers a v2 limit). The count is
// kept as cgfs makes and removes cgroups, and made anew by a walk when
// it says the limit is reached (the host may have removed some), at
// most once a second: a container pressing at its limit makes the
// server walk no more often than that.
func (v *View) checkV1LimitLocked() error {
	if v.v1Count < 0 || v.v1Count >= v.v1Limit && time.Since(v.v1Counted) > time.Second {
		v.v1Counted = time.Now()
		n := -1 // the root itself
		if err := v.walk("", func(string, bool) error { n++; return nil }); err != nil {
			return err
		}
		v.v1Count = n
	}
	if v.v1Count >= v.v1Limit {
		return refuse(RuleV1Descendants, unix.EAGAIN, strconv.Itoa(v.v1Limit)+" cgroups below the view root: its v1 descendant limit")
	}
	return nil
}
