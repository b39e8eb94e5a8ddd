package fuseconn

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// needRoot skips a test that mounts FUSE unless it runs as root (with
// CI=true it fails instead).
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: FUSE tests need root (fsmount of FUSE, FUSE_DEV_IOC_CLONE)")
		}
		t.Skip("FUSE tests need root (fsmount of FUSE, FUSE_DEV_IOC_CLONE)")
	}
}

// store is a tree of directories and files that outlives the servers of
// a connection, as the host's cgroups outlive cgfs's: each server builds
// its nodes from it, and one that took the connection over finds a node
// the kernel holds again by its inode number (LookupNode), as cgfs does
// from a host file handle.
type store struct {
	mu   sync.Mutex
	next uint64
	ents map[uint64]*entry
}

type entry struct {
	parent   uint64
	name     string
	dir      bool
	data     string
	children map[string]uint64
}

// newStore is a store whose root (inode 1) holds the file "f" (content
// "f\n") and the directory "d".
func newStore() *store {
	s := &store{next: 2, ents: map[uint64]*entry{1: {dir: true, children: map[string]uint64{}}}}
	s.add(1, "f", false, "f\n")
	s.add(1, "d", true, "")
	return s
}

func (s *store) add(parent uint64, name string, dir bool, data string) (uint64, *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.ents[parent]
	if p == nil || p.children[name] != 0 {
		return 0, nil
	}
	ino := s.next
	s.next++
	e := &entry{parent: parent, name: name, dir: dir, data: data}
	if dir {
		e.children = map[string]uint64{}
	}
	s.ents[ino], p.children[name] = e, ino
	return ino, e
}

func (s *store) lookup(parent uint64, name string) (uint64, entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.ents[parent]
	if p == nil || p.children[name] == 0 {
		return 0, entry{}, false
	}
	ino := p.children[name]
	return ino, *s.ents[ino], true
}

// path is the names from the root down to inode ino, nil if it is gone.
func (s *store) path(ino uint64) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for ino != 1 {
		e := s.ents[ino]
		if e == nil {
			return nil
		}
		names = append([]string{e.name}, names...)
		ino = e.parent
	}
	return names
}

// server is one server's nodes of a store, and what it saw.
type server struct {
	s       *store
	revived atomic.Uint64
	// forgotten gets the inode of each node go-fuse forgot (OnForget).
	forgotten chan uint64
	// panicked gets what a request panicked with (go-fuse recovers it:
	// PanicHandler).
	panicked chan any
}

// testFS is a server's node bridge as a connection serves it (FS).
type testFS struct {
	fuse.RawFileSystem
	srv *server
}

func (f *testFS) Revived() uint64 { return f.srv.revived.Swap(0) }

type tnode struct {
	gofs.Inode
	srv *server
	ino uint64
}

// child is a node of parent for store entry e, inode ino.
func (srv *server) child(ctx context.Context, parent *gofs.Inode, ino uint64, e entry, out *fuse.EntryOut) *gofs.Inode {
	mode := uint32(unix.S_IFREG)
	if e.dir {
		mode = unix.S_IFDIR
	}
	out.Attr.Mode, out.Attr.Ino, out.Attr.Size = mode|0o755, ino, uint64(len(e.data))
	return parent.NewInode(ctx, &tnode{srv: srv, ino: ino}, gofs.StableAttr{Mode: mode, Ino: ino})
}

var _ = (gofs.NodeLookuper)((*tnode)(nil))

func (n *tnode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ino, e, ok := n.srv.s.lookup(n.ino, name)
	if !ok {
		return nil, syscall.ENOENT
	}
	return n.srv.child(ctx, &n.Inode, ino, e, out), 0
}

var _ = (gofs.NodeGetattrer)((*tnode)(nil))

func (n *tnode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.srv.s.mu.Lock()
	defer n.srv.s.mu.Unlock()
	e := n.srv.s.ents[n.ino]
	if e == nil {
		return syscall.ENOENT
	}
	out.Mode, out.Size = n.StableAttr().Mode|0o755, uint64(len(e.data))
	return 0
}

var _ = (gofs.NodeMkdirer)((*tnode)(nil))

func (n *tnode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ino, e := n.srv.s.add(n.ino, name, true, "")
	if e == nil {
		return nil, syscall.EEXIST
	}
	return n.srv.child(ctx, &n.Inode, ino, *e, out), 0
}

var _ = (gofs.NodeRmdirer)((*tnode)(nil))

func (n *tnode) Rmdir(ctx context.Context, name string) syscall.Errno {
	s := n.srv.s
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.ents[n.ino]
	ino := p.children[name]
	if ino == 0 {
		return syscall.ENOENT
	}
	delete(p.children, name)
	delete(s.ents, ino)
	return 0
}

var _ = (gofs.NodeOpener)((*tnode)(nil))

