//go:build linux

package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// runLXCChecks is the child of TestLXCProxy: the syscalls a container
// makes, under the filter, answered through the proxy.
func runLXCChecks() {
	view, other, tmp := os.Getenv("CGFS_VIEW"), os.Getenv("CGFS_OTHER"), os.Getenv("CGFS_TMP")
	childInstall()
	r := map[string]result{}
	r["statfs-view"] = doStatfs(view)
	r["statfs-other"] = doStatfs(other)
	r["fstatfs-view"] = doFstatfs(view)
	r["fstatfs-other"] = doFstatfs(other)
	unix.Chdir(tmp)
	r["statfs-rel"] = doStatfs("view")
	r["statfs-nonexistent"] = doStatfs("/nonexistent")
	r["mount-ok"] = result{Errno: errnoInt(unix.Mount("cg", tmp+"/ok", "cgroup2", 0, ""))}
	r["mount-tmpfs"] = result{Errno: errnoInt(unix.Mount("tmpfs", tmp+"/tmpfs", "tmpfs", 0, "size=1m"))}
	r["statfs-tmpfs"] = doStatfs(tmp + "/tmpfs")
	pid, _, _ := unix.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
	r["getpid"] = result{Note: strconv.FormatBool(int(pid) == os.Getpid())}
	json.NewEncoder(os.Stdout).Encode(r)
}

// lxcMonitor does for one notification what LXC 5.0's
// seccomp_notify_handler does: open /proc/PID and /proc/PID/mem, check
// the id, send the message with the three descriptors, receive the
// reply (exactly header, notif and resp) and send resp to the kernel.
type lxcMonitor struct {
	l       *listener
	conn    int // SOCK_SEQPACKET, connected to the proxy
	sizes   seccompNotifSizes
	initPid int
	cookie  string
}

func (m *lxcMonitor) forward(n seccompNotif) error {
	defaultAnswer := func() error { return m.l.send(n.ID, 0, unix.ENOSYS, false) }
	pidFd, err := unix.Open("/proc/"+strconv.Itoa(int(n.Pid)), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return defaultAnswer()
	}
	defer unix.Close(pidFd)
	memFd, err := unix.Open("/proc/"+strconv.Itoa(int(n.Pid))+"/mem", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return defaultAnswer()
	}
	if !m.l.valid(n.ID) {
		unix.Close(memFd)
		return defaultAnswer()
	}
	notifLen, respLen := int(m.sizes.Notif), int(m.sizes.Resp)
	base := lxcHeaderLen + notifLen + respLen
	msg := make([]byte, base, base+len(m.cookie))
	binary.NativeEndian.PutUint32(msg[8:], uint32(os.Getpid()))
	binary.NativeEndian.PutUint32(msg[12:], uint32(m.initPid))
	binary.NativeEndian.PutUint16(msg[16:], m.sizes.Notif)
	binary.NativeEndian.PutUint16(msg[18:], m.sizes.Resp)
	binary.NativeEndian.PutUint16(msg[20:], m.sizes.Data)
	binary.NativeEndian.PutUint64(msg[24:], uint64(len(m.cookie)))
	copy(msg[lxcHeaderLen:], unsafe.Slice((*byte)(unsafe.Pointer(&m.l.notifBuf[0])), notifLen))
	binary.NativeEndian.PutUint64(msg[lxcHeaderLen+notifLen:], n.ID) // resp.id
	msg = append(msg, m.cookie...)
	var sendErr error
	if err := m.l.rc.Control(func(fd uintptr) {
		sendErr = unix.Sendmsg(m.conn, msg, unix.UnixRights(pidFd, memFd, int(fd)), nil, unix.MSG_NOSIGNAL)
	}); err != nil {
		sendErr = err
	}
	unix.Close(memFd)
	if sendErr != nil {
		defaultAnswer()
		return sendErr
	}
	buf := make([]byte, len(msg))
	got, _, _, _, err := unix.Recvmsg(m.conn, buf, nil, unix.MSG_TRUNC)
	if err != nil || got != base {
		defaultAnswer()
		if err == nil {
			err = errors.New("reply of " + strconv.Itoa(got) + " bytes, want " + strconv.Itoa(base))
		}
		return err
	}
	resp := make([]uint64, (respLen+7)/8)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&resp[0])), respLen), buf[lxcHeaderLen+notifLen:base])
	r := (*seccompNotifResp)(unsafe.Pointer(&resp[0]))
	if r.ID != n.ID {
		return errors.New("reply with another id") // LXC would send it with the right id
	}
	err = m.l.ioctl(unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp[0]))
	if errors.Is(err, unix.ENOENT) {
		err = nil
	}
	return err
}

