package fuseconn

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// What the hand-over takes of go-fuse's internals, one test each, on
// real FUSE connections: a go-fuse upgrade that breaks one fails the
// test that names it. Each failure starts "go-fuse assumption broken".

// kernelINIT makes a FUSE connection with a detached mount and reads
// the kernel's INIT from it by hand (nobody answers it yet); the
// connection ends when the test does.
func kernelINIT(t *testing.T) (dev int, mnt *os.File, init []byte) {
	t.Helper()
	needRoot(t)
	dev, mnt, err := newFUSE()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mnt.Close(); unix.Close(dev) })
	buf := make([]byte, 1<<20+4096) // the kernel wants room for a whole WRITE
	n, err := unix.Read(dev, buf)
	if err != nil {
		t.Fatalf("reading the kernel's INIT: %v", err)
	}
	return dev, mnt, buf[:n]
}

// newServerOnSocket is fuse.NewServer of a server of s on one end of a
// socket pair whose other end holds init, as newResumedServer makes it;
// it returns the server's end and the other, and closes the other (once)
// with the func it returns or when the test ends.
func newServerOnSocket(t *testing.T, init []byte) (*fuse.Server, [2]int, func()) {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeOther := func() { once.Do(func() { unix.Close(sp[1]) }) }
	t.Cleanup(closeOther)
	if _, err := unix.Write(sp[1], init); err != nil {
		t.Fatal(err)
	}
	fs, opts := newTestFS(newStore(), cache(time.Second))
	type result struct {
		s   *fuse.Server
		err error
	}
	made := make(chan result, 1)
	go func() {
		s, err := fuse.NewServer(fs, fmt.Sprintf("/dev/fd/%d", sp[0]), &opts.MountOptions)
		made <- result{s, err}
	}()
	select {
	case r := <-made:
		if r.err != nil {
			t.Fatalf("go-fuse assumption broken (synchronous INIT): NewServer on a socket holding the kernel's INIT: %v", r.err)
		}
		return r.s, [2]int{sp[0], sp[1]}, closeOther
	case <-time.After(10 * time.Second):
		_ = unix.Shutdown(sp[1], unix.SHUT_RDWR) // NewServer then fails
		t.Fatal("go-fuse assumption broken (synchronous INIT): NewServer did not return with the INIT read: " +
			"it reads more than the INIT before Serve, which newResumedServer's socket never gives")
	}
	return nil, [2]int{}, nil
}

// waitServer waits for go-fuse to end serving, for a while.
func waitServer(t *testing.T, server *fuse.Server) {
	t.Helper()
	ended := make(chan struct{})
	go func() { server.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Error("go-fuse did not end serving (its goroutines are left behind)")
	}
}

// TestGoFuseAnswersINITInNewServer: fuse.NewServer of a /dev/fd/N
// mountpoint reads the INIT from N and answers it before it returns, and
// Server.KernelSettings is that INIT as it came. newResumedServer feeds
// go-fuse the kernel's INIT (Handover.Init) from a socket and makes N
// the connection right after NewServer returns: an INIT read later
// would be read from the connection, where there is none.
func TestGoFuseAnswersINITInNewServer(t *testing.T) {
	_, _, init := kernelINIT(t)
	server, sp, closeOther := newServerOnSocket(t, init)
	reply := make([]byte, 4096)
	n, _, err := unix.Recvfrom(sp[1], reply, unix.MSG_DONTWAIT)
	if err == unix.EAGAIN {
		t.Fatal("go-fuse assumption broken (synchronous INIT): NewServer returned before it answered the INIT: " +
			"newResumedServer would make its descriptor the connection while go-fuse has yet to take the INIT from the socket")
	}
	if err != nil {
		t.Fatal(err)
	}
	var out fuse.OutHeader
	if n < int(unsafe.Sizeof(out)) {
		t.Fatalf("go-fuse assumption broken (synchronous INIT): an answer to INIT of %d bytes", n)
	}
	_ = binary.Read(bytes.NewReader(reply[:n]), binary.NativeEndian, &out)
	var in fuse.InHeader
	_ = binary.Read(bytes.NewReader(init), binary.NativeEndian, &in)
	if out.Unique != in.Unique || out.Status != 0 {
		t.Errorf("go-fuse assumption broken (synchronous INIT): NewServer's answer is %+v, want the answer to INIT %d", out, in.Unique)
	}
	if got, want := initBytes(server.KernelSettings()), init[:min(len(init), int(unsafe.Sizeof(fuse.InitIn{})))]; !bytes.Equal(got, want) {
		t.Errorf("go-fuse assumption broken (synchronous INIT): KernelSettings is not the INIT as it came "+
			"(Handover.Init would not be the kernel's): %x, want %x", got, want)
	}
	// The socket's end: Serve reads nothing more and ends.
	closeOther()
	go server.Serve()
	waitServer(t, server)
}

