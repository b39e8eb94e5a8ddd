//go:build linux

package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The tests run the test binary again as a child (CGFS_AGENT_CHILD=mode):
// the child installs the filter, sends the listener to the parent over
// fd 3 (SCM_RIGHTS), closes its own copy and makes the syscalls under
// test, printing what they returned as JSON on stdout. The parent serves
// the listener.

const childEnv = "CGFS_AGENT_CHILD"

func TestMain(m *testing.M) {
	switch mode := os.Getenv(childEnv); mode {
	case "":
		os.Exit(m.Run())
	case "checks":
		runChecks()
	case "exit":
		childInstall()
		var st unix.Statfs_t
		unix.Statfs(os.Getenv("CGFS_VIEW"), &st)
	case "twice":
		childInstall()
		_, err := Install()
		fmt.Println(err)
	case "nocap":
		runtime.LockOSThread()
		dropCaps()
		_, err := Install()
		fmt.Println(err)
	case "bench":
		runBench()
	case "mount-once":
		childInstall()
		fmt.Println(errnoInt(unix.Mount("none", os.Getenv("CGFS_VIEW"), "cgroup2", 0, "")))
	case "lxc":
		runLXCChecks()
	default:
		fmt.Fprintln(os.Stderr, "unknown child mode", mode)
		os.Exit(2)
	}
	os.Exit(0)
}

// childSock is the parent's end of the socket pair, fd 3 in the child.
const childSock = 3

// childInstall installs the filter from this (locked) thread and hands the
// listener to the parent. The thread stays locked: the child then runs on
// it alone.
func childInstall() {
	runtime.LockOSThread()
	l, err := Install()
	if err != nil {
		fmt.Fprintln(os.Stderr, "Install:", err)
		os.Exit(2)
	}
	if err := unix.Sendmsg(childSock, []byte{'L'}, unix.UnixRights(int(l.Fd())), nil, 0); err != nil {
		fmt.Fprintln(os.Stderr, "send listener:", err)
		os.Exit(2)
	}
	l.Close() // the parent's copy is the only one
}

// dropCaps clears this thread's effective capabilities (the permitted
// ones stay).
func dropCaps() {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		fmt.Println("capget:", err)
		os.Exit(2)
	}
	data[0].Effective, data[1].Effective = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		fmt.Println("capset:", err)
		os.Exit(2)
	}
}

// result is what one syscall in the child returned.
type result struct {
	Errno  int            `json:"errno"`
	Statfs *unix.Statfs_t `json:"statfs,omitempty"`
	Note   string         `json:"note,omitempty"`
}

func errnoInt(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(unix.Errno); ok {
		return int(e)
	}
	return -1
}

func statfsResult(err error, st *unix.Statfs_t) result {
	if err != nil {
		return result{Errno: errnoInt(err)}
	}
	return result{Statfs: st}
}

func doStatfs(path string) result {
	var st unix.Statfs_t
	return statfsResult(unix.Statfs(path, &st), &st)
}

func doFstatfs(path string) result {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return result{Errno: errnoInt(err), Note: "open"}
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	return statfsResult(unix.Fstatfs(fd, &st), &st)
}

func rawErr(e syscall.Errno) result { return result{Errno: int(e)} }

