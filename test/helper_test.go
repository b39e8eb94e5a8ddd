package test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a small client instead of
// running tests, so operations can be made with other credentials and
// in other namespaces than the test's own.
const helperEnv = "CGFS_TEST_HELPER"

// helperMain runs one operation and prints "OK" (with what was read) or
// the errno's name. Operations: read PATH, write PATH DATA, open PATH
// FLAGS, mkdir PATH, rmdir PATH.
func helperMain(args []string) int {
	if len(args) < 2 {
		fmt.Println("usage: op path [data]")
		return 2
	}
	op, path := args[0], args[1]
	if op == "hold-threads" {
		return holdThreads(path)
	}
	if op == "alloc" && len(args) == 3 {
		return allocIn(path, args[2])
	}
	if op == "as" && len(args) >= 3 {
		// as UID CMD...: become UID (and GID UID), with no capabilities
		// left, and exec CMD.
		id, err := strconv.Atoi(args[1])
		if err == nil {
			err = syscall.Setgroups(nil)
		}
		if err == nil {
			err = syscall.Setresgid(id, id, id)
		}
		if err == nil {
			err = syscall.Setresuid(id, id, id)
		}
		if err == nil {
			err = execCmd(args[2:])
		}
		fmt.Println(err)
		return 1
	}
	if op == "gomaxprocs" {
		// What Go's runtime took from the CPU limit it found.
		fmt.Println(runtime.GOMAXPROCS(0))
		return 0
	}
	if op == "forklimit" {
		return forkLimit(path)
	}
	if op == "hold" && len(args) == 3 {
		return holdMain(args[1:])
	}
	if op == "readloop" {
		return readLoop(args[1:])
	}
	if op == "holdopen" && len(args) == 3 {
		return holdOpen(path, args[2])
	}
	if op == "migratestorm" && len(args) == 4 {
		return migrateStorm(path, args[2], args[3])
	}
	if op == "oomwatch" && len(args) == 3 {
		return oomWatch(args[1], args[2])
	}
	if op == "cgroupns" {
		// cgroupns CMD...: a cgroup namespace of its own (rooted at its
		// cgroup), nothing else new: util-linux's unshare -C.
		runtime.LockOSThread()
		err := unix.Unshare(unix.CLONE_NEWCGROUP)
		if err == nil {
			err = execCmd(args[1:])
		}
		fmt.Println(err)
		return 1
	}
	if op == "unshare" && len(args) >= 3 {
		return unshareRun(args[1], args[2:])
	}
	if op == "askuser" && len(args) >= 3 {
		return askUser(args[1], args[2], args[3:])
	}
	if op == "holdconns" && len(args) == 3 {
		// holdconns SOCKET N: N connections that say nothing, until
		// stdin ends.
		n, _ := strconv.Atoi(args[2])
		for i := range n {
			s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err == nil {
				err = unix.Connect(s, &unix.SockaddrUnix{Name: args[1]})
			}
			if err != nil {
				fmt.Println("connect", i, unix.ErrnoName(errnoOf(err)))
				return 1
			}
		}
		fmt.Println("held", n)
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	}
	if op == "flood" && len(args) == 4 {
		// flood SOCKET REQUEST N: N requests one after the other;
		// prints how many were answered OK and how many refused for
		// their rate.
		n, _ := strconv.Atoi(args[3])
		ok, limited := 0, 0
		for range n {
			switch out := captureAsk(args[1], args[2]); {
			case out == "":
				ok++
			case strings.Contains(out, "too many requests"):
				limited++
			}
		}
		fmt.Println("ok", ok, "limited", limited)
		return 0
	}
	var err error
	var out string
	switch op {
	case "read":
		var b []byte
		b, err = os.ReadFile(path)
		out = string(b)
	case "write":
		if len(args) != 3 {
			fmt.Println("write needs data")
			return 2
		}
		err = writeFile(path, args[2])
	case "open":
		// open PATH FLAGS: open(2) with FLAGS (decimal), then close.
		flags, _ := strconv.Atoi(args[2])
		var fd int
		if fd, err = unix.Open(path, flags|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
		}
	case "mkdir":
		err = unix.Mkdir(path, 0o755)
	case "rmdir":
		err = unix.Rmdir(path)
	default:
		fmt.Println("unknown op", op)
		return 2
	}
	if err != nil {
		fmt.Println(unix.ErrnoName(errnoOf(err)))
		return 0
	}
	fmt.Print("OK", out)
	return 0
}

