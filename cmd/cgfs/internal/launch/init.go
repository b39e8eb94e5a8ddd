package launch

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/agent"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/mimic"
)

// initEnv makes the cgfs binary a container's init (see IsInit).
const initEnv = "CGFS_INIT"

// initConfig is what the init of a container does, handed over in
// initEnv.
type initConfig struct {
	Name   string   // the hostname
	Rootfs string   // "" for the host's filesystem
	Cmd    []string // what it becomes
	Env    []string
	Mounts []mimic.Mount
	OwnNet bool // a network namespace of its own: bring its loopback up
	// Console: the command's terminal is a pseudo-terminal of the
	// container's own devpts (Rootfs), whose master goes back to cgfs
	// run ("console").
	Console bool
	// WaitMaps: cgfs run (a user's) writes the id maps once this process
	// exists, and says "mapped" on descriptor 3; the init then starts
	// again (exec), as root of its user namespace with every capability
	// there, which a process of no mapped id could not have kept.
	WaitMaps bool
}

// mappedEnv marks an init that was mapped and started again.
const mappedEnv = "CGFS_INIT_MAPPED"

// IsInit reports whether this process is a container's init; the cgfs
// command then runs InitMain and nothing else.
func IsInit() bool { return os.Getenv(initEnv) != "" }

// InitMain is a container's init, run as root of its new namespaces. It
// waits on descriptor 3 for its view (a detached mount), puts it at
// /sys/fs/cgroup with a fresh /proc (and the root file system, with
// Rootfs), takes a cgroup namespace of its own (rooted at the cgroups
// its parent put it in), and becomes the command. What fails is said on
// descriptor 3; it says "exec" before it execs, and a successful exec
// closes it.
func InitMain() int {
	runtime.LockOSThread() // namespaces and mounts are this thread's
	conn := 3
	fail := func(format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		_, _ = unix.Write(conn, []byte(msg))
		return 127
	}
	var cfg initConfig
	if err := json.Unmarshal([]byte(os.Getenv(initEnv)), &cfg); err != nil || len(cfg.Cmd) == 0 {
		return fail("bad init configuration: %v", err)
	}
	if cfg.WaitMaps && os.Getenv(mappedEnv) == "" {
		buf := make([]byte, 16)
		n, err := unix.Read(conn, buf)
		if err != nil || string(buf[:n]) != "mapped" {
			return 127 // cgfs run said why
		}
		env := append(os.Environ(), mappedEnv+"=1")
		err = syscall.Exec("/proc/self/exe", []string{"cgfs-init"}, env)
		return fail("starting again as root of the container: %v", err)
	}
	if cfg.WaitMaps {
		os.Unsetenv(mappedEnv)
		// The exec may have cleared the parent-death signal: cgfs run's
		// end must still end the container.
		// (Were it gone already, the view it never sends ends this init.)
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			return fail("parent-death signal: %v", err)
		}
	}
	view, err := recvFd(conn)
	if err != nil {
		return fail("waiting for the view: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("making / private: %v", err)
	}
	root := "/"
	if cfg.Rootfs != "" {
		root = cfg.Rootfs
		if err := prepareRootfs(root, cfg.OwnNet); err != nil {
			return fail("%v", err)
		}
		if cfg.Console {
			if err := console(conn, root); err != nil {
				return fail("the container's terminal: %v", err)
			}
		}
	}
	// Rooted where the parent put this process: its own cgroups. The
	// kernel's cgroup mounts below are of this namespace.
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return fail("cgroup namespace: %v", err)
	}
	target := filepath.Join(root, "sys/fs/cgroup")
	if err := placeView(view, target, cfg.Mounts); err != nil {
		return fail("%v", err)
	}
	unix.Close(view)
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fail("mounting /proc: %v", err)
	}
	if cfg.Rootfs != "" {
		if err := pivot(root); err != nil {
			return fail("%v", err)
		}
	}
	if err := unix.Sethostname([]byte(cfg.Name)); err != nil {
		return fail("hostname: %v", err)
	}
	if cfg.OwnNet {
		if err := loopbackUp(); err != nil {
			return fail("the loopback interface: %v", err)
		}
	}
	for _, kv := range cfg.Env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			os.Setenv("PATH", p) // where the command is looked up
		}
	}
	path, err := exec.LookPath(cfg.Cmd[0])
	if err != nil {
		return fail("%v", err)
	}
	// Last: the seccomp filter (statfs answered as on a host's
	// cgroupfs, clone3 ENOSYS), whose listener cgfs run serves.
	listener, err := agent.Install()
	if err != nil {
		return fail("%v", err)
	}
	if err := unix.Sendmsg(conn, []byte("agent"), unix.UnixRights(int(listener.Fd())), nil, 0); err != nil {
		return fail("handing over the seccomp listener: %v", err)
	}
	listener.Close()
	// The command runs once its listener is served (by cgfs run, or
	// the daemon it handed it to): cgfs run says go.
	buf := make([]byte, 8)
	if n, err := unix.Read(conn, buf); err != nil || string(buf[:n]) != "go" {
		return 127
	}
	unix.CloseOnExec(conn)
	// cgfs run set the task limit: what ends this process from here on
	// ends the command (an exec that fails says why after this).
	if _, err := unix.Write(conn, []byte("exec")); err != nil {
		return 127
	}
	err = syscall.Exec(path, cfg.Cmd, cfg.Env)
	return fail("exec %s: %v", path, err)
}