// runChecks makes every syscall the agent tests look at. Paths come from
// the environment; the child runs in a mount namespace of its own.
func runChecks() {
	view, other, tmp := os.Getenv("CGFS_VIEW"), os.Getenv("CGFS_OTHER"), os.Getenv("CGFS_TMP")
	childInstall()
	r := map[string]result{}

	r["statfs-view"] = doStatfs(view)
	r["statfs-other"] = doStatfs(other)
	// Another thread (this one is locked) is under the filter too (TSYNC).
	ch := make(chan result)
	go func() {
		res := doStatfs(view)
		res.Note = strconv.FormatBool(unix.Gettid() != unix.Getpid())
		ch <- res
	}()
	r["statfs-thread"] = <-ch
	unix.Chdir(tmp)
	r["statfs-rel"] = doStatfs("view")
	r["statfs-abslink-rel"] = doStatfs("abslink")
	r["statfs-link"] = doStatfs(tmp + "/link")
	unix.Chdir(other)
	r["statfs-dotdot"] = doStatfs("../view")
	r["fstatfs-view"] = doFstatfs(view)
	r["fstatfs-other"] = doFstatfs(other)
	var st unix.Statfs_t
	r["fstatfs-badfd"] = result{Errno: errnoInt(unix.Fstatfs(1000, &st))}
	r["statfs-nonexistent"] = doStatfs("/nonexistent")
	r["statfs-toolong"] = doStatfs(strings.Repeat("a", 5000))

	_, _, e := unix.Syscall(unix.SYS_STATFS, 1, uintptr(unsafe.Pointer(&st)), 0)
	r["statfs-badptr"] = rawErr(e)
	vp, _ := unix.BytePtrFromString(view)
	_, _, e = unix.Syscall(unix.SYS_STATFS, uintptr(unsafe.Pointer(vp)), 1, 0)
	r["statfs-badbuf"] = rawErr(e)

	// CLONE_SIGHAND without CLONE_VM is EINVAL: without the filter this
	// clone3 fails rather than forking.
	var args [88]byte
	*(*uint64)(unsafe.Pointer(&args[0])) = unix.CLONE_SIGHAND
	_, _, e = unix.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args[0])), uintptr(len(args)), 0)
	r["clone3"] = rawErr(e)
	fd, err := unix.Fsopen("cgroup2", unix.FSOPEN_CLOEXEC)
	if err == nil {
		unix.Close(fd)
	}
	r["fsopen"] = result{Errno: errnoInt(err)}
	pid, _, _ := unix.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
	r["getpid"] = result{Note: strconv.FormatBool(int(pid) == os.Getpid())}

	err = exec.Command("/bin/true").Run()
	r["exec-true"] = result{Errno: errnoInt(unwrapErrno(err)), Note: fmt.Sprint(err)}
	if cg, err := unix.Open("/sys/fs/cgroup", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg}
		err = cmd.Run()
		r["exec-cgroupfd"] = result{Errno: errnoInt(unwrapErrno(err)), Note: fmt.Sprint(err)}
	}

	r["mount-deny"] = result{Errno: errnoInt(unix.Mount("none", tmp+"/deny", "cgroup2", 0, ""))}
	src, _ := unix.BytePtrFromString("cg")
	tgt, _ := unix.BytePtrFromString(tmp + "/ok")
	fst, _ := unix.BytePtrFromString("cgroup")
	_, _, e = unix.Syscall6(unix.SYS_MOUNT, uintptr(unsafe.Pointer(src)), uintptr(unsafe.Pointer(tgt)),
		uintptr(unsafe.Pointer(fst)), unix.MS_NOSUID|unix.MS_NODEV, 0, 0)
	r["mount-ok"] = rawErr(e)
	r["mount-data"] = result{Errno: errnoInt(unix.Mount("x", tmp+"/ok", "cgroup2", 0, "nsdelegate"))}
	r["mount-tmpfs"] = result{Errno: errnoInt(unix.Mount("tmpfs", tmp+"/tmpfs", "tmpfs", 0, "size=1m"))}
	r["statfs-tmpfs"] = doStatfs(tmp + "/tmpfs")

	// Tell the parent, which closes its agent, then try again.
	unix.Write(childSock, []byte{'C'})
	var b [1]byte
	unix.Read(childSock, b[:])
	r["statfs-after-close"] = doStatfs(view)
	r["getpid-after-close"] = result{Note: strconv.Itoa(unix.Getpid())}

	json.NewEncoder(os.Stdout).Encode(r)
}

// unwrapErrno is the errno in err's chain, or err.
func unwrapErrno(err error) error {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return err
}

// runBench runs CGFS_BENCH_N iterations of CGFS_BENCH_OP and prints the
// nanoseconds per iteration. An op ending in "-unfiltered" runs without
// the filter.
func runBench() {
	n, _ := strconv.Atoi(os.Getenv("CGFS_BENCH_N"))
	op := os.Getenv("CGFS_BENCH_OP")
	base, filtered := strings.CutSuffix(op, "-unfiltered")
	filtered = !filtered
	if filtered {
		childInstall()
	} else {
		runtime.LockOSThread()
	}
	var f func()
	switch base {
	case "getpid":
		f = func() { unix.RawSyscall(unix.SYS_GETPID, 0, 0, 0) }
	case "statfs":
		p, _ := unix.BytePtrFromString(os.Getenv("CGFS_BENCH_PATH"))
		var st unix.Statfs_t
		f = func() {
			_, _, e := unix.Syscall(unix.SYS_STATFS, uintptr(unsafe.Pointer(p)), uintptr(unsafe.Pointer(&st)), 0)
			if e != 0 {
				fmt.Fprintln(os.Stderr, "statfs:", e)
				os.Exit(2)
			}
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown op", op)
		os.Exit(2)
	}
	f() // warm up (the first notified call waits for the parent to serve)
	start := time.Now()
	for range n {
		f()
	}
	fmt.Println(float64(time.Since(start).Nanoseconds()) / float64(n))
}