// unshareRun runs cmd as root of a new user namespace that maps it to
// the caller's ids (as unshare -r does, by any user), with a new mount
// namespace too if flags has m, a new cgroup namespace if it has C and
// a new pid namespace (cmd its first process) if it has p,
// and exits as cmd does: util-linux's unshare -UrmC, where only
// busybox's (which has no -C) is.
func unshareRun(flags string, cmd []string) int {
	c := exec.Command(cmd[0], cmd[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}}
	if strings.Contains(flags, "m") {
		attr.Cloneflags |= syscall.CLONE_NEWNS
	}
	if strings.Contains(flags, "C") {
		attr.Cloneflags |= syscall.CLONE_NEWCGROUP
	}
	if strings.Contains(flags, "p") {
		attr.Cloneflags |= syscall.CLONE_NEWPID
	}
	c.SysProcAttr = attr
	if err := c.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "unshare:", err)
		return 1
	}
	return 0
}

// captureAsk sends request to socket and returns the answer's error
// ("" for none).
func captureAsk(socket, request string) string {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err.Error()
	}
	defer unix.Close(s)
	if err := unix.Connect(s, &unix.SockaddrUnix{Name: socket}); err != nil {
		return err.Error()
	}
	if err := unix.Sendmsg(s, []byte(request), nil, nil, 0); err != nil {
		return err.Error()
	}
	buf := make([]byte, 1<<16)
	n, err := unix.Read(s, buf)
	if err != nil {
		return err.Error()
	}
	var a struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(buf[:n], &a)
	return a.Error
}

// askUser sends request (JSON) to the daemon's user socket with the
// descriptors fdspecs name (pidfd:PID, a pidfd of PID; dead, a pidfd of a
// process that has exited; open:PATH, PATH opened read-only; n:N, N
// copies of /dev/null) and prints the answer's error, or OK.
func askUser(socket, request string, fdspecs []string) int {
	var fds []int
	for _, spec := range fdspecs {
		kind, arg, _ := strings.Cut(spec, ":")
		switch kind {
		case "pidfd":
			pid, _ := strconv.Atoi(arg)
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				fmt.Println("pidfd_open:", unix.ErrnoName(errnoOf(err)))
				return 1
			}
			fds = append(fds, fd)
		case "dead":
			c := exec.Command("true")
			if err := c.Start(); err != nil {
				fmt.Println(err)
				return 1
			}
			fd, err := unix.PidfdOpen(c.Process.Pid, 0)
			if err != nil {
				fmt.Println(err)
				return 1
			}
			_ = c.Wait()
			fds = append(fds, fd)
		case "open":
			fd, err := unix.Open(arg, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				fmt.Println("open:", unix.ErrnoName(errnoOf(err)))
				return 1
			}
			fds = append(fds, fd)
		case "n":
			n, _ := strconv.Atoi(arg)
			for range n {
				fd, _ := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
				fds = append(fds, fd)
			}
		}
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = unix.Connect(s, &unix.SockaddrUnix{Name: socket})
	}
	if err != nil {
		fmt.Println("connect:", unix.ErrnoName(errnoOf(err)))
		return 1
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(s, []byte(request), oob, nil, 0); err != nil {
		fmt.Println("send:", unix.ErrnoName(errnoOf(err)))
		return 1
	}
	buf := make([]byte, 1<<16)
	n, _, _, _, err := unix.Recvmsg(s, buf, make([]byte, unix.CmsgSpace(4)), 0)
	if err != nil {
		fmt.Println("recv:", unix.ErrnoName(errnoOf(err)))
		return 1
	}
	var a struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(buf[:n], &a)
	if a.Error == "" {
		fmt.Println("OK")
	} else {
		fmt.Println(a.Error)
	}
	return 0
}

