// Package proc reads host tasks and their namespaces from a proc
// filesystem: tasks pinned by their /proc directory so a reused id never
// answers for them, namespace ancestry (the one NS_GET_PARENT loop), the
// number a task has in each pid namespace (cached for rendering), and the
// cgroups a task is in (the one /proc/PID/cgroup parser).
//
// Lock order: the pid cache's mutex is a leaf; nothing else is locked
// while it is held.
package proc