// dialLXC connects to the proxy as LXC does.
func dialLXC(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	tv := unix.Timeval{Sec: 30}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	return fd
}

func listenLXCProxy(t *testing.T, cfg Config) (*LXCProxy, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := ServeLXCProxy(ln, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, path
}

// TestLXCProxy runs runLXCChecks in a child under the filter; the test
// holds the listener as LXC's monitor would and forwards every
// notification to the proxy in LXC's format.
func TestLXCProxy(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	view, other := filepath.Join(tmp, "view"), filepath.Join(tmp, "other")
	for _, d := range []string{view, other, tmp + "/ok", tmp + "/tmpfs"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var mounts []MountCall
	var resolved bool
	mounter := func(c Caller, m MountCall) (bool, unix.Errno) {
		f, err := c.Resolve(m.Target)
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			var a, b unix.Stat_t
			unix.Fstat(int(f.Fd()), &a)
			unix.Stat(tmp+"/ok", &b)
			resolved = a.Dev == b.Dev && a.Ino == b.Ino && c.Valid()
			f.Close()
		}
		mounts = append(mounts, m)
		return true, 0
	}
	p, path := listenLXCProxy(t, Config{Magic: magicFor(t, view, cgroup2Magic), Mounter: mounter, Log: testLogger(t)})

	c := startChild(t, "lxc", "CGFS_VIEW="+view, "CGFS_OTHER="+other, "CGFS_TMP="+tmp)
	l, err := newListener(c.listener(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.f.Close()
	var sizes seccompNotifSizes
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_NOTIF_SIZES, 0, uintptr(unsafe.Pointer(&sizes))); e != 0 {
		t.Fatal(e)
	}
	m := &lxcMonitor{l: l, conn: dialLXC(t, path), sizes: sizes, initPid: c.cmd.Process.Pid, cookie: "test-container"}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wake)
	monitorDone := make(chan error, 1)
	go func() {
		for {
			ready, hup, _, err := l.wait(wake)
			if err != nil || (!ready && hup) {
				monitorDone <- err
				return
			}
			n, err := l.recv()
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				monitorDone <- err
				return
			}
			if err := m.forward(n); err != nil {
				monitorDone <- err
				return
			}
		}
	}()
	c.wait(t)
	select {
	case err := <-monitorDone:
		if err != nil {
			t.Fatalf("monitor: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("monitor still running after the child exited")
	}

	var r map[string]result
	if err := json.Unmarshal(c.stdout.Bytes(), &r); err != nil {
		t.Fatalf("child output %q: %v\n%s", c.stdout.String(), err, c.stderr.String())
	}
	var realView, realOther unix.Statfs_t
	unix.Statfs(view, &realView)
	unix.Statfs(other, &realOther)
	for _, k := range []string{"statfs-view", "fstatfs-view", "statfs-rel"} {
		st := r[k].Statfs
		if st == nil || st.Type != cgroup2Magic || !sameStatfs(st, &realView) {
			t.Errorf("%s: %+v, want the view's statfs with f_type %#x", k, r[k], cgroup2Magic)
		}
	}
	for _, k := range []string{"statfs-other", "fstatfs-other"} {
		if st := r[k].Statfs; st == nil || st.Type != realOther.Type {
			t.Errorf("%s: %+v, want f_type %#x", k, r[k], realOther.Type)
		}
	}
	if st := r["statfs-tmpfs"].Statfs; st == nil || st.Type != unix.TMPFS_MAGIC {
		t.Errorf("statfs-tmpfs: %+v, want TMPFS_MAGIC (mount continued)", r["statfs-tmpfs"])
	}
	for k, want := range map[string]unix.Errno{"statfs-nonexistent": unix.ENOENT, "mount-ok": 0, "mount-tmpfs": 0} {
		if got := unix.Errno(r[k].Errno); got != want {
			t.Errorf("%s: errno %v, want %v", k, got, want)
		}
	}
	if r["getpid"].Note != "true" {
		t.Errorf("getpid: %+v", r["getpid"])
	}
	mu.Lock()
	if want := (MountCall{Source: "cg", Target: tmp + "/ok", FSType: "cgroup2"}); len(mounts) != 1 || mounts[0] != want || !resolved {
		t.Errorf("Mounter saw %+v (target resolved: %v), want %+v", mounts, resolved, want)
	}
	mu.Unlock()
	// 3 views and the Mounter's mount answered; other, fstatfs other,
	// nonexistent, the tmpfs mount and its statfs continued.
	if s := p.Stats(); s != (Stats{Answered: 4, Continued: 5}) {
		t.Errorf("Stats %+v, want 4 answered, 5 continued", s)
	}
}

// TestLXCProxyBadMessages: a message LXC would not send gets an empty
// reply (LXC answers ENOSYS at once); one without descriptors is
// continued.
func TestLXCProxyBadMessages(t *testing.T) {
	p, path := listenLXCProxy(t, Config{Log: testLogger(t)})
	conn := dialLXC(t, path)
	roundTrip := func(msg []byte) []byte {
		t.Helper()
		if err := unix.Sendmsg(conn, msg, nil, nil, 0); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		n, _, _, _, err := unix.Recvmsg(conn, buf, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	if got := roundTrip(make([]byte, 10)); len(got) != 0 {
		t.Errorf("short message: reply of %d bytes, want 0", len(got))
	}
	msg := make([]byte, lxcHeaderLen+80+24)
	binary.NativeEndian.PutUint16(msg[16:], 80)
	binary.NativeEndian.PutUint16(msg[18:], 24)
	binary.NativeEndian.PutUint16(msg[20:], 64)
	binary.NativeEndian.PutUint64(msg[lxcHeaderLen:], 42) // notif.id
	binary.NativeEndian.PutUint32(msg[lxcHeaderLen+12:], x86_64Statfs)
	binary.NativeEndian.PutUint32(msg[lxcHeaderLen+16:], unix.AUDIT_ARCH_X86_64)
	bad := append([]byte(nil), msg...)
	bad[0] = 1 // __reserved
	if got := roundTrip(bad); len(got) != 0 {
		t.Errorf("reserved set: reply of %d bytes, want 0", len(got))
	}
	got := roundTrip(msg)
	if len(got) != len(msg) {
		t.Fatalf("no descriptors: reply of %d bytes, want %d", len(got), len(msg))
	}
	resp := got[lxcHeaderLen+80:]
	if id, flags := binary.NativeEndian.Uint64(resp), binary.NativeEndian.Uint32(resp[20:]); id != 42 || flags != unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE {
		t.Errorf("no descriptors: resp id %d flags %#x, want 42, CONTINUE", id, flags)
	}
	if s := p.Stats(); s != (Stats{Continued: 1}) {
		t.Errorf("Stats %+v, want 1 continued", s)
	}
}

// TestServeLXCProxyStream: a SOCK_STREAM listener is refused.
func TestServeLXCProxyStream(t *testing.T) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ServeLXCProxy(ln, Config{}); err == nil {
		t.Error("ServeLXCProxy took a SOCK_STREAM listener")
	}
}
