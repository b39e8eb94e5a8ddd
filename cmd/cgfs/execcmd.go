package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/agent"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/launch"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/layout"
)

const execUsage = `usage: cgfs exec NAME -- CMD...

Runs CMD in the running container NAME: its namespaces, as its root,
and a cgroup the container sees as its root (its hidden leaf when the
root enables domain controllers). Exits with CMD's status.
`

// joinEnv makes the cgfs binary the first thing cgfs exec runs inside a
// container (see joinMain); stageEnv the host process that becomes
// nsenter once it sits in the container's cgroups (see stageMain).
const (
	joinEnv  = "CGFS_EXEC_JOIN"
	stageEnv = "CGFS_EXEC_STAGE"
)

// execCmd is `cgfs exec`. It finds the container's init through whoever
// serves NAME (cgfs run, or the daemon) and starts a stage: this binary
// again, a host process in the container's cgroup namespace and the
// host's other namespaces, where the container can neither see nor
// trace it. The server puts the stage into the container's cgroups (its
// root, or the hidden leaf there), and only then does the stage become
// nsenter, which enters the rest of the container's namespaces (a user
// and a mount namespace are entered only by a process with one thread)
// and forks this binary (a descriptor: no host path exists in there)
// inside the container's pid namespace, which becomes CMD. So nothing
// the container can touch (once in its user namespace, with exec, a
// process is the container root's to ptrace) ever runs outside the
// container's cgroups: a fork injected into it is the container's, as
// everything it starts. nsenter is put back into cgfs exec's own cgroups
// once its child exists.
func execCmd(args []string) (int, error) {
	if len(args) < 2 || args[0] == "--" {
		fmt.Fprint(os.Stderr, execUsage)
		return 0, usageError{"expected NAME -- CMD"}
	}
	name, cmd := args[0], args[1:]
	if cmd[0] == "--" {
		cmd = cmd[1:]
	}
	if len(cmd) == 0 {
		return 0, usageError{"expected a command after --"}
	}
	if os.Geteuid() != 0 {
		return execAsUser(name, cmd)
	}
	socket := control.RunSocket(name)
	a, _, err := control.Ask(socket, control.Request{Op: "lookup", Name: name})
	if errors.Is(err, control.ErrNotRunning) {
		socket = control.DaemonSocket()
		a, _, err = control.Ask(socket, control.Request{Op: "lookup", Name: name})
	}
	if errors.Is(err, control.ErrNotRunning) {
		return 0, usageError{fmt.Sprintf("no container %s: neither cgfs run nor the cgfs daemon serves it", name)}
	}
	if err != nil {
		return 0, err
	}
	if err := a.Err(); err != nil {
		return 0, err
	}
	j, err := newJoining(a.Init, cmd, true)
	if err != nil {
		return 0, err
	}
	defer j.close()
	if err := startInCgroupNS(j.c, a.Init); err != nil {
		return 0, err
	}
	j.started()
	var ea control.Answer
	if ea, _, err = control.Ask(socket, control.Request{Op: "enter", Name: name, Pid: j.c.Process.Pid}); err == nil {
		err = ea.Err()
	}
	if err != nil {
		j.abort()
		return 0, fmt.Errorf("joining the container's cgroups: %w", err)
	}
	j.goOn()
	if _, err := forkedChild(j.c.Process.Pid); err == nil {
		// nsenter's child is the container's now: nsenter, a host
		// process that only waits for it, need not count against the
		// container's limits.
		if err := intoOwnCgroups(j.c.Process.Pid); err != nil {
			fmt.Fprintf(os.Stderr, "cgfs exec: nsenter stays in the container's cgroups: %v\n", err)
		}
	}
	if listener, err := recvListener(j.back); err == nil {
		if aa, _, err := control.AskWith(socket, control.Request{Op: "agent", Name: name}, listener); err != nil || aa.Err() != nil {
			fmt.Fprintf(os.Stderr, "cgfs exec: the container's server does not answer its seccomp listener: %v %v\n", err, aa.Err())
		}
		listener.Close()
	}
	return j.wait()
}

