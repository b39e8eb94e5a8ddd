package fuseconn

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Taking a connection over. A FUSE connection outlives its server as
// long as some process holds a descriptor of it: the mount stays, and
// requests wait in the kernel's queue. Each server reads from a clone of
// the connection's first descriptor (FUSE_DEV_IOC_CLONE), its own, so
// that
//   - a server that dies takes only its own unanswered requests with it
//     (the kernel ends those, ECONNABORTED), never the mount, while the
//     first descriptor lives in another process (a keeper, the next
//     server);
//   - a server that hands over stops reading without touching anyone
//     else's descriptor (Drain), and answers what it has read.
//
// The next server serves the connection as it was negotiated: go-fuse
// takes the kernel's INIT (the one the first server was sent, passed on
// in Handover) from a socket, and then reads the clone in its place. The
// kernel's node ids are inode numbers (ExternalNodeID), so a node the
// kernel still holds is found again from the host's file handle of that
// inode (see inherit); file handles carry the generation of the server
// that made them, and one of an earlier server is opened again on first
// use.

// Handover is what one server tells the next about a connection, besides
// its descriptors. It goes between daemons of different versions as
// JSON: its field names are the wire format.
type Handover struct {
	Conn uint32 // the connection's number, for aborting it
	Dev  uint64 // its device number
	// Init is the kernel's INIT request, as it came.
	Init []byte
	// Gen is the generation of the server handing over; the next is Gen+1.
	Gen uint32
	// Watched are the events files whose changes were relayed.
	Watched []Watched
}

// Watched is an events file the relay watched: its mount path, virtual
// path and inode, and the view (by index in RelayConfig.Events).
type Watched struct {
	View  int
	VPath string
	MPath string
	Ino   uint64
}

// Resume is a connection another server made, to be served on.
type Resume struct {
	Handover
	// Master is the connection's first /dev/fuse descriptor.
	Master *os.File
	// Root is the mount's root, for relaying events; nil relays none.
	Root *os.File
}

// Close closes the Resume's descriptors (a server resumed from it holds
// copies of its own).
func (r *Resume) Close() {
	r.Master.Close()
	if r.Root != nil {
		r.Root.Close()
	}
}

// fuseDevIocClone is FUSE_DEV_IOC_CLONE: _IOR(229, 0, uint32).
const fuseDevIocClone = 0x8004e500

// cloneFUSE opens a new /dev/fuse descriptor on master's connection.
func cloneFUSE(master int) (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("/dev/fuse: %w", err)
	}
	m := uint32(master)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fuseDevIocClone, uintptr(unsafe.Pointer(&m))); e != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("FUSE_DEV_IOC_CLONE: %w", e)
	}
	return fd, nil
}

// initBytes is the kernel's INIT request as the server took it.
func initBytes(in *fuse.InitIn) []byte {
	b := make([]byte, unsafe.Sizeof(*in))
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(in)), len(b)))
	return b
}

// newResumedServer is a go-fuse server of raw on the connection of an
// earlier server: go-fuse reads init (the kernel's INIT as it came, so it
// settles on what the kernel agreed to) from one end of a socket pair,
// whose number then becomes a clone of master's. That takes go-fuse to
// answer INIT within NewServer (TestGoFuseAnswersINITInNewServer) and to
// serve its descriptor by number (TestGoFuseServesItsDescriptorNumber).
func newResumedServer(raw fuse.RawFileSystem, opts *fuse.MountOptions, master *os.File, init []byte) (*fuse.Server, <-chan struct{}, int, *os.File, error) {
	if len(init) != int(unsafe.Sizeof(fuse.InitIn{})) {
		return nil, nil, -1, nil, fmt.Errorf("an INIT of %d bytes, not %d", len(init), unsafe.Sizeof(fuse.InitIn{}))
	}
	clone, err := cloneFUSE(int(master.Fd()))
	if err != nil {
		return nil, nil, -1, nil, err
	}
	defer unix.Close(clone)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, -1, nil, err
	}
	defer unix.Close(sp[1])
	if _, err := unix.Write(sp[1], init); err != nil {
		unix.Close(sp[0])
		return nil, nil, -1, nil, err
	}
	// go-fuse owns sp[0] from here on (and closes it on failure).
	server, err := fuse.NewServer(raw, fmt.Sprintf("/dev/fd/%d", sp[0]), opts)
	if err != nil {
		return nil, nil, -1, nil, err
	}
	// The answer to INIT went to the socket; the kernel had its own.
	// From now on the number reads the connection.
	if err := unix.Dup3(clone, sp[0], unix.O_CLOEXEC); err != nil {
		return nil, nil, -1, nil, err
	}
	flags, err := dupFile(sp[0], "fuse connection (its reads' flags)")
	if err != nil {
		return nil, nil, -1, nil, err // (go-fuse's server never served: its number is the GC's)
	}
	return server, runServe(server), sp[0], flags, nil
}

