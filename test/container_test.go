package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A container here is the test binary in helper mode, started in new
// user, mount, pid and cgroup namespaces (uid 0 inside mapped to a host
// range), inside a host cgroup. It reads one JSON array per line on stdin
// (an operation and its arguments) and answers one JSON string per line.

const containerMode = "container"

// container is a running container helper.
type container struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startContainer starts a container whose root is host uid/gid base
// (65536 ids mapped), in host cgroup cgroupDir.
func startContainer(t testing.TB, cgroupDir string, base int) *container {
	t.Helper()
	fd, err := unix.Open(cgroupDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(helperBin)
	cmd.Env = append(os.Environ(), helperEnv+"="+containerMode)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// The mount namespace comes at attach (unshare), so that it is a
		// copy made after the view was mounted.
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWCGROUP,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}},
		// Let the container's root change groups, as a real one can.
		GidMappingsEnableSetgroups: true,
		Credential:                 &syscall.Credential{Uid: 0, Gid: 0},
		UseCgroupFD:                true,
		CgroupFD:                   fd,
		Pdeathsig:                  syscall.SIGKILL,
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &container{cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

// pid is the container init's host pid.
func (c *container) pid() int { return c.cmd.Process.Pid }

// do runs one operation in the container and returns its answer.
func (c *container) do(t testing.TB, op ...string) string {
	t.Helper()
	b, _ := json.Marshal(op)
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		t.Fatalf("container %v: %v", op, err)
	}
	if !c.out.Scan() {
		t.Fatalf("container %v: no answer (%v)", op, c.out.Err())
	}
	var ans string
	if err := json.Unmarshal(c.out.Bytes(), &ans); err != nil {
		t.Fatalf("container %v: bad answer %q", op, c.out.Text())
	}
	return ans
}

// expect runs op and checks its answer.
func (c *container) expect(t testing.TB, want string, op ...string) {
	t.Helper()
	if got := c.do(t, op...); got != want {
		t.Errorf("in container: %q = %q, want %q", op, got, want)
	}
}

// containerMain serves operations inside the namespaces. Everything runs
// on one locked OS thread: its mount namespace is unshared at attach.
func containerMain() int {
	runtime.LockOSThread()
	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var op []string
		if err := json.Unmarshal(in.Bytes(), &op); err != nil || len(op) == 0 {
			return 2
		}
		ans := containerOp(op, &children)
		b, _ := json.Marshal(ans)
		os.Stdout.Write(append(b, '\n'))
	}
	return 0
}

func errAnswer(err error) string {
	if err == nil {
		return "OK"
	}
	if n := unix.ErrnoName(errnoOf(err)); n != "" {
		return n
	}
	return err.Error()
}

// heldFds are the files "openhold" keeps open.
var heldFds []int

