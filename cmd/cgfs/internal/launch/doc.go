// Package launch starts a container: a command as root of new user,
// mount, pid, cgroup, uts, ipc and (unless the host's is asked for)
// network namespaces, in cgroups of its own in every hierarchy the host
// has (limits set on them, which the container cannot raise: made here
// for host root, by the daemon for an unprivileged user, whose ids
// newuidmap maps), with a cgfs view at its /sys/fs/cgroup, a fresh /proc
// and, with a root file system, a /dev of its own; and it removes
// everything it made when the command ends.
package launch