// holdOpen opens path read-only count times (or until an open fails),
// prints "OK N" or the errno's name and how many it holds, closes its
// output (a reader waiting for the line goes on) and holds them until
// it is killed.
func holdOpen(path, count string) int {
	n, _ := strconv.Atoi(count)
	held := 0
	var err error
	for held < n {
		if _, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			break
		}
		held++
	}
	if err != nil {
		fmt.Println(unix.ErrnoName(errnoOf(err)), held)
	} else {
		fmt.Println("OK", held)
	}
	os.Stdout.Close()
	for {
		unix.Pause()
	}
}

// readLoop reads the files named, one after the other and again from
// the first, and prints how long each read took (open, read and close,
// in ns) on a line of its own, until its output is closed. A read that
// fails prints "ERR path errno" and ends it with status 1.
func readLoop(paths []string) int {
	buf := make([]byte, 4096)
	for i := 0; ; i++ {
		path := paths[i%len(paths)]
		t0 := time.Now()
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			_, err = unix.Read(fd, buf)
			unix.Close(fd)
		}
		d := time.Since(t0)
		if err != nil {
			fmt.Printf("ERR %s %s\n", path, unix.ErrnoName(errnoOf(err)))
			return 1
		}
		if _, err := fmt.Printf("%d\n", d.Nanoseconds()); err != nil {
			return 0
		}
	}
}

