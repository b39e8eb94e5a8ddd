package translate

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate/host"
)

// cgroup v1 memory notifications (Documentation/admin-guide/cgroup-v1/
// memory.rst: thresholds, OOM control, memory pressure). A writer of
// cgroup.event_control names by number an eventfd of its own and an open
// control file of the same cgroup: "<efd> <cfd> [args]". The kernel
// would look both numbers up in the table of whoever writes the host
// file, the server's. cgfs never does: it takes the writer's own file
// descriptions (pidfd_getfd through the pin of the writing thread, which
// is blocked in its write meanwhile), checks them as the kernel checks
// them, and registers the host's control file with the writer's very
// eventfd on the host cgroup. The kernel then signals the container's
// eventfd itself (containerd's v1 OOM monitor, Docker's OOMKilled), and
// the registration ends when the container closes it: the server keeps
// nothing once the write is answered.
func init() {
	register("cgroup.event_control", &controlFile{write: writeEventControl, delegated: true})
}

// eventFiles are the control files the memory controller notifies on
// (memcg_write_event_control); any other is EINVAL.
var eventFiles = []string{"memory.usage_in_bytes", "memory.memsw.usage_in_bytes", "memory.oom_control", "memory.pressure_level"}

// RuleEventControl: a cgroup.event_control write the kernel would
// refuse: not "<efd> <cfd> [args]" (EINVAL), a descriptor the writer has
// not (EBADF), an efd that is no eventfd or a cfd that is no memory
// control file of the same cgroup (EINVAL), one the writer may not read
// (EACCES).
const RuleEventControl access.Rule = "event-control"

// SetMountDev tells the view the device number of the mount that serves
// it (stat's st_dev of its files).
func (v *View) SetMountDev(dev uint64) { v.dev.Store(dev) }

// parseEventControl parses what memcg_write_event_control takes: the
// text stripped of white space, a decimal efd, one space, a decimal cfd,
// then nothing or one space and the arguments. Digits are read as
// simple_strtoul reads them (none is 0); a number beyond the descriptor
// range names no descriptor (EBADF later).
func parseEventControl(data []byte) (efd, cfd int, args string, ok bool) {
	s := strings.TrimSpace(string(data))
	num := func() int {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		n, err := strconv.ParseInt(s[:i], 10, 32)
		if i == 0 {
			n, err = 0, nil
		}
		s = s[i:]
		if err != nil {
			return -1
		}
		return int(n)
	}
	efd = num()
	if !strings.HasPrefix(s, " ") {
		return 0, 0, "", false
	}
	s = s[1:]
	cfd = num()
	switch {
	case s == "":
	case s[0] == ' ':
		args = s[1:]
	default:
		return 0, 0, "", false
	}
	return efd, cfd, args, true
}

func writeEventControl(f *File, r *access.Request, data []byte) (int, error) {
	efd, cfd, args, ok := parseEventControl(data)
	if !ok {
		return 0, refuse(RuleEventControl, unix.EINVAL, "cgroup.event_control wants \"<eventfd> <control file fd> [args]\"")
	}
	pidfd, err := r.Pidfd()
	if err != nil {
		return 0, err
	}
	defer pidfd.Close()
	efile, err := takeFd(pidfd, efd, "eventfd")
	if err != nil {
		return 0, err
	}
	defer efile.Close()
	if link, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", efile.Fd())); link != "anon_inode:[eventfd]" {
		return 0, refuse(RuleEventControl, unix.EINVAL, fmt.Sprintf("descriptor %d of the writer is no eventfd", efd))
	}
	cfile, err := takeFd(pidfd, cfd, "control file")
	if err != nil {
		return 0, err
	}
	defer cfile.Close()
	name, shown, err := f.v.eventFile(f.cgroup, cfile)
	if err != nil {
		return 0, err
	}
	if err := f.v.policy.MayRead(r, &shown); err != nil {
		return 0, err
	}
	hc, err := f.v.host.Open(host.Join(f.cgroup, name), unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return 0, err
	}
	defer hc.Close()
	line := fmt.Sprintf("%d %d", efile.Fd(), hc.Fd())
	if args != "" {
		line += " " + args
	}
	if _, err := f.v.host.Write(f.host, f.vpath, []byte(line)); err != nil {
		return 0, err // the kernel's answer to the arguments
	}
	return len(data), nil
}

// takeFd duplicates descriptor fd of the thread pidfd names into this
// process (pidfd_getfd): EBADF when it has none.
func takeFd(pidfd *os.File, fd int, what string) (*os.File, error) {
	if fd < 0 {
		return nil, refuse(RuleEventControl, unix.EBADF, fmt.Sprintf("no %s descriptor %d", what, fd))
	}
	got, err := unix.PidfdGetfd(int(pidfd.Fd()), fd, 0)
	switch err {
	case nil:
		return os.NewFile(uintptr(got), what), nil
	case unix.EBADF:
		return nil, refuse(RuleEventControl, unix.EBADF, fmt.Sprintf("the writer has no %s descriptor %d", what, fd))
	case unix.ESRCH:
		return nil, access.ErrGone
	}
	return nil, fmt.Errorf("taking the writer's %s descriptor %d: %w", what, fd, err)
}

// eventFile is the name (and shown attributes) of the memory control
// file of cgroup dir that the open file c is, as the view shows it: a
// file of this mount whose inode number is that file's. Anything else is
// EINVAL, as the kernel answers a cfd of another cgroup or file.
func (v *View) eventFile(dir string, c *os.File) (string, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(c.Fd()), &st); err != nil {
		return "", st, err
	}
	if dev := v.dev.Load(); dev != 0 && st.Dev == dev {
		for _, name := range eventFiles {
			shown, err := v.stat(host.Join(dir, name))
			if err == nil && shown.Ino == st.Ino && st.Mode&unix.S_IFMT == unix.S_IFREG {
				return name, shown, nil
			}
		}
	}
	return "", st, refuse(RuleEventControl, unix.EINVAL, "the control file is no memory.usage_in_bytes, memory.memsw.usage_in_bytes, memory.oom_control or memory.pressure_level of the same cgroup")
}
