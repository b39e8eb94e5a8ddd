package translate

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate/host"
)

// The answers cgfs makes itself, as the kernel would, each counted and
// logged under its rule like an access refusal.
const (
	// RuleBadName: a name the kernel refuses for a cgroup ('\n', '/',
	// "." or "..": EINVAL) or longer than NAME_MAX (ENAMETOOLONG).
	RuleBadName access.Rule = "bad-name"
	// RuleReservedName: the hidden leaves' name; to the container it
	// does not exist (ENOENT) and cannot be made (EINVAL).
	RuleReservedName access.Rule = "reserved-name"
	// RuleContainerLimit: a mkdir past a cgroup.max.descendants or
	// cgroup.max.depth the container set (EAGAIN, as
	// cgroup_check_hierarchy_limits answers).
	RuleContainerLimit access.Rule = "container-limit"
	// RuleOnlyDirectories: cgroupfs makes nothing but directories
	// (EACCES for open(O_CREAT), EPERM for symlink, link, mknod, unlink).
	RuleOnlyDirectories access.Rule = "only-directories"
	// RuleLayoutRoot: the root of a v1 or hybrid layout is the host's
	// (EACCES, as the host's root-owned tmpfs answers).
	RuleLayoutRoot access.Rule = "layout-root"
	// RuleWriteSize: a write larger than a page (E2BIG, as kernfs's
	// atomic_write_len answers cgroup files).
	RuleWriteSize access.Rule = "write-size"
	// RuleBadValue: text the kernel's parser would refuse (EINVAL, or
	// ERANGE for a number out of range).
	RuleBadValue access.Rule = "bad-value"
	// RuleOpenerNamespace: a task write whose task or destination is
	// outside the cgroup namespace the file was opened from (ENOENT, as
	// cgroup_procs_write_permission checks both against the namespace
	// it saved at open).
	RuleOpenerNamespace access.Rule = "opener-cgroupns"
	// RuleNoSuchTask: a written id names no task the writer can see
	// (ESRCH, as find_task_by_vpid failing).
	RuleNoSuchTask access.Rule = "no-such-task"
	// RuleTaskOutside: a written id names a task outside the view
	// (ENOENT, as nsdelegate answers a migration across the namespace
	// root).
	RuleTaskOutside access.Rule = "task-outside-view"
	// RuleUnmappedID: a chown to an id the owner's user namespace does
	// not map (EINVAL, as the kernel answers).
	RuleUnmappedID access.Rule = "unmapped-id"
	// RuleTaskReused: the task a write named exited before the kernel
	// moved it, and another task took its id (ESRCH, as if the kernel
	// had found none); the other task is put back.
	RuleTaskReused access.Rule = "task-reused"
	// RulePidNamespaces: task writes from new pid namespaces faster than
	// the server starts helpers for them (EAGAIN; pidns.HelperStarts).
	RulePidNamespaces access.Rule = "pid-namespaces"
	// RuleV1Descendants: a mkdir past the descendant limit cgfs keeps on
	// v1 views, which have none of their own (EAGAIN).
	RuleV1Descendants access.Rule = "v1-descendants"
	// RuleOpenFiles: the container holds as many open files of its
	// views as it may (ENFILE: the table of this "system" is full).
	RuleOpenFiles access.Rule = "open-files"
	// RuleReadOnly: a hierarchy the host serves read-only, because the
	// owner has no cgroup of its own there (EROFS).
	RuleReadOnly access.Rule = "read-only"
)

var errReadOnly = refuse(RuleReadOnly, unix.EROFS, "the host serves this hierarchy read-only: the owner has no cgroup of its own in it")

func refuse(rule access.Rule, errno syscall.Errno, detail string) error {
	return access.Refuse(rule, errno, detail)
}

// ErrLayoutRoot refuses every change to the root of a v1 or hybrid
// layout.
var ErrLayoutRoot error = access.Refuse(RuleLayoutRoot, unix.EACCES, "the layout root is the host's")

// MaxName is the longest name cgfs accepts for a cgroup (NAME_MAX).
const MaxName = 255

// ValidName checks a single name a container sends. The kernel refuses
// '\n' in cgroup names (EINVAL, kernel/cgroup/cgroup.c cgroup_mkdir, so
// /proc/PID/cgroup stays parseable); cgfs also refuses names longer than
// NAME_MAX (ENAMETOOLONG; kernfs itself would take them) and anything
// that is not one plain component.
func ValidName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return unix.EINVAL
	case len(name) > MaxName:
		return unix.ENAMETOOLONG
	case strings.ContainsAny(name, "/\x00\n"):
		return unix.EINVAL
	}
	return nil
}

// checkName refuses a name a container may not use for a cgroup: not
// one plain component (RuleBadName), or the leaves' (RuleReservedName
// with leafErrno: ENOENT where the name is looked up, EINVAL where it
// would be made).
func checkName(name string, leafErrno syscall.Errno) error {
	if err := ValidName(name); err != nil {
		return refuse(RuleBadName, err.(syscall.Errno), "name "+host.Shorten([]byte(name)))
	}
	if name == LeafName {
		return refuse(RuleReservedName, leafErrno, "reserved for hidden leaves")
	}
	return nil
}
