// Package translate is a container's view of its cgroup tree, carried
// onto the host hierarchy below the container's cgroup: the cgroup
// semantics cgfs adds on top of the host's (control files computed for
// the reader, hidden leaves that lift the no-internal-process rule,
// limits that leave room for them, migrations named in the writer's pid
// namespace) and, before every host operation, the decision of package
// access.
//
// A view's virtual paths ("" for its root, "a/b" below it) are the host
// paths relative to the view root: the root is the container's host
// cgroup itself, so nothing is mapped but hidden leaves, which the view
// never shows.
//
// Every interface file cgfs does more for than pass through is one
// controlFile value, registered by name in the file of its concern
// (procs.go, subtree.go, limits.go, counters.go, v1.go); files.go holds
// the registry and the open file.
//
// Lock order: View.mu, the view lock, serialises everything that changes
// the tree's shape or moves tasks (mkdir, rmdir, migrations, leaf
// changes, limit writes, reconciling); functions named ...Locked run
// with it held. The pid cache's lock (package proc) may be taken under
// it, never the reverse. File.mu guards one open file's rendered
// content; it is held only while rendering, which takes no view lock.
package translate