// holdThreads starts n extra OS threads, prints the thread ids of the
// process (in its own pid namespace) on one line, and waits for stdin
// to close.
func holdThreads(count string) int {
	n, err := strconv.Atoi(count)
	if err != nil {
		fmt.Println("bad count")
		return 2
	}
	debug.SetMaxThreads(n + 1000)
	tids := make(chan int, n)
	for range n {
		go func() {
			runtime.LockOSThread()
			tids <- unix.Gettid()
			select {}
		}()
	}
	all := []string{strconv.Itoa(os.Getpid())}
	for range n {
		all = append(all, strconv.Itoa(<-tids))
	}
	fmt.Println(strings.Join(all, " "))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// allocIn moves this process into a cgroup (writing 0 to its
// cgroup.procs) and then touches mb MiB of memory; it prints "survived"
// if it is not killed.
func allocIn(procs, mb string) int {
	if err := writeFile(procs, "0"); err != nil {
		fmt.Println("move:", err)
		return 1
	}
	n, _ := strconv.Atoi(mb)
	mem := make([][]byte, 0, n)
	for range n {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		mem = append(mem, b)
	}
	fmt.Println("survived", len(mem))
	return 0
}

// forkLimit moves this process into cgroup dir, sets its pids.max to
// what it uses plus 3, and forks until the kernel refuses; it prints
// "forked N errno".
func forkLimit(dir string) int {
	if err := writeFile(dir+"/cgroup.procs", "0"); err != nil {
		fmt.Println("move:", err)
		return 1
	}
	b, err := os.ReadFile(dir + "/pids.current")
	if err != nil {
		fmt.Println("pids.current:", err)
		return 1
	}
	cur, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := writeFile(dir+"/pids.max", strconv.Itoa(cur+3)); err != nil {
		fmt.Println("pids.max:", err)
		return 1
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	var pids []int
	defer func() {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(p, &ws, 0, nil)
		}
	}()
	for range 20 {
		pid, err := syscall.ForkExec(sleep, []string{"sleep", "100"}, nil)
		if err != nil {
			fmt.Println("forked", len(pids), unix.ErrnoName(errnoOf(err)))
			return 0
		}
		pids = append(pids, pid)
	}
	fmt.Println("forked", len(pids), "no refusal")
	return 0
}

// runHelper runs helperMain with args under attr and returns its output.
func runHelper(t testing.TB, attr *syscall.SysProcAttr, args ...string) string {
	t.Helper()
	cmd := exec.Command(helperBin, args...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.SysProcAttr = attr
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %v: %v\n%s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// lockedBuffer collects a server's log from its output pipes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// oomWatch registers, as cgroup v1's memory.rst shows, an eventfd of its
// own for OOM notifications of cgroup dir, naming memory.oom_control of
// cfdDir (dir itself, or another cgroup), and says how the write went
// ("register OK" or its errno's name). Registered, it runs a child that
// allocates in dir until the kernel kills it, and says how many
// notifications the eventfd holds ("oom events N", within 20 seconds).
func oomWatch(dir, cfdDir string) int {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		fmt.Println("eventfd:", err)
		return 1
	}
	cfd, err := unix.Open(filepath.Join(cfdDir, "memory.oom_control"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	err = writeFile(filepath.Join(dir, "cgroup.event_control"), fmt.Sprintf("%d %d", efd, cfd))
	if err != nil {
		fmt.Println("register", unix.ErrnoName(errnoOf(err)))
		return 0
	}
	fmt.Println("register OK")
	child := exec.Command("/proc/self/exe", "alloc", filepath.Join(dir, "cgroup.procs"), "512")
	child.Env = os.Environ()
	out, err := child.CombinedOutput()
	fmt.Printf("allocating child: %v %s", err, out)
	fds := []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 20000); err != nil || n == 0 {
		fmt.Println("oom events 0")
		return 0
	}
	buf := make([]byte, 8)
	if _, err := unix.Read(efd, buf); err != nil {
		fmt.Println("read:", err)
		return 1
	}
	fmt.Println("oom events", binary.LittleEndian.Uint64(buf))
	return 0
}

// execCmd becomes cmd (looked up in PATH); it returns only on failure.
func execCmd(cmd []string) error {
	path, err := exec.LookPath(cmd[0])
	if err == nil {
		err = syscall.Exec(path, cmd, os.Environ())
	}
	return err
}

// migrateStorm runs ROUNDS rounds in each of which N shells, started
// and waiting, are let go at once and each writes its own pid ("0") to
// DIR/cgroup.procs, as the kernel selftests' 100-children cases do; it
// prints "storm NS" with the nanoseconds from the release to the last
// shell's end, summed over the rounds.
func migrateStorm(dir, count, rounds string) int {
	n, _ := strconv.Atoi(count)
	r, _ := strconv.Atoi(rounds)
	procs := filepath.Join(dir, "cgroup.procs")
	var total time.Duration
	for range r {
		readyR, readyW, err := os.Pipe()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		goR, goW, err := os.Pipe()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		cmds := make([]*exec.Cmd, n)
		for i := range cmds {
			c := exec.Command("sh", "-c", `echo r >&3; read x; echo 0 > "$1"`, "sh", procs)
			c.Stdin, c.ExtraFiles, c.Stderr = goR, []*os.File{readyW}, os.Stderr
			if err := c.Start(); err != nil {
				fmt.Println(err)
				return 1
			}
			cmds[i] = c
		}
		readyW.Close()
		goR.Close()
		// Every shell has said it is ready: each is at its read.
		if got, _ := io.ReadFull(readyR, make([]byte, 2*n)); got != 2*n {
			fmt.Println("shells not ready:", got/2)
			return 1
		}
		t0 := time.Now()
		goW.Close()
		failed := 0
		for _, c := range cmds {
			if c.Wait() != nil {
				failed++
			}
		}
		total += time.Since(t0)
		readyR.Close()
		if failed > 0 {
			fmt.Println(failed, "shells failed to move themselves")
			return 1
		}
	}
	fmt.Println("storm", total.Nanoseconds())
	return 0
}
