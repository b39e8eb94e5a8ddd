// Package pidns moves tasks between host cgroups from inside a pid
// namespace, so that a task id a container writes is resolved by the
// kernel in the container's namespace and can never name a process
// outside it, however ids are reused.
//
// A Mover is that namespace's: for a container's, a helper process that
// lives there (the cgfs binary itself, started from a thread that entered
// the namespace), writes the ids to cgroup files beneath the view roots,
// and mounts the namespace's own proc filesystem, through which the
// server pins the task an id names with no walk of any tree. For the
// server's own namespace the Mover is the server itself.
//
// Lock order: each helper's mutex is a leaf, held for one round trip;
// Pool.mu is taken before it, never while it is held.
package pidns
