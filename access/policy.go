package access

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Rule names a reason for a refusal, as it appears in host logs.
type Rule string

const (
	// RuleWriteNeedsAdmin: changing the tree (mkdir, rmdir, writing a
	// control file, chmod, chown) needs CAP_SYS_ADMIN in the owner's user
	// namespace or in the server's own.
	RuleWriteNeedsAdmin Rule = "write-needs-cap-sys-admin"
	// RuleMode: an ordinary owner/group/other permission check failed.
	RuleMode Rule = "mode"
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

// Policy judges callers of one view.
type Policy struct {
	owner  NS // user namespace that owns the container
	server NS // the server's own (host) user namespace
}

// NewPolicy returns the policy of a view owned by the user namespace
// owner. server is the server's own user namespace; with no container
// owner, pass it for both.
func NewPolicy(owner, server NS) *Policy {
	return &Policy{owner: owner, server: server}
}

// privileged reports whether c holds CAP_SYS_ADMIN in the owner's user
// namespace or in the server's (host root).
func (p *Policy) privileged(c Caller) bool {
	return c.HasCapSysAdmin() && (c.UserNS == p.owner || c.UserNS == p.server)
}

// MayChange allows a change to the tree: mkdir, rmdir, writing a control
// file, chmod, chown, utimes.
func (p *Policy) MayChange(c Caller) error {
	if p.privileged(c) {
		return nil
	}
	return &Refusal{Rule: RuleWriteNeedsAdmin, Errno: unix.EACCES, Caller: c}
}

// MayChangeAttr allows chmod/chown: the kernel answers EPERM, not EACCES,
// to a caller that may not change a file's attributes.
func (p *Policy) MayChangeAttr(c Caller) error {
	if p.privileged(c) {
		return nil
	}
	return &Refusal{Rule: RuleWriteNeedsAdmin, Errno: unix.EPERM, Caller: c}
}

// MayRead allows reading a file or listing a directory whose host
// attributes are st: privileged callers always, others by mode bits as
// the kernel's generic_permission would (host ids on both sides). The
// caller is only identified (a /proc read) when some class may not read
// the file, which keeps the common open-read-close path free of it.
func (p *Policy) MayRead(st *unix.Stat_t, who func() (Caller, error)) error {
	if st.Mode&0o444 == 0o444 {
		return nil
	}
	c, err := who()
	if err != nil {
		return err
	}
	if p.privileged(c) || modeAllows(c, st, Read) {
		return nil
	}
	return &Refusal{Rule: RuleMode, Errno: unix.EACCES, Caller: c}
}

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