// joining is a command on its way into a container: nsenter (for root,
// behind the stage that becomes it) with this binary to fork inside (a
// descriptor: no host path exists in there), which waits to be told to
// go on (descriptor 4) and hands its seccomp listener back (5).
type joining struct {
	c                    *exec.Cmd
	goWrite, back        *os.File
	self, goRead, theirs *os.File // the child's ends, until it started
}

// newJoining is the command joining init's container to run cmd: behind
// a stage (root's cgfs exec), or nsenter itself, whose child waits to go
// on (a user's).
func newJoining(init int, cmd []string, stage bool) (*joining, error) {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, err
	}
	j := &joining{}
	if j.self, err = os.Open("/proc/self/exe"); err != nil {
		return nil, err
	}
	if j.goRead, j.goWrite, err = os.Pipe(); err != nil {
		j.self.Close()
		return nil, err
	}
	// The joined process hands its seccomp listener back on this pair,
	// for the container's server to answer.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		j.started()
		j.close()
		return nil, err
	}
	j.back, j.theirs = os.NewFile(uintptr(pair[0]), "agent"), os.NewFile(uintptr(pair[1]), "agent")
	args := []string{nsenter, "-t", strconv.Itoa(init), "-U", "-m", "-p", "-u", "-i", "-r", "-w", "--", "/proc/self/fd/3", "--"}
	env := joinEnv + "=wait"
	if stage {
		args, env = append([]string{"/proc/self/exe"}, args...), stageEnv+"=1"
	}
	j.c = exec.Command(args[0], append(args[1:], cmd...)...)
	j.c.Env = append(launch.Env(), env)
	j.c.ExtraFiles = []*os.File{j.self, j.goRead, j.theirs} // 3, 4 and 5
	j.c.Stdin, j.c.Stdout, j.c.Stderr = os.Stdin, os.Stdout, os.Stderr
	return j, nil
}

// started lets go of the child's ends once it has them.
func (j *joining) started() {
	for _, f := range []*os.File{j.self, j.goRead, j.theirs} {
		if f != nil {
			f.Close()
		}
	}
}

// abort ends it before it runs the command.
func (j *joining) abort() {
	j.goWrite.Close()
	_ = j.c.Wait()
}

// goOn tells it to go on.
func (j *joining) goOn() {
	_, _ = j.goWrite.Write([]byte("go"))
	j.goWrite.Close()
}

// wait waits for it and returns its exit status.
func (j *joining) wait() (int, error) {
	err := j.c.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}

func (j *joining) close() {
	j.goWrite.Close()
	if j.back != nil {
		j.back.Close()
	}
}

// startInCgroupNS starts c from a thread that has joined the cgroup
// namespace of process pid: c inherits it.
func startInCgroupNS(c *exec.Cmd, pid int) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/cgroup", pid))
	if err != nil {
		return fmt.Errorf("the container's cgroup namespace: %w", err)
	}
	defer ns.Close()
	if err := proc.InNamespace(int(ns.Fd()), unix.CLONE_NEWCGROUP, c.Start); err != nil {
		return fmt.Errorf("starting in the container's cgroup namespace: %w", err)
	}
	return nil
}

// forkedChild waits for process pid (nsenter) to fork, and returns the
// child.
func forkedChild(pid int) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			return 0, err
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			return strconv.Atoi(f[0])
		}
		time.Sleep(time.Millisecond)
	}
	return 0, errors.New("nsenter did not fork")
}

// stageMain is cgfs exec's stage (see execCmd): it waits (descriptor 4)
// until cgfs exec has had it put into the container's cgroups and
// becomes nsenter (args) with joinEnv set.
func stageMain(args []string) error {
	ok, _ := io.ReadAll(os.NewFile(4, "go"))
	if string(ok) != "go" {
		return errors.New("not placed in the container's cgroups")
	}
	unix.Close(4)
	if len(args) < 1 {
		return usageError{"the stage runs nsenter"}
	}
	os.Unsetenv(stageEnv)
	os.Setenv(joinEnv, "1")
	return syscall.Exec(args[0], args, os.Environ())
}