func (n *tnode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

var _ = (gofs.NodeReader)((*tnode)(nil))

func (n *tnode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n.srv.s.mu.Lock()
	defer n.srv.s.mu.Unlock()
	e := n.srv.s.ents[n.ino]
	if e == nil {
		return nil, syscall.ENOENT
	}
	if off >= int64(len(e.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData([]byte(e.data[off:])), 0
}

var _ = (gofs.NodeOnForgetter)((*tnode)(nil))

func (n *tnode) OnForget() {
	select {
	case n.srv.forgotten <- n.ino:
	default:
	}
}

var _ = (gofs.NodeLookupNoder)((*tnode)(nil))

// LookupNode finds node id again from the store (asked of the root),
// each name of its path looked up as any lookup is.
func (n *tnode) LookupNode(ctx context.Context, id uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	names := n.srv.s.path(id)
	if names == nil {
		return nil, syscall.ESTALE
	}
	cur, ino := &n.Inode, uint64(1)
	for _, name := range names {
		cino, e, ok := n.srv.s.lookup(ino, name)
		if !ok {
			return nil, syscall.ESTALE
		}
		child := cur.GetChild(name)
		if child == nil {
			child = n.srv.child(ctx, cur, cino, e, out)
			if !cur.AddChild(name, child, false) {
				child = cur.GetChild(name)
			}
		}
		cur, ino = child, cino
	}
	if ino != id {
		return nil, syscall.ESTALE
	}
	n.srv.revived.Store(id)
	return cur, 0
}

// cache is how long the kernel keeps names and attributes: 0 makes every
// path walk a LOOKUP, so that each stat adds one to the kernel's count
// of lookups of every node on the path.
type cache time.Duration

// newTestFS is a server of s, as go-fuse's node bridge, with the
// options a connection serves it with.
func newTestFS(s *store, c cache) (*testFS, *gofs.Options) {
	srv := &server{s: s, forgotten: make(chan uint64, 64), panicked: make(chan any, 64)}
	d := time.Duration(c)
	var neg time.Duration
	opts := &gofs.Options{
		EntryTimeout: &d, AttrTimeout: &d, NegativeTimeout: &neg,
		RootStableAttr: &gofs.StableAttr{Mode: unix.S_IFDIR, Ino: 1},
		ExternalNodeID: true,
		MountOptions: fuse.MountOptions{
			Logger: slog.NewLogLogger(discard(), slog.LevelDebug),
			Debug:  os.Getenv("CGFS_DEBUG") != "",
			PanicHandler: func(r any) fuse.Status {
				select {
				case srv.panicked <- r:
				default:
				}
				return fuse.EIO
			},
		},
	}
	root := &tnode{srv: srv, ino: 1}
	return &testFS{RawFileSystem: gofs.NewNodeFS(root, opts), srv: srv}, opts
}

func discard() slog.Handler {
	if testing.Verbose() {
		return slog.NewTextHandler(os.Stderr, nil)
	}
	return slog.DiscardHandler
}

// serveStore serves s on a new connection (resume nil) or on the one
// resume names, stopped when the test ends.
func serveStore(t *testing.T, s *store, c cache, resume *Resume) (*Conn, *testFS) {
	t.Helper()
	needRoot(t)
	fs, opts := newTestFS(s, c)
	conn, err := Serve(Config{FS: fs, Options: &opts.MountOptions, Resume: resume, Log: slog.New(discard())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Stop)
	return conn, fs
}

// mountStore serves s on a new connection mounted on a new directory,
// unmounted when the test ends.
func mountStore(t *testing.T, s *store, c cache) (string, *Conn, *testFS) {
	t.Helper()
	conn, fs := serveStore(t, s, c, nil)
	mnt := t.TempDir()
	if err := conn.MoveTo(mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt, conn, fs
}

// handOver drains first and serves its connection with a second server
// of s; meanwhile (if set) runs between the two.
func handOver(t *testing.T, first *Conn, s *store, c cache, meanwhile func()) (*Conn, *testFS) {
	t.Helper()
	res, err := first.HandOff()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	if meanwhile != nil {
		meanwhile()
	}
	return serveStore(t, s, c, res)
}

// readFile reads a file of a mount from a blocking descriptor the Go
// runtime never polls: this process serves the mount (see fs's
// mount_test.go).
func readFile(path string) (string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

// TestStopAbortsAConnectionThatOutlivesItsMount: Stop takes the mount
// away and, when the connection lives on (here a descriptor of a file
// keeps the lazily detached mount), aborts it through the FUSE control
// filesystem: whoever holds it sees ENOTCONN at once.
func TestStopAbortsAConnectionThatOutlivesItsMount(t *testing.T) {
	mnt, conn, _ := mountStore(t, newStore(), cache(time.Second))
	if b, err := readFile(mnt + "/f"); err != nil || b != "f\n" {
		t.Fatalf("read f = %q, %v", b, err)
	}
	fd, err := unix.Open(mnt+"/d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	stopped := make(chan struct{})
	go func() { conn.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return: the connection was not aborted")
	}
	var st unix.Stat_t
	if err := unix.Fstatat(fd, "f", &st, 0); err != unix.ENOTCONN {
		t.Errorf("a lookup through a descriptor held across Stop: %v, want ENOTCONN", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+mnt+" ") {
		t.Errorf("%s still mounted after Stop", mnt)
	}
}
