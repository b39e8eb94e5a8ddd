package translate

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate/host"
)

// The leaf path. A process that cgfs keeps in the hidden leaf of D reads
// "0::/D/.cgfs-leaf" in /proc/self/cgroup: the kernel shows host paths
// below the cgroup namespace's root, leaves included. So that a runtime
// looking up its own memory.max or cpu.max by that path finds them,
// D/.cgfs-leaf may be looked up by that exact name (never listed) while D
// has a leaf. It shows D's interface files as D shows them (the merged
// content, D's limits), read-only, and no cgroups: nothing can be made,
// removed, moved, written or raised through it (EPERM, RuleLeafPath).
//
// Its inodes are D's with LeafPathIno added, so that no inode has two
// paths (a directory cannot; a file's path decides how it is judged).

// RuleLeafPath: a change through the leaf path, which is read-only
// (EPERM).
const RuleLeafPath access.Rule = "leaf-path"

// LeafPathIno is added to the inode numbers shown below a leaf path.
// Host cgroup inode numbers stay far below it (kernfs ids count up from
// 1), and InoBase sets bits above it.
const LeafPathIno = 1 << 47

var errLeafPath = refuse(RuleLeafPath, unix.EPERM, "the leaf path shows its cgroup read-only")

// leafPath splits a virtual path through a leaf path: real is the path it
// shows (D for "D/.cgfs-leaf", D/f for "D/.cgfs-leaf/f") and through
// tells whether it went through one. A leaf path of a cgroup without a
// leaf, or anything below a leaf path but its cgroup's files, does not
// exist (ENOENT).
func (v *View) leafPath(vpath string) (real string, through bool, err error) {
	if !strings.Contains(vpath, LeafName) {
		return vpath, false, nil // the common case, with no allocation
	}
	parts := strings.Split(vpath, "/")
	for i, p := range parts {
		if p != LeafName {
			continue
		}
		dir := strings.Join(parts[:i], "/")
		rest := parts[i+1:]
		if len(rest) > 1 || !v.hasLeaf(dir) || (len(rest) == 1 && rest[0] == LeafName) {
			return "", true, refuse(RuleReservedName, unix.ENOENT, "no leaf path "+vpath)
		}
		if len(rest) == 0 {
			return dir, true, nil
		}
		return host.Join(dir, rest[0]), true, nil
	}
	return vpath, false, nil
}

// leafPathStat is what a leaf path shows for real (a path leafPath
// returned): D's attributes (for the leaf path itself, a directory of
// its own inode) with no write permission.
func (v *View) leafPathStat(real string, isLeafDir bool) (unix.Stat_t, error) {
	st, err := v.stat(real)
	if err != nil {
		return st, err
	}
	if isLeafDir {
		leaf, err := v.host.Stat(host.Join(real, LeafName))
		if err != nil {
			return st, err
		}
		st.Ino = leaf.Ino + v.inoBase
	} else if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		// A leaf holds no cgroups.
		return st, refuse(RuleReservedName, unix.ENOENT, "a leaf path holds no cgroups")
	} else {
		st.Ino += LeafPathIno
	}
	st.Mode &^= 0o222
	return st, nil
}

// isLeafDir tells whether vpath is a leaf path itself ("D/.cgfs-leaf").
func isLeafDir(vpath string) bool {
	return vpath == LeafName || strings.HasSuffix(vpath, "/"+LeafName)
}

// IsEventsFile tells whether name is a file the kernel notifies of
// changes to its content (cgroup.events, memory.events, pids.events,
// memory.events.local, ...): the files waited on with inotify or poll.
func IsEventsFile(name string) bool {
	return strings.HasSuffix(name, ".events") || strings.HasSuffix(name, ".events.local")
}

// EventFiles opens (O_PATH) the host files whose changes change what the
// view shows in the events file vpath: its own host file and, while its
// cgroup has a hidden leaf, the leaf's (the .local files merge it). The
// caller closes them.
func (v *View) EventFiles(vpath string) ([]*os.File, error) {
	real, _, err := v.leafPath(vpath)
	if err != nil {
		return nil, err
	}
	dir, name := split(real)
	if !IsEventsFile(name) {
		return nil, nil
	}
	f, err := v.host.Open(real, unix.O_PATH|unix.O_NOFOLLOW)
	if err != nil {
		return nil, err
	}
	files := []*os.File{f}
	if v.hasLeaf(dir) {
		if lf, err := v.host.Open(host.Join(host.Join(dir, LeafName), name), unix.O_PATH|unix.O_NOFOLLOW); err == nil {
			files = append(files, lf)
		}
	}
	return files, nil
}

// RuleStaleNode: a node the kernel holds from an earlier server names
// nothing this view shows any more (ESTALE, as NFS answers).
const RuleStaleNode access.Rule = "stale-node"

// ErrStale: a node the kernel holds names nothing the view shows.
var ErrStale = refuse(RuleStaleNode, unix.ESTALE, "the node names nothing the view shows")

// Resolve is the virtual path of the file or cgroup the view shows with
// inode number ino: how a server that takes a connection over finds the
// nodes the kernel holds. It names a path only; whoever uses it looks
// every component up as any lookup would (hidden leaves, names, who may
// see), and checks that the inode found is ino. ESTALE: not this view's,
// or gone.
func (v *View) Resolve(ino uint64) (string, error) {
	stale := ErrStale
	if ino < v.inoBase || ino-v.inoBase >= 1<<48 {
		return "", stale
	}
	id := ino - v.inoBase
	through := id&LeafPathIno != 0
	p, err := v.host.PathOf(id &^ LeafPathIno)
	if err != nil {
		return "", err
	}
	parts := strings.Split(p, "/")
	for i, part := range parts {
		// Inside a hidden leaf only the leaf directory itself is shown
		// (as the leaf path); its files show as D's.
		if part == LeafName && (i != len(parts)-1 || through) {
			return "", stale
		}
	}
	if !through {
		return p, nil
	}
	dir, name := split(p)
	if p == "" {
		return "", stale
	}
	return host.Join(host.Join(dir, LeafName), name), nil
}
