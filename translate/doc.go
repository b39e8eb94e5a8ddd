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
// Lock order: View.mu, the view lock, is held alone by everything that
// changes the tree's shape (mkdir, rmdir, leaf changes, limit writes,
// reconciling) and shared by migrations, which the kernel serialises
// itself: a migration never meets a leaf being made or folded, and many
// run at once. Functions named ...Locked run with it held, shared or
// alone; those that change the leaf index or fold (foldLocked,
// leafToThreadRootLocked, moveAllLocked of a whole cgroup) need it
// alone, ensureLeafLocked (idempotent) either way. Under it may be
// taken, in this order: a pidns helper's call slot and its pending
// table (package pidns, never holding a view lock of their own), the
// leaf index's lock, the pid cache's lock (package proc), never the
// reverse. View.nsMu guards the remembered cgroup namespaces and is
// taken alone. File.mu guards one open file's rendered content; it is
// held only while rendering, which takes no view lock.
package translate