// Handover is what the next server needs of this connection besides its
// descriptors (Files). Call it after Drain, so that nothing changes.
func (c *Conn) Handover() Handover {
	return Handover{Conn: c.conn, Dev: c.dev, Init: c.init, Gen: c.gen, Watched: c.watched}
}

// Files are copies of the connection's first descriptor and of the
// mount's root (nil once the relay let it go), for the next server or a
// keeper; the caller closes them.
func (c *Conn) Files() (master, root *os.File, err error) {
	// Through the held descriptor: the connection's end closes master at
	// any moment, and its number may then be another file's.
	rc, err := c.master.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	fd, cerr := -1, error(nil)
	if err := rc.Control(func(m uintptr) { fd, cerr = unix.FcntlInt(m, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, nil, fmt.Errorf("the connection has ended: %w", err)
	}
	if cerr != nil {
		return nil, nil, cerr
	}
	master = os.NewFile(uintptr(fd), "fuse connection")
	if r := c.relay.Load(); r != nil {
		if root, err = r.dupRoot(); err != nil {
			master.Close()
			return nil, nil, err
		}
	}
	return master, root, nil
}

// RootLetGo is closed once the server holds the mount's root no more
// (the relay let go, its owner gone): a copy kept elsewhere (Files)
// must go too, or the mount outlives its container. Nil: it holds
// none.
func (c *Conn) RootLetGo() <-chan struct{} {
	if r := c.relay.Load(); r != nil {
		return r.gone
	}
	return nil
}

// ErrDrained: the server handed its connection over.
var ErrDrained = errors.New("handed over")

// Drain stops serving without ending the connection: the server's
// readers stop taking requests, those taken are answered, and then it
// returns; requests that come meanwhile wait in the kernel for the next
// server. Done is not closed by it (the connection lives on).
func (c *Conn) Drain() error {
	if !c.drained.CompareAndSwap(false, true) {
		return ErrDrained
	}
	if r := c.relay.Load(); r != nil {
		<-c.rewatched // all the earlier server's, for the next one
		c.watched = r.watched()
		r.letGo()
	}
	// A reader that finds the queue empty now returns EAGAIN and ends;
	// one already asleep in read(2) wakes for the next request, serves
	// it and ends on its next read.
	if _, err := unix.FcntlInt(c.flags.Fd(), unix.F_SETFL, unix.O_RDWR|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("stopping reads: %w", err)
	}
	// Wake the sleepers: a signal interrupts their read(2), which the
	// kernel restarts (Go's handlers are SA_RESTART), and the restarted
	// read, finding the descriptor non-blocking and the queue empty,
	// returns EAGAIN. SIGURG is the one Go itself sends its threads (to
	// preempt them) and every part of it takes in its stride; which
	// thread sleeps in read(2) is not known, so all get one. That go-fuse
	// reads so, and ends a reader on EAGAIN: TestGoFuseReadersEndOnSIGURG.
	defer startPoking()()
	<-c.served
	c.flags.Close()
	c.master.Close()
	return nil
}

// poker pokes the process's threads (pokeThreads) every millisecond
// while any Drain is under way: once for all of them, as a daemon drains
// every view at once. It is the package's one process-wide state, and
// must be: what it pokes is every thread of the process (which one
// sleeps in which connection's read(2) is not known), so a poker per
// connection or per caller would only multiply the signals; it holds
// nothing but how many drains want it.
var poker struct {
	mu    sync.Mutex
	users int
	stop  chan struct{}
}

// startPoking has the threads poked until the func it returns is called.
func startPoking() func() {
	poker.mu.Lock()
	defer poker.mu.Unlock()
	if poker.users++; poker.users == 1 {
		poker.stop = make(chan struct{})
		go func(stop <-chan struct{}) {
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for {
				pokeThreads()
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}(poker.stop)
	}
	return func() {
		poker.mu.Lock()
		defer poker.mu.Unlock()
		if poker.users--; poker.users == 0 {
			close(poker.stop)
		}
	}
}

// pokeThreads sends SIGURG to every thread of this process.
func pokeThreads() {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	pid := os.Getpid()
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			_ = unix.Tgkill(pid, tid, unix.SIGURG)
		}
	}
}

// HandOff is the hand-over in one step: it takes copies of c's
// descriptors (Files), drains c (Drain) and returns what the next server
// resumes it with. The caller closes the Resume's files.
func (c *Conn) HandOff() (*Resume, error) {
	master, root, err := c.Files()
	if err != nil {
		return nil, err
	}
	res := &Resume{Master: master, Root: root}
	if err := c.Drain(); err != nil {
		res.Close()
		return nil, err
	}
	res.Handover = c.Handover()
	return res, nil
}