// TestGoFuseServesItsDescriptorNumber: go-fuse reads and writes the
// descriptor it was given by its number, each time: once NewServer
// returned, dup3 of a clone of the connection over that number makes
// go-fuse serve the connection (newResumedServer), and nothing of the
// socket it started on (a poller registration, a cached file) stays.
func TestGoFuseServesItsDescriptorNumber(t *testing.T) {
	dev, mnt, init := kernelINIT(t)
	server, sp, closeOther := newServerOnSocket(t, init)
	// go-fuse's answer to INIT goes to the kernel, as a first server's
	// would have.
	reply := make([]byte, 4096)
	n, _, err := unix.Recvfrom(sp[1], reply, unix.MSG_DONTWAIT)
	if err != nil {
		t.Fatalf("no answer to INIT on the socket (see TestGoFuseAnswersINITInNewServer): %v", err)
	}
	if _, err := unix.Write(dev, reply[:n]); err != nil {
		t.Fatalf("the kernel refused go-fuse's answer to its INIT: %v", err)
	}
	var st unix.Statx_t // the connection's number, without asking the server
	if err := unix.Statx(int(mnt.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_BASIC_STATS, &st); err != nil {
		t.Fatal(err)
	}
	conn := st.Dev_minor
	clone, err := cloneFUSE(dev)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Dup3(clone, sp[0], unix.O_CLOEXEC)
	unix.Close(clone)
	if err != nil {
		t.Fatal(err)
	}
	go server.Serve()
	read := make(chan string, 1)
	go func() {
		fd, err := unix.Openat(int(mnt.Fd()), "f", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			read <- err.Error()
			return
		}
		defer unix.Close(fd)
		b := make([]byte, 64)
		n, err := unix.Read(fd, b)
		if err != nil {
			read <- err.Error()
			return
		}
		read <- string(b[:n])
	}()
	select {
	case got := <-read:
		if got != "f\n" {
			t.Errorf("go-fuse assumption broken (dup3 over go-fuse's descriptor): reading f through the connection gave %q, want %q", got, "f\n")
		}
	case <-time.After(10 * time.Second):
		_ = abort(conn)
		t.Error("go-fuse assumption broken (dup3 over go-fuse's descriptor): with its descriptor number made the connection " +
			"after NewServer, go-fuse answered nothing: it no longer reads the descriptor by its number")
	}
	// The connection's only mount gone, the connection ends, and Serve
	// (or, had go-fuse kept the socket, the socket does).
	closeOther()
	mnt.Close()
	waitServer(t, server)
}

// asleepInRead counts the threads of this process blocked in read(2) of
// descriptor fd, as /proc/self/task/*/syscall shows them.
func asleepInRead(fd int) int {
	tasks, _ := os.ReadDir("/proc/self/task")
	prefix := fmt.Sprintf("%d 0x%x ", unix.SYS_READ, fd)
	n := 0
	for _, task := range tasks {
		if b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/syscall"); err == nil && strings.HasPrefix(string(b), prefix) {
			n++
		}
	}
	return n
}

