// Package agent answers the syscalls of a container's processes that must
// find /sys/fs/cgroup as a host's cgroupfs: a seccomp user-notification
// filter installed before the container's command runs, and the agent that
// serves its listener.
//
// Install (filter.go) puts a small classic-BPF filter on the calling
// process. On x86_64 it sends statfs, fstatfs and mount to the listener,
// makes clone3 and fsopen fail with ENOSYS (callers fall back to clone or
// fork plus cgroup.procs, and to mount(2)) and lets everything else
// through. The filter only looks at the architecture and the syscall
// number, so the kernel's per-syscall action cache lets every other
// syscall through without running it at all.
//
// Serve (agent.go) receives the notifications. A statfs or fstatfs of a
// file that Config.Magic calls a view is answered with the file's real
// statfs and the f_type Magic gives (statfs.go); a mount of a cgroup
// filesystem goes to Config.Mounter (mount.go). Everything else is
// continued: the kernel runs the syscall as if there were no filter.
//
// The agent reads and writes the caller's memory through /proc/TID/mem and
// resolves its paths from /proc/TID/root and /proc/TID/cwd (caller.go),
// opening those files before checking that the notification is still
// alive, as seccomp_unotify(2) recommends, so that a reused thread id can
// never make it act on another process.
//
// ServeLXCProxy (lxcproxy.go) gives the same answers to LXC containers:
// it serves the socket lxc.seccomp.notify.proxy names, where LXC's monitor,
// which keeps the listener, forwards each notification with /proc/PID,
// /proc/PID/mem and the listener itself, and sends the kernel the
// response the agent replies.
//
// Only x86_64 callers are answered: a 32-bit (i386) program's statfs,
// fstatfs, statfs64, fstatfs64 and mount reach the kernel unchanged, so it
// sees the FUSE magic; x32 syscalls fail with ENOSYS.
package agent
