package access

import (
	"fmt"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Rule names a reason for a refusal, as it appears in host logs and
// metrics.
type Rule string

const (
	// RuleOutsider: the caller is neither in the owner's user namespace
	// (or below it) nor privileged over it. EACCES for everything.
	RuleOutsider Rule = "outside-owner-userns"
	// RuleMode: an ordinary owner/group/other permission check against
	// the attributes the view shows failed (callers without
	// CAP_SYS_ADMIN over the owner's user namespace).
	RuleMode Rule = "mode"
	// RuleRootLocked: the view root's resource-control files and
	// attributes belong to the parent, as under nsdelegate: only
	// cgroup.procs, cgroup.threads, cgroup.subtree_control and the host's
	// /sys/kernel/cgroup/delegate files may be written there. EPERM.
	RuleRootLocked Rule = "root-locked"
	// RuleCommonAncestor: moving a task needs write access to
	// cgroup.procs of the common ancestor of its source and destination
	// cgroups (cgroup-v2.rst, "Delegation Containment"). EACCES.
	RuleCommonAncestor Rule = "common-ancestor"
	// RuleV1ReleaseAgent: release_agent and notify_on_release of a v1
	// hierarchy run programs as host root (CVE-2022-0492); no container
	// may write them, anywhere. EPERM.
	RuleV1ReleaseAgent Rule = "v1-release-agent"
	// RuleV1DevicesAllow: below the view root a container may narrow its
	// device access (devices.deny), never widen it (devices.allow). EPERM.
	RuleV1DevicesAllow Rule = "v1-devices-allow"
	// RuleV1EventControl: cgroup.event_control names file descriptors
	// of the writer, which the kernel would look up in the server's own
	// fd table; cgfs never writes it for anyone. EPERM.
	RuleV1EventControl Rule = "v1-event-control"
	// RuleNotOwner: only the file's owner or a privileged caller may
	// chmod; only a privileged caller may chown. EPERM.
	RuleNotOwner Rule = "not-owner"
)

// Refusal is a request access refused. The container sees only Errno;
// the host log gets the rule and the caller.
type Refusal struct {
	Rule   Rule
	Errno  syscall.Errno
	Caller Caller
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("refused by rule %s: %v (%s)", r.Rule, r.Errno, r.Caller)
}

func (r *Refusal) Unwrap() error { return r.Errno }

// Want is the access a request asks for, as in access(2).
type Want uint32

const (
	Read  Want = 4
	Write Want = 2
	Exec  Want = 1
)

// Policy judges the callers of one view. Paths are the view's virtual
// paths ("" is the view root); attributes are those the view shows.
type Policy struct {
	// owner is the user namespace owning the container, then its
	// ancestors; the last is the server's own.
	owner []UserNSLink
	// delegate lists the files writable at the view root.
	delegate map[string]bool
	// v1 judges a cgroup v1 hierarchy, which has no containment of its
	// own in the kernel.
	v1 bool
}

// DefaultDelegate is what cgroup v2 lets a delegatee write at its root
// when the host has no /sys/kernel/cgroup/delegate.
var DefaultDelegate = []string{"cgroup.procs", "cgroup.threads", "cgroup.subtree_control"}

// NewPolicy returns the policy of a view owned by the user namespace
// chain owner (see UserNSChainOf); rootWritable names the files writable
// at the view root (the host's /sys/kernel/cgroup/delegate).
func NewPolicy(owner []UserNSLink, rootWritable []string) *Policy {
	p := &Policy{owner: owner, delegate: map[string]bool{}}
	for _, f := range append(rootWritable, DefaultDelegate...) {
		p.delegate[f] = true
	}
	return p
}

// NewPolicyV1 returns the policy of a cgroup v1 hierarchy of a view
// owned by owner: at its root only tasks and cgroup.procs may be
// written; release_agent, notify_on_release and devices.allow are
// refused (see the rules).
func NewPolicyV1(owner []UserNSLink) *Policy {
	return &Policy{owner: owner, v1: true, delegate: map[string]bool{"tasks": true, "cgroup.procs": true}}
}

// level is how deep a namespace chain is below the server's namespace.
func level(chain []UserNSLink) int { return len(chain) - 1 }

// hostAdmin: CAP_SYS_ADMIN in the server's own user namespace. Host
// root keeps full access: it could do all of it on the host directly.
func (p *Policy) hostAdmin(c Caller) bool {
	return level(c.UserNS) == 0 && c.HasCapSysAdmin()
}

// capable reports whether c has CAP_SYS_ADMIN in the owner's user
// namespace, by the kernel's rules (security/commoncap.c cap_capable):
// either c is in that namespace with the capability effective, or c is
// in an ancestor namespace with it effective, or c is in the parent of a
// namespace on the way and is that namespace's owner.
func (p *Policy) capable(c Caller) bool {
	if len(c.UserNS) == 0 {
		return false
	}
	callerNS, callerLevel := c.UserNS[0].NS, level(c.UserNS)
	for i, ns := range p.owner {
		if ns.NS == callerNS {
			return c.HasCapSysAdmin()
		}
		if level(p.owner[i:]) <= callerLevel {
			return false
		}
		if i+1 < len(p.owner) && p.owner[i+1].NS == callerNS && ns.OwnerUID == c.Uid {
			return true
		}
	}
	return false
}

// inside reports whether c is in the owner's user namespace or below.
func (p *Policy) inside(c Caller) bool {
	for _, l := range c.UserNS {
		if l.NS == p.owner[0].NS {
			return true
		}
	}
	return false
}

// NoOutsiders is true when every caller is inside the owner's user
// namespace (the owner is the server's own namespace): then a request
// that modes allow needs no caller identification.
func (p *Policy) NoOutsiders() bool { return len(p.owner) == 1 }

func refuse(rule Rule, errno syscall.Errno, c Caller) error {
	return &Refusal{Rule: rule, Errno: errno, Caller: c}
}

// MaySee allows looking at the tree at all (lookup, getattr).
func (p *Policy) MaySee(c Caller) error {
	if p.inside(c) || p.capable(c) {
		return nil
	}
	return refuse(RuleOutsider, unix.EACCES, c)
}

// MayAccess allows want (Read, Write, Exec bits) on a file or directory
// whose shown attributes are st.
func (p *Policy) MayAccess(c Caller, st *unix.Stat_t, want Want) error {
	if err := p.MaySee(c); err != nil {
		return err
	}
	if p.capable(c) || modeAllows(c, st, want) {
		return nil
	}
	return refuse(RuleMode, unix.EACCES, c)
}

// MayRead allows reading a file or listing a directory. When no caller
// can be an outsider and every class may read, the caller is not
// identified at all (a cost of several syscalls per open).
func (p *Policy) MayRead(st *unix.Stat_t, who func() (Caller, error)) error {
	if p.NoOutsiders() && st.Mode&0o444 == 0o444 {
		return nil
	}
	c, err := who()
	if err != nil {
		return err
	}
	return p.MayAccess(c, st, Read)
}

// MayWriteFile allows opening the control file vpath for writing.
func (p *Policy) MayWriteFile(c Caller, vpath string, st *unix.Stat_t) error {
	if err := p.MaySee(c); err != nil {
		return err
	}
	dir, name := path.Split(vpath)
	if p.v1 && name == "cgroup.event_control" {
		return refuse(RuleV1EventControl, unix.EPERM, c)
	}
	if p.v1 && !p.hostAdmin(c) {
		switch {
		case name == "release_agent" || name == "notify_on_release":
			return refuse(RuleV1ReleaseAgent, unix.EPERM, c)
		case name == "devices.allow" && dir != "":
			return refuse(RuleV1DevicesAllow, unix.EPERM, c)
		}
	}
	if dir == "" && !p.delegate[name] && !p.hostAdmin(c) {
		return refuse(RuleRootLocked, unix.EPERM, c)
	}
	return p.MayAccess(c, st, Write)
}

// MayChangeEntries allows mkdir or rmdir in the directory whose shown
// attributes are dir: write and search permission on it.
func (p *Policy) MayChangeEntries(c Caller, dir *unix.Stat_t) error {
	return p.MayAccess(c, dir, Write|Exec)
}

// MayChmod allows chmod (and utimes) of vpath: its owner or a
// privileged caller, never at the view root.
func (p *Policy) MayChmod(c Caller, vpath string, st *unix.Stat_t) error {
	if err := p.MaySee(c); err != nil {
		return err
	}
	if atRoot(vpath, st) && !p.hostAdmin(c) {
		return refuse(RuleRootLocked, unix.EPERM, c)
	}
	if p.capable(c) || c.Uid == st.Uid {
		return nil
	}
	return refuse(RuleNotOwner, unix.EPERM, c)
}

// MayChown allows chown of vpath: a privileged caller, never at the
// view root.
func (p *Policy) MayChown(c Caller, vpath string, st *unix.Stat_t) error {
	if err := p.MaySee(c); err != nil {
		return err
	}
	if atRoot(vpath, st) && !p.hostAdmin(c) {
		return refuse(RuleRootLocked, unix.EPERM, c)
	}
	if p.capable(c) {
		return nil
	}
	return refuse(RuleNotOwner, unix.EPERM, c)
}

// MayMigrate allows opener (who opened the destination's cgroup.procs or
// cgroup.threads) to move a task from the virtual cgroup from to to. A
// caller without CAP_SYS_ADMIN over the owner namespace also needs write
// access to the common ancestor's cgroup.procs, whose shown attributes
// procsOf returns.
func (p *Policy) MayMigrate(opener Caller, from, to string, procsOf func(cgroup string) (unix.Stat_t, error)) error {
	if p.capable(opener) {
		return nil
	}
	common := commonAncestor(from, to)
	st, err := procsOf(common)
	if err != nil {
		return err
	}
	if !modeAllows(opener, &st, Write) {
		return refuse(RuleCommonAncestor, unix.EACCES, opener)
	}
	return nil
}

// commonAncestor of two virtual cgroup paths ("" is the root).
func commonAncestor(a, b string) string {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	if a == "" || b == "" {
		return ""
	}
	var common []string
	for i := 0; i < len(as) && i < len(bs) && as[i] == bs[i]; i++ {
		common = append(common, as[i])
	}
	return strings.Join(common, "/")
}

// atRoot: the view root itself or a control file in it (its child
// cgroups are the container's own).
func atRoot(vpath string, st *unix.Stat_t) bool {
	dir, _ := path.Split(vpath)
	return vpath == "" || (dir == "" && st.Mode&unix.S_IFMT != unix.S_IFDIR)
}

// modeAllows is generic_permission's mode check on the shown ids (the
// caller's supplementary groups are not considered).
func modeAllows(c Caller, st *unix.Stat_t, want Want) bool {
	perm := st.Mode & 0o7
	switch {
	case c.Uid == st.Uid:
		perm = (st.Mode >> 6) & 0o7
	case c.Gid == st.Gid:
		perm = (st.Mode >> 3) & 0o7
	}
	return Want(perm)&want == want
}