// waitAsleepInRead waits until a thread sleeps in read(2) of fd.
func waitAsleepInRead(t *testing.T, fd int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for asleepInRead(fd) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no thread of this process sleeps in read(2) of the connection's descriptor %d", what, fd)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGoFuseReadersEndOnSIGURG: go-fuse reads the connection with
// blocking read(2)s, each on a thread of its own; a reader asleep there
// is woken by SIGURG (Go's handler restarts the read, SA_RESTART), and a
// read of a descriptor made non-blocking that finds no request returns
// EAGAIN, which ends go-fuse's reader instead of being retried; with
// every reader ended, Server.Wait returns. Drain stops a server that
// way, without touching the connection.
func TestGoFuseReadersEndOnSIGURG(t *testing.T) {
	mnt, conn, _ := mountStore(t, newStore(), cache(time.Second))
	if b, err := readFile(mnt + "/f"); err != nil || b != "f\n" {
		t.Fatalf("read f = %q, %v", b, err)
	}
	waitAsleepInRead(t, conn.clone, "go-fuse assumption broken (SIGURG wake-ups): go-fuse's readers do not block in read(2)")
	if _, err := unix.FcntlInt(uintptr(conn.clone), unix.F_SETFL, unix.O_RDWR|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go func() { conn.server.Wait(); close(ended) }()
	deadline := time.After(10 * time.Second)
	for {
		pokeThreads()
		select {
		case <-ended:
			return
		case <-deadline:
			t.Fatalf("go-fuse assumption broken (SIGURG wake-ups): go-fuse's readers of a descriptor made non-blocking, "+
				"poked with SIGURG, did not end (%d still asleep in read(2)): go-fuse retries EAGAIN, or does not end a reader on it",
				asleepInRead(conn.clone))
		case <-time.After(time.Millisecond):
		}
	}
}

// waitForgotten waits until go-fuse forgot node ino (its OnForget);
// what says what it means if it does not, or if a request panics
// meanwhile.
func waitForgotten(t *testing.T, fs *testFS, ino uint64, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got := <-fs.srv.forgotten:
			if got == ino {
				return
			}
		case r := <-fs.srv.panicked:
			t.Fatalf("%s: a request panicked: %v", what, r)
		case <-deadline:
			t.Fatal(what)
		}
	}
}

// forgotten tells whether go-fuse forgot node ino already.
func forgotten(fs *testFS, ino uint64) bool {
	for {
		select {
		case got := <-fs.srv.forgotten:
			if got == ino {
				return true
			}
		default:
			return false
		}
	}
}