// intoOwnCgroups moves host process pid into this process's cgroups, in
// every hierarchy.
func intoOwnCgroups(pid int) error {
	procs, err := proc.Open("/proc")
	if err != nil {
		return err
	}
	defer procs.Close()
	l, err := layout.Discover(procs)
	if err != nil {
		return err
	}
	for _, h := range l.Hierarchies {
		dir, _, err := h.DirOf(procs, os.Getpid())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return err
		}
	}
	return nil
}

// execAsUser is cgfs exec by an unprivileged user, into a container of
// its own: nsenter enters the container's namespaces (the user made its
// user namespace, so the kernel lets it), the daemon puts the joined
// process into the container's cgroups from inside its pid namespace,
// and answers its seccomp listener. (The container's root is the user
// itself: the moment the joined process sits in the user's cgroup
// before that gives its root nothing the user has not.)
func execAsUser(name string, cmd []string) (int, error) {
	socket := control.UserSocketPath()
	a, _, err := askUser(socket, control.Request{Op: "lookup", Name: name})
	if err != nil {
		return 0, err
	}
	j, err := newJoining(a.Init, cmd, false)
	if err != nil {
		return 0, err
	}
	defer j.close()
	if err := j.c.Start(); err != nil {
		return 0, err
	}
	j.started()
	inside, err := forkedChild(j.c.Process.Pid)
	if err == nil {
		var nspid int
		if nspid, err = nsPid(inside); err == nil {
			_, _, err = askUser(socket, control.Request{Op: "enter", Name: name, NSPid: nspid})
		}
	}
	if err != nil {
		j.abort()
		return 0, fmt.Errorf("joining the container's cgroups: %w", err)
	}
	j.goOn()
	if listener, err := recvListener(j.back); err == nil {
		if _, _, err := askUser(socket, control.Request{Op: "agent", Name: name}, listener); err != nil {
			fmt.Fprintf(os.Stderr, "cgfs exec: the daemon does not answer the container's seccomp listener: %v\n", err)
		}
		listener.Close()
	}
	return j.wait()
}

// nsPid is host process pid's id in its own pid namespace.
func nsPid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(line, "NSpid:"); ok {
			ids := strings.Fields(f)
			if len(ids) > 0 {
				return strconv.Atoi(ids[len(ids)-1])
			}
		}
	}
	return 0, errors.New("no NSpid")
}

// joinMain runs inside the container for cgfs exec, as its root, in the
// container's cgroups (where its stage was put before it became
// nsenter; a user's cgfs exec has the daemon put it there, and says go
// on descriptor 4): it puts itself under the container's seccomp filter
// (its listener goes back on descriptor 5), and becomes the command.
func joinMain(args []string) error {
	runtime.LockOSThread() // the filter, then exec, from this thread
	if len(args) < 2 || args[0] != "--" {
		return usageError{"the command to run comes after --"}
	}
	if os.Getenv(joinEnv) == "wait" {
		ok, _ := io.ReadAll(os.NewFile(4, "go"))
		if string(ok) != "go" {
			return errors.New("not placed in the container's cgroups")
		}
		// The container's cgroup namespace: its init's (pid 1 here). A
		// user enters it only from inside the container's user
		// namespace, and busybox's nsenter has no -C.
		ns, err := os.Open("/proc/1/ns/cgroup")
		if err != nil {
			return err
		}
		err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWCGROUP)
		ns.Close()
		if err != nil {
			return fmt.Errorf("the container's cgroup namespace: %w", err)
		}
	}
	os.Unsetenv(joinEnv)
	path, err := exec.LookPath(args[1])
	if err != nil {
		return err
	}
	listener, err := agent.Install()
	if err != nil {
		return err
	}
	if err := unix.Sendmsg(5, []byte("agent"), unix.UnixRights(int(listener.Fd())), nil, 0); err != nil {
		return fmt.Errorf("handing back the seccomp listener: %w", err)
	}
	listener.Close()
	unix.Close(5)
	return syscall.Exec(path, args[1:], os.Environ())
}

// recvListener receives the joined process's seccomp listener.
func recvListener(f *os.File) (*os.File, error) {
	buf, oob := make([]byte, 16), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(f.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("no seccomp listener came")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, errors.New("no seccomp listener came")
	}
	return os.NewFile(uintptr(fds[0]), "seccomp listener"), nil
}
