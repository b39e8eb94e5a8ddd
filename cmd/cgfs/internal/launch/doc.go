// Package launch starts a container: a command as root of new user,
// mount, pid, cgroup, uts and ipc namespaces, in cgroups of its own in
// every hierarchy the host has (limits set on them, which the container
// cannot raise), with a cgfs view at its /sys/fs/cgroup and a fresh
// /proc; and it removes everything it made when the command ends.
package launch