// TestGoFuseLookupCounts: the counts inherit keeps of the kernel's
// lookups. In go-fuse's node bridge a LOOKUP of "." on a node it knows
// holds one more lookup of it (inherit.know gives it back, FORGET 1), and
// on a node id it does not know asks the root's LookupNode, whose node
// then holds one lookup (which stands for every earlier server's); a
// node whose lookups are all given back is forgotten.
func TestGoFuseLookupCounts(t *testing.T) {
	s := newStore()
	mnt, _, fs := mountStore(t, s, cache(time.Hour))
	dIno, _, _ := s.lookup(1, "d")
	var st unix.Stat_t
	if err := unix.Stat(mnt+"/d", &st); err != nil { // the kernel's one lookup
		t.Fatal(err)
	}
	var out fuse.EntryOut
	if code := fs.Lookup(nil, &fuse.InHeader{NodeId: dIno}, ".", &out); !code.Ok() {
		t.Fatalf("go-fuse assumption broken (FORGET counts): LOOKUP of . on a node the bridge knows: %v", code)
	}
	if id := fs.Revived(); id != 0 {
		t.Errorf("go-fuse assumption broken (FORGET counts): LOOKUP of . on a node the bridge knows asked LookupNode (%d)", id)
	}
	fs.Forget(dIno, 1)
	if forgotten(fs, dIno) {
		t.Fatal("go-fuse assumption broken (FORGET counts): LOOKUP of . on a node the bridge knows took no lookup of it: " +
			"the one inherit gives back would be the kernel's")
	}
	// The kernel forgets d's one lookup when it goes: if the LOOKUP of .
	// took more than one, d would outlive it.
	if err := unix.Rmdir(mnt + "/d"); err != nil {
		t.Fatal(err)
	}
	waitForgotten(t, fs, dIno, "go-fuse assumption broken (FORGET counts): the kernel forgot a node it looked up once and "+
		"that was looked up by . once and given back once, and go-fuse still holds it: LOOKUP of . took more than one")

	// A node id the bridge never handed the kernel (an earlier server's).
	eIno, _ := s.add(1, "e", true, "")
	if code := fs.Lookup(nil, &fuse.InHeader{NodeId: eIno}, ".", &out); !code.Ok() {
		t.Fatalf("go-fuse assumption broken (FORGET counts): LOOKUP of . on a node id the bridge does not know: %v (LookupNode not asked?)", code)
	}
	if id := fs.Revived(); id != eIno {
		t.Fatalf("go-fuse assumption broken (FORGET counts): LOOKUP of . on node id %d the bridge does not know did not ask the root's LookupNode", eIno)
	}
	if out.NodeId != eIno {
		t.Errorf("go-fuse assumption broken (FORGET counts): the node LookupNode found has node id %d, want %d", out.NodeId, eIno)
	}
	fs.Forget(eIno, 1)
	if !forgotten(fs, eIno) {
		t.Error("go-fuse assumption broken (FORGET counts): a node LookupNode found holds more than the one lookup of the LOOKUP of .")
	}
}

// TestGoFuseNodeIDsAreInodeNumbers: with ExternalNodeID, the node id go-fuse
// hands the kernel is the node's inode number, so that a server taking
// the connection over knows what an id it never handed out names.
func TestGoFuseNodeIDsAreInodeNumbers(t *testing.T) {
	s := newStore()
	_, _, fs := mountStore(t, s, cache(time.Second))
	dIno, _, _ := s.lookup(1, "d")
	var out fuse.EntryOut
	if code := fs.Lookup(nil, &fuse.InHeader{NodeId: fuse.FUSE_ROOT_ID}, "d", &out); !code.Ok() {
		t.Fatal(code)
	}
	defer fs.Forget(out.NodeId, 1)
	if out.NodeId != dIno {
		t.Errorf("go-fuse assumption broken (node ids): the node id of inode %d is %d", dIno, out.NodeId)
	}
}

// TestGoFuseFileHandlesFit32Bits: go-fuse's file handles fit in 32 bits:
// inherit tags the kernel's with the server's generation in the high 32.
func TestGoFuseFileHandlesFit32Bits(t *testing.T) {
	s := newStore()
	mnt, _, fs := mountStore(t, s, cache(time.Second))
	fIno, _, _ := s.lookup(1, "f")
	var st unix.Stat_t
	if err := unix.Stat(mnt+"/f", &st); err != nil { // the bridge knows f
		t.Fatal(err)
	}
	var fhs []uint64
	for range 3 {
		var out fuse.OpenOut
		if code := fs.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: fIno}, Flags: unix.O_RDONLY}, &out); !code.Ok() {
			t.Fatal(code)
		}
		fhs = append(fhs, out.Fh)
	}
	for _, fh := range fhs {
		fs.Release(nil, &fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: fIno}, Fh: fh})
		if fh>>32 != 0 {
			t.Errorf("go-fuse assumption broken (file handles): go-fuse handed out file handle %#x, beyond 32 bits", fh)
		}
	}
}