// bg is the write "bgwrite" started, and its output.
var bg struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func containerOp(op []string, children *[]*exec.Cmd) string {
	arg := func(i int) string {
		if i < len(op) {
			return op[i]
		}
		return ""
	}
	switch op[0] {
	case "attach":
		// The view becomes this container's /sys/fs/cgroup, and /proc
		// shows its own pid namespace.
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return "unshare: " + err.Error()
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return "make-private: " + err.Error()
		}
		if arg(2) != "" {
			// The host's own cgroup directory, for comparisons.
			if err := unix.Mount(arg(2), arg(3), "", unix.MS_BIND, ""); err != nil {
				return "bind native: " + err.Error()
			}
		}
		if err := unix.Mount(arg(1), "/sys/fs/cgroup", "", unix.MS_BIND, ""); err != nil {
			return "bind: " + err.Error()
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return "proc: " + err.Error()
		}
		return "OK"
	case "read":
		b, err := os.ReadFile(arg(1))
		if err != nil {
			return errAnswer(err)
		}
		return "OK" + string(b)
	case "write":
		return errAnswer(writeFile(arg(1), arg(2)))
	case "bgwrite":
		// Starts "write PATH DATA" in a child process (forked from this
		// thread: it shares the view) and answers at once; bgwait waits.
		bg.cmd = exec.Command("/proc/self/exe", "write", arg(1), arg(2))
		bg.cmd.Env = append(os.Environ(), helperEnv+"=1")
		bg.out = &bytes.Buffer{}
		bg.cmd.Stdout = bg.out
		if err := bg.cmd.Start(); err != nil {
			return err.Error()
		}
		return "OK"
	case "bgwait":
		if bg.cmd == nil {
			return "no bgwrite"
		}
		_ = bg.cmd.Wait()
		bg.cmd = nil
		return strings.TrimSpace(bg.out.String())
	case "killreap":
		// Kills a child "spawn" made and reaps it: its id is free then.
		pid, _ := strconv.Atoi(arg(1))
		for i, c := range *children {
			if c.Process.Pid == pid {
				_ = c.Process.Kill()
				_ = c.Wait()
				*children = append((*children)[:i], (*children)[i+1:]...)
				return "OK"
			}
		}
		return "no such child"
	case "forkat":
		// Spawns a child that gets id N in this pid namespace, exactly:
		// forkat BIN N runs testdata/forkat.c's BIN, which asks clone3
		// for the id (set_tid, as checkpoint/restore does). Setting
		// ns_last_pid instead would race every thread any Go process in
		// the namespace starts meanwhile.
		cmd := exec.Command(arg(2), arg(1), "sleep", "1000")
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err.Error()
		}
		if err := cmd.Start(); err != nil {
			return err.Error()
		}
		*children = append(*children, cmd)
		line, _ := bufio.NewReader(out).ReadString('\n')
		got, ok := strings.CutPrefix(strings.TrimSpace(line), "started ")
		if !ok {
			return "forkat: " + strings.TrimSpace(line)
		}
		return got
	case "readloopall":
		// Reads PATH N times; answers OK and the last answer's errno.
		n, _ := strconv.Atoi(arg(2))
		var err error
		for range n {
			_, err = os.ReadFile(arg(1))
		}
		return errAnswer(err)
	case "mkdirmany":
		// Makes DIR/c0 ... DIR/c(N-1); answers "OK N", or the errno and
		// how many were made before it.
		n, _ := strconv.Atoi(arg(2))
		for i := range n {
			if err := unix.Mkdir(fmt.Sprintf("%s/c%d", arg(1), i), 0o755); err != nil {
				return fmt.Sprintf("%s %d", errAnswer(err), i)
			}
		}
		return fmt.Sprintf("OK %d", n)
	case "newcgroupns":
		// A cgroup namespace of its own, rooted where this thread is now
		// in every hierarchy (the container's root may, as an attacker
		// would before mounting cgroupfs itself).
		return errAnswer(unix.Unshare(unix.CLONE_NEWCGROUP))
	case "nativemount":
		// Mounts cgroupfs itself: nativemount FSTYPE OPTIONS DIR.
		return errAnswer(unix.Mount("none", arg(3), arg(1), 0, arg(2)))
	case "writeloop":
		// Writes DATA to PATH N times; answers the last result and how
		// many writes gave it.
		n, _ := strconv.Atoi(arg(3))
		last, same := "", 0
		for range n {
			got := errAnswer(writeFile(arg(1), arg(2)))
			if got != last {
				last, same = got, 0
			}
			same++
		}
		return fmt.Sprintf("%s %d", last, same)
	case "openhold":
		// Opens PATH with open(2) flags FLAGS (decimal) N times and keeps
		// the files open; answers "OK n", or the errno and how many
		// opened before it.
		flags, _ := strconv.Atoi(arg(2))
		n, _ := strconv.Atoi(arg(3))
		for i := range n {
			fd, err := unix.Open(arg(1), flags|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Sprintf("%s %d", errAnswer(err), i)
			}
			heldFds = append(heldFds, fd)
		}
		return fmt.Sprintf("OK %d", n)
	case "closeheld":
		for _, fd := range heldFds {
			unix.Close(fd)
		}
		heldFds = nil
		return "OK"
	case "truncwrite":
		// As runtimes write control files: O_WRONLY|O_TRUNC.
		f, err := os.OpenFile(arg(1), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return errAnswer(err)
		}
		_, err = f.Write([]byte(arg(2)))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return errAnswer(err)
	case "mkdir":
		return errAnswer(unix.Mkdir(arg(1), 0o755))
	case "rmdir":
		return errAnswer(unix.Rmdir(arg(1)))
	case "symlink":
		return errAnswer(unix.Symlink(arg(1), arg(2)))
	case "chown":
		uid, _ := strconv.Atoi(arg(2))
		gid, _ := strconv.Atoi(arg(3))
		return errAnswer(unix.Lchown(arg(1), uid, gid))
	case "chownR":
		uid, _ := strconv.Atoi(arg(2))
		gid, _ := strconv.Atoi(arg(3))
		entries, err := os.ReadDir(arg(1))
		if err != nil {
			return errAnswer(err)
		}
		if err := unix.Lchown(arg(1), uid, gid); err != nil {
			return errAnswer(err)
		}
		for _, e := range entries {
			if err := unix.Lchown(arg(1)+"/"+e.Name(), uid, gid); err != nil {
				return errAnswer(err)
			}
		}
		return "OK"
	case "chmod":
		mode, _ := strconv.ParseUint(arg(2), 8, 32)
		return errAnswer(unix.Chmod(arg(1), uint32(mode)))
	case "stat":
		var st unix.Stat_t
		if err := unix.Lstat(arg(1), &st); err != nil {
			return errAnswer(err)
		}
		return fmt.Sprintf("%d:%d %o", st.Uid, st.Gid, st.Mode&0o7777)
	case "setuid":
		id, _ := strconv.Atoi(arg(1))
		if err := syscall.Setresgid(id, id, id); err != nil {
			return err.Error()
		}
		return errAnswer(syscall.Setresuid(id, id, id))
	case "ls":
		// The directories (child cgroups) in a directory, sorted.
		entries, err := os.ReadDir(arg(1))
		if err != nil {
			return errAnswer(err)
		}
		var dirs []string
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, e.Name())
			}
		}
		return strings.Join(dirs, " ")
	case "mountinfo":
		b, _ := os.ReadFile("/proc/self/mountinfo")
		return string(b)
	case "pid":
		return strconv.Itoa(os.Getpid())
	case "cgroup":
		b, err := os.ReadFile("/proc/self/cgroup")
		if err != nil {
			return errAnswer(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "0::") {
				return line
			}
		}
		return "no cgroup2 line"
	case "spawn":
		// A long-lived child in this container; answers its pid here.
		cmd := exec.Command("sleep", "1000")
		if err := cmd.Start(); err != nil {
			return err.Error()
		}
		*children = append(*children, cmd)
		return strconv.Itoa(cmd.Process.Pid)
	case "threads":
		// A process here holding N extra threads; answers "pid tid...".
		cmd := exec.Command("/proc/self/exe", "hold-threads", arg(1))
		cmd.Env = append(os.Environ(), helperEnv+"=1")
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return err.Error()
		}
		_ = stdin // closed when the container exits
		*children = append(*children, cmd)
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(line)
	case "ps":
		// Every task of this pid namespace with its cgroup2 path.
		entries, _ := os.ReadDir("/proc")
		var lines []string
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if p, ok := strings.CutPrefix(l, "0::"); ok {
					lines = append(lines, e.Name()+" "+p)
				}
			}
		}
		return strings.Join(lines, "\n")
	case "readloop":
		// Reads a file N times; answers ns per read.
		n, _ := strconv.Atoi(arg(2))
		buf := make([]byte, 1<<20)
		start := time.Now()
		for range n {
			fd, err := unix.Open(arg(1), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return errAnswer(err)
			}
			for {
				m, err := unix.Read(fd, buf)
				if err != nil {
					unix.Close(fd)
					return errAnswer(err)
				}
				if m == 0 {
					break
				}
			}
			unix.Close(fd)
		}
		return strconv.FormatInt(time.Since(start).Nanoseconds()/int64(max(n, 1)), 10)
	case "forklimit", "alloc":
		// One-shot helpers that move themselves into a cgroup and then
		// fork or allocate; they answer how it went.
		return oneShot(nil, op...)
	case "newpidns":
		// Run the rest as a one-shot helper in a new pid namespace
		// nested in this one.
		return oneShot(&syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}, op[1:]...)
	case "as":
		// Run the rest as a one-shot helper as user UID here.
		id, _ := strconv.Atoi(arg(1))
		return oneShot(&syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(id), Gid: uint32(id)}}, op[2:]...)
	case "nested":
		// Run the rest as root of a user namespace nested in this one,
		// root there mapped to UID here.
		id, _ := strconv.Atoi(arg(1))
		return oneShot(&syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: id, Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: id, Size: 1}},
			Credential:  &syscall.Credential{Uid: 0, Gid: 0},
		}, op[2:]...)
	}
	return "unknown op " + op[0]
}

// containerWithView makes a host cgroup, starts a container in it (root
// mapped to host base), mounts its view with --owner, and attaches the
// view at the container's /sys/fs/cgroup.
func containerWithView(t testing.TB, l lane, base int, extra ...string) (host string, c *container, s *server) {
	t.Helper()
	host = newCgroup(t, l)
	c = startContainer(t, host, base)
	s = mountView(t, host, append([]string{"--owner", strconv.Itoa(c.pid())}, extra...)...)
	if got := c.do(t, "attach", s.mnt); got != "OK" {
		t.Fatalf("attach the view in the container: %s", got)
	}
	return host, c, s
}

// oneShot runs helperMain with args in a child process under attr and
// returns what it printed.
func oneShot(attr *syscall.SysProcAttr, args ...string) string {
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.SysProcAttr = attr
	out, err := cmd.Output()
	if err != nil {
		return "exit: " + err.Error() + " " + strings.TrimSpace(string(out))
	}
	return strings.TrimSpace(string(out))
}
