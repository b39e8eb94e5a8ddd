package access

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
)

// Rule names a reason for a refusal, as it appears in host logs and
// metrics. The access rules are here; the view names the answers it
// makes itself (reserved names, container limits, ...) with rules of its
// own.
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
	// delegated files (cgroup.procs, cgroup.threads,
	// cgroup.subtree_control, the host's /sys/kernel/cgroup/delegate) may
	// be written there. EPERM.
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
	// RuleV1TaskOwner: on cgroup v1 a writer who is not root may move
	// only tasks whose real or saved uid is its own (the kernel's
	// __cgroup1_procs_write); root of the owner namespace may move any.
	// EACCES.
	RuleV1TaskOwner Rule = "v1-task-owner"
	// RuleNotOwner: only the file's owner or a privileged caller may
	// chmod; only a privileged caller may chown. EPERM.
	RuleNotOwner Rule = "not-owner"
)

// Refusal is an answer cgfs gives instead of the host: refused by an
// access rule, or made by cgfs itself as the kernel would. The container
// sees only Errno; the host log gets the rule, the detail and the caller.
type Refusal struct {
	Rule   Rule
	Errno  syscall.Errno
	Detail string  // what the host log says besides the rule; may be empty
	Caller *Caller // who was refused, when identified
}

func (r *Refusal) Error() string {
	s := fmt.Sprintf("refused by rule %s: %v", r.Rule, r.Errno)
	if r.Detail != "" {
		s += ": " + r.Detail
	}
	if r.Caller != nil {
		s += " (" + r.Caller.String() + ")"
	}
	return s
}

func (r *Refusal) Unwrap() error { return r.Errno }

// Refuse is a refusal by rule with errno; detail is for the host log.
func Refuse(rule Rule, errno syscall.Errno, detail string) *Refusal {
	return &Refusal{Rule: rule, Errno: errno, Detail: detail}
}

func refuse(rule Rule, errno syscall.Errno, c Caller) error {
	return &Refusal{Rule: rule, Errno: errno, Caller: &c}
}

// Want is the access a request asks for, as in access(2).
type Want uint32

const (
	Read  Want = 4
	Write Want = 2
	Exec  Want = 1
)

// Policy judges the callers of one view. It knows no paths: the view
// tells it the facts of what a request touches.
type Policy struct {
	// owner is the user namespace owning the container, then its
	// ancestors; the last is the server's own.
	owner []proc.Ancestor
	// mapped, when set, says which host ids the owner namespace maps:
	// CAP_SYS_ADMIN over it then overrides a file's mode only where both
	// of the file's ids are mapped, as the kernel's
	// capable_wrt_inode_uidgid allows. Nil: the view shows no id its
	// owner namespace does not map (a container's own view).
	mapped Mapping
}

// Mapping says which host ids a user namespace maps.
type Mapping interface {
	UIDMapped(uid uint32) bool
	GIDMapped(gid uint32) bool
}

// NewPolicy returns the policy of a view owned by the user namespace
// chain owner (see proc.UserNSAncestry).
func NewPolicy(owner []proc.Ancestor) *Policy {
	return &Policy{owner: owner}
}

// NewNestedPolicy is the policy of a view owned by owner whose files
// may show ids owner does not map (mapped says which it does): a nested
// view, owned by a user namespace below the container's. Its privileged
// callers override the mode only of files whose ids it maps; of the
// others they get what the mode gives their own ids, as on the kernel's
// cgroupfs.
func NewNestedPolicy(owner []proc.Ancestor, mapped Mapping) *Policy {
	return &Policy{owner: owner, mapped: mapped}
}

// CapableOver reports whether c has CAP_SYS_ADMIN over the user
// namespace ns (the namespace, then its ancestors), by the kernel's
// rules (security/commoncap.c cap_capable): what a mount needs of the
// namespace that owns the caller's mount or cgroup namespace.
func CapableOver(c Caller, ns []proc.Ancestor) bool {
	return (&Policy{owner: ns}).capable(c)
}

// File is what a write to a control file touches, as the view describes
// it.
type File struct {
	Attr *unix.Stat_t // the attributes the view shows
	// AtRoot: the file is one of the view root's (the root's own
	// resource controls belong to the parent).
	AtRoot bool
	// Delegated: writable at the view root by the container, as cgroup
	// v2 delegation allows (cgroup.procs, ...).
	Delegated bool
	// Guard, when set, refuses the file to every caller but host root;
	// GuardAll to host root too.
	Guard    Rule
	GuardAll bool
}

// level is how deep a namespace chain is below the server's namespace.
func level(chain []proc.Ancestor) int { return len(chain) - 1 }

