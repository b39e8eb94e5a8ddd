package translate

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
)

// A controlFile is the whole behaviour of an interface file that cgfs
// does more for than pass through: how it reads for a reader, how a
// write is carried, whether it may be written at the view root, and
// which rule guards it. Files without one are the host's, read and
// written as they are.
type controlFile struct {
	// read computes what the reader of f reads; nil passes the host
	// file through (by the kernel, with FUSE passthrough, when opened
	// read-only).
	read func(f *File) ([]byte, error)
	// reader: read shows task ids in the reader's pid namespace, so the
	// opener is identified as a reader at open.
	reader bool
	// write carries one write of at most a page to f; nil writes the
	// host file once.
	write func(f *File, r *access.Request, data []byte) (int, error)
	// delegated: the container may write it at the view root, as cgroup
	// v2 delegation allows (cgroup-v2.rst, "Delegation Containment").
	delegated bool
	// guard refuses the file to every caller but host root (to host
	// root too with all), below the root only with belowRoot.
	guard guard
}

type guard struct {
	rule           access.Rule
	belowRoot, all bool
}

var (
	controlFiles = map[string]*controlFile{}
	// bySuffix holds files named by their end (memory.events.local).
	bySuffix = map[string]*controlFile{}
)

// register makes cf the behaviour of the interface file name. Each
// concern registers its files from an init function.
func register(name string, cf *controlFile) {
	if _, dup := controlFiles[name]; dup {
		panic("translate: control file registered twice: " + name)
	}
	controlFiles[name] = cf
}

// registerSuffix makes cf the behaviour of every file whose name ends in
// suffix.
func registerSuffix(suffix string, cf *controlFile) { bySuffix[suffix] = cf }

// Computed tells whether cgfs computes what a reader of the interface
// file name reads (task ids, controllers, events with hidden leaves),
// rather than passing the host file through.
func Computed(name string) bool {
	cf := controlFileOf(name)
	return cf != nil && cf.read != nil
}

// controlFileOf returns the behaviour of the interface file name, nil
// when it is passed through.
func controlFileOf(name string) *controlFile {
	if cf := controlFiles[name]; cf != nil {
		return cf
	}
	for suffix, cf := range bySuffix {
		if strings.HasSuffix(name, suffix) {
			return cf
		}
	}
	return nil
}

// target describes the control file vpath (shown attributes st) to the
// policy.
func (v *View) target(vpath string, st *unix.Stat_t) access.File {
	dir, name := split(vpath)
	t := access.File{Attr: st, AtRoot: dir == "", Delegated: v.delegate[name]}
	if cf := controlFileOf(name); cf != nil {
		t.Delegated = t.Delegated || cf.delegated
		if cf.guard.rule != "" && !(cf.guard.belowRoot && t.AtRoot) {
			t.Guard, t.GuardAll = cf.guard.rule, cf.guard.all
		}
	}
	return t
}

// File is one open of an interface file: the host file opened for it
// alone, so the host sees one open file per container open, as
// natively. A File is safe for concurrent use.
type File struct {
	v      *View
	cf     *controlFile // nil: passed through
	vpath  string
	cgroup string // the virtual cgroup holding the file
	name   string
	host   *os.File
	// passthrough: opened read-only and passed through, so the kernel
	// may serve reads from the host file itself.
	passthrough bool
	// backing is a read-only copy of a host file opened for writing
	// whose reads pass through (see BackingFd).
	backing *os.File
	// leafPath: opened through a leaf path (read-only), shown with its
	// inode numbers.
	leafPath bool
	// opener is who opened the file for writing: the kernel judges
	// migrations with the opener's credentials.
	opener access.Caller
	// reader is whose pid namespace task ids are shown in.
	reader proc.Thread
	// opened is the cgroup namespace the task file was opened for
	// writing from, as the kernel saves it at open (see openerNS).
	opened nsScope
	// counted: the open is one of the container's (Limits.OpenFiles);
	// the relay's are not (OpenRelay).
	counted bool

	// mu guards rendered: computed content is rendered at each read
	// from offset 0 and served from rendered for later offsets.
	mu       sync.Mutex
	rendered []byte
	rawSize  int // the host file's size at the last rendering
}

// Open opens the interface file vpath for the request r with open(2)
// flags: the one host open of this FUSE open. O_CREAT, O_EXCL and
// O_TRUNC are dropped: the file exists (the FUSE kernel looked it up),
// cgroupfs creates nothing and ignores truncation, and a refused open
// must change nothing.
//
// Every open is judged whatever its access mode: mode 3 (O_WRONLY|O_RDWR,
// which Linux takes as "neither, but needs both permissions") is judged
// as a read and as a write. A container holds at most its limit of open
// files (ENFILE beyond).
func (v *View) Open(r *access.Request, vpath string, flags int) (*File, error) {
	return v.open(r, vpath, flags, true)
}

// OpenRelay opens the events file vpath read-only for the server's own
// relay (r: its thread), outside the container's bound of open files: a
// relay write at a moment the container holds its limit must not take
// one of its files.
func (v *View) OpenRelay(r *access.Request, vpath string) (*File, error) {
	return v.open(r, vpath, unix.O_RDONLY, false)
}

