package translate

import (
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Ownership inside a view is cgfs's own: host files stay owned by host
// root, so a cgroupfs the container mounts itself (its cgroup namespace
// belongs to its user namespace) lets it write nothing it could not
// write through cgfs. What the view shows as a file's owner, group and
// mode, where the container (or cgfs on its behalf) changed them, is kept
// on the host file itself in the extended attribute ownerXattr, so it
// survives restarts and goes with the cgroup: "u=UID g=GID m=MODE", host
// ids and octal permission bits, each part optional.
const ownerXattr = "trusted.cgfs.owner"

// shownOwner is what the view shows instead of the host's attributes.
type shownOwner struct {
	uid, gid, mode          uint32
	hasUID, hasGID, hasMode bool
}

func parseOwner(b []byte) shownOwner {
	var o shownOwner
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		base := 10
		if k == "m" {
			base = 8
		}
		n, err := strconv.ParseUint(v, base, 32)
		if err != nil {
			continue
		}
		switch k {
		case "u":
			o.uid, o.hasUID = uint32(n), true
		case "g":
			o.gid, o.hasGID = uint32(n), true
		case "m":
			o.mode, o.hasMode = uint32(n)&0o7777, true
		}
	}
	return o
}

func (o shownOwner) bytes() []byte {
	var parts []string
	if o.hasUID {
		parts = append(parts, "u="+strconv.FormatUint(uint64(o.uid), 10))
	}
	if o.hasGID {
		parts = append(parts, "g="+strconv.FormatUint(uint64(o.gid), 10))
	}
	if o.hasMode {
		parts = append(parts, "m="+strconv.FormatUint(uint64(o.mode), 8))
	}
	return []byte(strings.Join(parts, " "))
}

// apply puts the view's ownership on host attributes.
func (o shownOwner) apply(st *unix.Stat_t) {
	if o.hasUID {
		st.Uid = o.uid
	}
	if o.hasGID {
		st.Gid = o.gid
	}
	if o.hasMode {
		st.Mode = st.Mode&^0o7777 | o.mode
	}
}

// ownerOf reads the view's ownership of vpath.
func (v *View) ownerOf(vpath string) (shownOwner, error) {
	_, val, err := v.host.StatXattr(vpath, ownerXattr)
	return parseOwner(val), err
}

// setOwner changes the view's ownership of vpath: change edits what is
// kept there.
func (v *View) setOwner(vpath string, change func(*shownOwner)) error {
	o, err := v.ownerOf(vpath)
	if err != nil {
		return err
	}
	change(&o)
	return v.host.SetXattr(vpath, ownerXattr, o.bytes())
}

// giveTree makes the new cgroup vpath and its files the creator's in the
// view (as the kernel's cgroup_kn_set_ugid does on the host).
func (v *View) giveTree(vpath string, uid, gid uint32) error {
	o := shownOwner{uid: uid, gid: gid, hasUID: true, hasGID: true}
	return v.host.SetXattrTree(vpath, ownerXattr, o.bytes())
}