// hostAdmin: CAP_SYS_ADMIN in the server's own user namespace. Host
// root keeps full access: it could do all of it on the host directly.
func hostAdmin(c Caller) bool {
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

// privileged reports whether c may override the mode of a file whose
// shown owner and group are uid and gid: host root always;
// CAP_SYS_ADMIN over the owner namespace where that namespace maps both.
func (p *Policy) privileged(c Caller, uid, gid uint32) bool {
	if hostAdmin(c) {
		return true
	}
	return p.capable(c) && (p.mapped == nil || p.mapped.UIDMapped(uid) && p.mapped.GIDMapped(gid))
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

// noOutsiders is true when every caller is inside the owner's user
// namespace (the owner is the server's own namespace): then a request
// that modes allow needs no caller identification.
func (p *Policy) noOutsiders() bool { return len(p.owner) == 1 }

func (p *Policy) maySee(c Caller) error {
	if p.inside(c) || p.capable(c) {
		return nil
	}
	return refuse(RuleOutsider, unix.EACCES, c)
}

// MaySee allows looking at the tree at all (lookup, getattr). With no
// possible outsiders nobody is identified.
func (p *Policy) MaySee(r *Request) error {
	if p.noOutsiders() {
		return nil
	}
	c, err := r.Caller()
	if err != nil {
		return err
	}
	return p.maySee(c)
}

// mayAccess allows want (Read, Write, Exec bits) on a file or directory
// whose shown attributes are st.
func (p *Policy) mayAccess(c Caller, st *unix.Stat_t, want Want) error {
	if err := p.maySee(c); err != nil {
		return err
	}
	if p.privileged(c, st.Uid, st.Gid) || modeAllows(c, st, want) {
		return nil
	}
	return refuse(RuleMode, unix.EACCES, c)
}

// MayRead allows reading a file or listing a directory whose shown
// attributes are st. When no caller can be an outsider and every class
// may read, the caller is not identified at all.
func (p *Policy) MayRead(r *Request, st *unix.Stat_t) error {
	if p.noOutsiders() && st.Mode&0o444 == 0o444 {
		return nil
	}
	c, err := r.Caller()
	if err != nil {
		return err
	}
	return p.mayAccess(c, st, Read)
}

// MayWrite allows opening the control file f for writing.
func (p *Policy) MayWrite(r *Request, f File) error {
	c, err := r.Caller()
	if err != nil {
		return err
	}
	if err := p.maySee(c); err != nil {
		return err
	}
	if f.Guard != "" && (f.GuardAll || !hostAdmin(c)) {
		return refuse(f.Guard, unix.EPERM, c)
	}
	if f.AtRoot && !f.Delegated && !hostAdmin(c) {
		return refuse(RuleRootLocked, unix.EPERM, c)
	}
	return p.mayAccess(c, f.Attr, Write)
}

// MayChangeEntries allows mkdir, rmdir or rename in the directory whose
// shown attributes are dir: write and search permission on it.
func (p *Policy) MayChangeEntries(r *Request, dir *unix.Stat_t) error {
	c, err := r.Caller()
	if err != nil {
		return err
	}
	return p.mayAccess(c, dir, Write|Exec)
}

// MayChmod allows chmod (and utimes) of a file or cgroup: its owner or a
// privileged caller, never at the view root (the root itself or its
// files).
func (p *Policy) MayChmod(r *Request, st *unix.Stat_t, atRoot bool) error {
	c, err := r.Caller()
	if err != nil {
		return err
	}
	if err := p.maySee(c); err != nil {
		return err
	}
	if atRoot && !hostAdmin(c) {
		return refuse(RuleRootLocked, unix.EPERM, c)
	}
	if p.privileged(c, st.Uid, st.Gid) || c.Uid == st.Uid {
		return nil
	}
	return refuse(RuleNotOwner, unix.EPERM, c)
}

// MayChown allows chown of a file or cgroup: a privileged caller, never
// at the view root.
func (p *Policy) MayChown(r *Request, st *unix.Stat_t, atRoot bool) error {
	c, err := r.Caller()
	if err != nil {
		return err
	}
	if err := p.maySee(c); err != nil {
		return err
	}
	if atRoot && !hostAdmin(c) {
		return refuse(RuleRootLocked, unix.EPERM, c)
	}
	if p.privileged(c, st.Uid, st.Gid) {
		return nil
	}
	return refuse(RuleNotOwner, unix.EPERM, c)
}

// MayMigrate allows opener (who opened the destination's cgroup.procs or
// cgroup.threads: the kernel judges migrations with the opener's
// credentials) to move a task whose source and destination cgroups have
// a common ancestor whose cgroup.procs shows attributes common. A caller
// without CAP_SYS_ADMIN over the owner namespace needs write access to
// it.
func (p *Policy) MayMigrate(opener Caller, common *unix.Stat_t) error {
	if p.privileged(opener, common.Uid, common.Gid) || modeAllows(opener, common, Write) {
		return nil
	}
	return refuse(RuleCommonAncestor, unix.EACCES, opener)
}

// MayMoveV1Task allows opener to move, on cgroup v1, a task whose real
// and saved uids (host ids) are uid and suid: the kernel's rule for
// writers that are not root, with the owner namespace's root as root.
func (p *Policy) MayMoveV1Task(opener Caller, uid, suid uint32) error {
	if hostAdmin(opener) || p.capable(opener) && (p.mapped == nil || p.mapped.UIDMapped(uid) && p.mapped.UIDMapped(suid)) ||
		opener.Uid == uid || opener.Uid == suid {
		return nil
	}
	return refuse(RuleV1TaskOwner, unix.EACCES, opener)
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