func (v *View) open(r *access.Request, vpath string, flags int, counted bool) (*File, error) {
	acc := flags & unix.O_ACCMODE
	writes := acc != unix.O_RDONLY || flags&unix.O_TRUNC != 0
	reads := acc != unix.O_WRONLY
	if writes && v.readOnly {
		return nil, errReadOnly
	}
	real, through, err := v.leafPath(vpath)
	switch {
	case err != nil:
		return nil, err
	case through && writes:
		return nil, errLeafPath
	case through && isLeafDir(vpath):
		return nil, refuse(RuleLeafPath, unix.EISDIR, "a leaf path is a directory")
	}
	vpath = real
	if counted && !v.limits.takeFile() {
		return nil, refuse(RuleOpenFiles, unix.ENFILE, fmt.Sprintf("the container holds %d open files", v.limits.OpenFiles))
	}
	hf, err := v.host.Open(vpath, flags&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC)|unix.O_NOFOLLOW)
	if err != nil {
		if counted {
			v.limits.giveFile()
		}
		return nil, err
	}
	f := &File{v: v, vpath: vpath, host: hf, leafPath: through, counted: counted}
	f.cgroup, f.name = split(vpath)
	f.cf = controlFileOf(f.name)
	if err := f.judge(r, writes, reads); err != nil {
		f.Close()
		return nil, err
	}
	f.passthrough = acc == unix.O_RDONLY && (f.cf == nil || f.cf.read == nil)
	return f, nil
}

// judge decides the open on the attributes of the file just opened
// (opening a control file has no effect on the host).
func (f *File) judge(r *access.Request, writes, reads bool) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if writes {
		if err := f.v.policy.MayWrite(r, f.v.target(f.vpath, &st)); err != nil {
			return err
		}
		if f.opener, err = r.Caller(); err != nil { // identified above
			return err
		}
		if f.cf != nil && f.cf.reader { // a task file
			if f.opened, err = f.v.openerNS(r); err != nil {
				return err
			}
		}
	}
	if reads {
		if err := f.v.policy.MayRead(r, &st); err != nil {
			return err
		}
		if f.cf != nil && f.cf.reader {
			if f.reader, err = r.Thread(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Stat returns the attributes the view shows for the open file.
func (f *File) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.host.Fd()), &st); err != nil {
		return st, &host.Error{Op: "stat", Path: f.vpath, Err: err}
	}
	owner, err := host.Xattr(f.host, ownerXattr)
	if err != nil {
		return st, err
	}
	parseOwner(owner).apply(&st)
	st = f.v.show(st)
	if f.leafPath {
		st.Ino += LeafPathIno
		st.Mode &^= 0o222
	}
	return st, nil
}

// PassthroughFd is the host descriptor the kernel may read from
// directly, if the open allows it.
func (f *File) PassthroughFd() (int, bool) { return int(f.host.Fd()), f.passthrough }

// BackingFd is a readable host descriptor of a file whose reads pass
// through, for every open of it, writers' included: once an inode has
// a backing file the kernel wants each open of it to say passthrough
// (else EIO), and the server counts the backing's users by opens (an
// open without one must not give one back). A writer's open does not
// read through it: DIRECT_IO overrides passthrough. False for files
// the kernel never reads directly (computed content, write-only files).
func (f *File) BackingFd() (int, bool) {
	switch {
	case f.passthrough:
		return int(f.host.Fd()), true
	case f.cf != nil && f.cf.read != nil:
		return -1, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.backing == nil {
		b, err := f.v.host.Open(f.vpath, unix.O_RDONLY|unix.O_NOFOLLOW)
		if err != nil {
			return -1, false // write-only (cgroup.kill): nobody reads it through
		}
		f.backing = b
	}
	return int(f.backing.Fd()), true
}

// Read reads at off into dest. Host files are read with one pread(2): at
// offset 0 cgroupfs produces the content afresh. Computed files are
// rendered at offset 0 (and at the first read) and served from that
// rendering at later offsets.
func (f *File) Read(dest []byte, off int64) ([]byte, error) {
	if f.cf == nil || f.cf.read == nil {
		n, err := unix.Pread(int(f.host.Fd()), dest, off)
		if err != nil {
			return nil, &host.Error{Op: "read", Path: f.vpath, Err: err}
		}
		return dest[:n], nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if off == 0 || f.rendered == nil {
		b, err := f.cf.read(f)
		if err != nil {
			return nil, err
		}
		f.rendered = b // a new slice each time: earlier answers stay intact
	}
	if off >= int64(len(f.rendered)) {
		return nil, nil
	}
	return f.rendered[off:min(off+int64(len(dest)), int64(len(f.rendered)))], nil
}

// Write carries one write(2) for the request r. Like kernfs for cgroup
// files (atomic_write_len PAGE_SIZE), a write larger than a page is E2BIG
// and changes nothing, whatever the file.
func (f *File) Write(r *access.Request, data []byte) (int, error) {
	if len(data) > os.Getpagesize() {
		return 0, refuse(RuleWriteSize, unix.E2BIG, "a write larger than a page to "+f.vpath)
	}
	if f.cf != nil && f.cf.write != nil {
		return f.cf.write(f, r, data)
	}
	return f.v.host.Write(f.host, f.vpath, data)
}

// readHost reads the open host file from its start.
func (f *File) readHost() ([]byte, error) {
	b, err := host.PreadAllHint(f.host, f.rawSize)
	if err != nil {
		return nil, &host.Error{Op: "read", Path: f.vpath, Err: err}
	}
	f.rawSize = len(b)
	return b, nil
}

// PassthroughProbe opens a read-only host file of the view root, for
// asking the kernel once whether it takes backing files.
func (v *View) PassthroughProbe() (*os.File, error) {
	return v.host.Open("cgroup.procs", unix.O_RDONLY) // every hierarchy has it
}

// Close releases the host file.
func (f *File) Close() error {
	if f.counted {
		f.v.limits.giveFile()
	}
	if f.backing != nil {
		f.backing.Close()
	}
	return f.host.Close()
}