// prepareRootfs makes root a mount of its own with a /dev of its own
// (prepareDev) and a read-only /sys (prepareSys).
func prepareRootfs(root string, ownNet bool) error {
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding the root file system %s: %w", root, err)
	}
	if err := prepareDev(filepath.Join(root, "dev")); err != nil {
		return err
	}
	return prepareSys(filepath.Join(root, "sys"), ownNet)
}

// prepareSys gives the container a sysfs at sys, read-only, as runc and
// Docker give theirs: one of its own network namespace (ownNet), or a
// bind of the host's without what is mounted below it. Nested runtimes
// mount sysfs for their containers again, and the kernel allows that in
// a user namespace only where a sysfs is already fully visible in the
// mount namespace (mount_too_revealing): a tmpfs at /sys left them none.
// Its fs/cgroup, an empty directory of sysfs's own, takes the view.
func prepareSys(sys string, ownNet bool) error {
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if ownNet {
		// Made here, where the host's /sys is still visible, by root of
		// the user namespace that owns the container's network. Read-only
		// is the mount's, not the superblock's: a superblock made
		// read-only would bind every later sysfs mount of the container
		// to be read-only too, which the kernel does not ask of a host.
		if err := unix.Mount("sysfs", sys, "sysfs", flags, ""); err != nil {
			return fmt.Errorf("mounting sysfs at %s: %w", sys, err)
		}
		if err := unix.Mount("", sys, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|flags, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", sys, err)
		}
		return nil
	}
	// The host's network, whose sysfs only host root may mount: the
	// host's own /sys, with what is mounted below it (the kernel lets no
	// user namespace take a mount without what it locked below), all
	// read-only.
	if err := unix.Mount("/sys", sys, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding the host's /sys at %s: %w", sys, err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	if err := unix.MountSetattr(unix.AT_FDCWD, sys, unix.AT_RECURSIVE, attr); err != nil {
		return fmt.Errorf("making %s read-only: %w", sys, err)
	}
	return nil
}

// devNodes are the host's devices a container's /dev has, bound in (a
// user namespace may make no device node of its own), as runc and LXC
// give them.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// prepareDev makes dev the container's own /dev, never the host's: a
// tmpfs with the devNodes, a devpts instance of its own (ptmx a link
// into it), its own shm (a tmpfs, charged to the container's memory) and
// mqueue (of its own ipc namespace), and the usual links.
func prepareDev(dev string) error {
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return fmt.Errorf("the root file system's /dev: %w", err)
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_STRICTATIME, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("a tmpfs at %s: %w", dev, err)
	}
	for _, n := range devNodes {
		p := filepath.Join(dev, n)
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return err
		}
		f.Close()
		if err := unix.Mount("/dev/"+n, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding /dev/%s: %w", n, err)
		}
	}
	for _, m := range []struct {
		dir, fstype, data string
		mode              os.FileMode
		flags             uintptr
	}{
		{"pts", "devpts", "newinstance,ptmxmode=0666,mode=0620", 0o755, unix.MS_NOSUID | unix.MS_NOEXEC},
		{"shm", "tmpfs", "mode=1777,size=65536k", 0o1777, unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"mqueue", "mqueue", "", 0o755, unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	} {
		p := filepath.Join(dev, m.dir)
		if err := os.Mkdir(p, m.mode); err != nil {
			return err
		}
		if err := unix.Mount(m.fstype, p, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s at %s: %w", m.fstype, p, err)
		}
	}
	for name, to := range map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "core": "/proc/kcore"} {
		if err := os.Symlink(to, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	return nil
}

// console makes a pseudo-terminal in the container's own devpts (below
// root) this process's controlling terminal and stdin, stdout and
// stderr, and hands its master back on conn.
func console(conn int, root string) error {
	m, err := os.OpenFile(filepath.Join(root, "dev/pts/ptmx"), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		return err
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		return err
	}
	s, err := unix.Open(filepath.Join(root, "dev/pts", fmt.Sprint(n)), unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	if err := unix.IoctlSetInt(s, unix.TIOCSCTTY, 0); err != nil {
		unix.Close(s)
		return fmt.Errorf("TIOCSCTTY: %w", err)
	}
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(s, fd, 0); err != nil {
			unix.Close(s)
			return err
		}
	}
	unix.Close(s)
	return unix.Sendmsg(conn, []byte("console"), unix.UnixRights(int(m.Fd())), nil, 0)
}

// loopbackUp brings up lo, the one interface of a new network
// namespace, as `ip link set lo up` does.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// pivot makes root the root file system and drops the old one.
func pivot(root string) error {
	old := filepath.Join(root, ".cgfs-oldroot")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err == unix.EINVAL {
		// The one case a careful caller meets: the host runs from its
		// initramfs, whose root no pivot_root may leave.
		return fmt.Errorf("pivot_root to %s: %w (is the host's / the initramfs? --rootfs needs a real root file system)", root, err)
	} else if err != nil {
		return fmt.Errorf("pivot_root to %s: %w", root, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.cgfs-oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("dropping the old root: %w", err)
	}
	return os.Remove("/.cgfs-oldroot")
}

// recvFd receives one descriptor on the socket conn.
func recvFd(conn int) (int, error) {
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		_, oobn, _, _, err := unix.Recvmsg(conn, buf, oob, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, err
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			return -1, fmt.Errorf("no descriptor came")
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			return -1, fmt.Errorf("no descriptor came")
		}
		return fds[0], nil
	}
}
