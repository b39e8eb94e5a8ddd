package fuseconn

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// inherit stands between the kernel and go-fuse's node bridge, so that a
// server can serve a connection whose kernel side an earlier server
// built (see handover.go):
//
//   - Node ids. The kernel's are inode numbers (ExternalNodeID). Once the
//     connection was taken over, the first request naming a node id
//     makes sure the bridge knows it: a LOOKUP of "." on it, which the
//     bridge answers itself for a node it knows (that lookup is then
//     given back, FORGET 1) and through the root's LookupNode for one it
//     does not (FS.Revived says which it was). A node that names nothing
//     any more is ESTALE. (TestGoFuseLookupCounts,
//     TestGoFuseNodeIDsAreInodeNumbers.)
//   - File handles carry the generation of the server that opened them in
//     their high 32 bits (go-fuse's fit in the low:
//     TestGoFuseFileHandlesFit32Bits). One of an earlier server is opened again on
//     first use, as the kernel says it was opened (the flags in READ and
//     WRITE; the kernel only sends a handle it granted), and released
//     with it.
//
// A server that made its connection has no earlier nodes: it only tags
// its handles.
//
// Every request but FORGET and the RELEASEs goes through one mechanism
// (serve): its method says what the request names (a req) and calls the
// bridge. The bridge is not embedded, so that a go-fuse whose
// RawFileSystem gains a method does not build until the method says what
// it names: one passed through unseen would hand the bridge a node id it
// does not know, which it panics on.
type inherit struct {
	next    FS
	gen     uint64
	resumed bool

	mu sync.RWMutex
	// checked are the node ids the bridge knows since taking over, each
	// with how many of the kernel's lookups it holds (see Forget).
	checked map[uint64]uint64
	files   map[uint64]uint64 // an earlier server's handle: this one's
}

var _ fuse.RawFileSystem = (*inherit)(nil)

const fhMask = 1<<32 - 1

func (w *inherit) tag(fh uint64) uint64 { return w.gen<<32 | fh }

// own is the bridge's handle for the kernel's fh, if this server made it.
func (w *inherit) own(fh uint64) (uint64, bool) {
	if fh>>32 == w.gen {
		return fh & fhMask, true
	}
	return 0, false
}

// know makes sure the bridge knows node id (see inherit).
func (w *inherit) know(cancel <-chan struct{}, h *fuse.InHeader, id uint64) fuse.Status {
	if !w.resumed || id == fuse.FUSE_ROOT_ID || id == 0 {
		return fuse.OK
	}
	w.mu.RLock()
	_, ok := w.checked[id]
	w.mu.RUnlock()
	if ok {
		return fuse.OK
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.checked[id]; ok {
		return fuse.OK
	}
	w.next.Revived() // clears it
	var out fuse.EntryOut
	hdr := fuse.InHeader{NodeId: id, Caller: h.Caller}
	if st := w.next.Lookup(cancel, &hdr, ".", &out); !st.Ok() {
		return st
	}
	if w.next.Revived() != id {
		w.next.Forget(id, 1) // it knew it: give the lookup back
	}
	// The one lookup the bridge holds (the revival's, or the one it had)
	// stands for all the earlier servers'.
	w.checked[id] = 1
	return fuse.OK
}

// mark notes a node id the bridge handed the kernel (an answer with an
// entry): it knows it, and holds one more of the kernel's lookups.
func (w *inherit) mark(st fuse.Status, id uint64) {
	if !w.resumed || !st.Ok() || id == fuse.FUSE_ROOT_ID || id == 0 {
		return
	}
	w.mu.Lock()
	w.checked[id]++
	w.mu.Unlock()
}

// inherited is this server's handle for fh, an earlier server's,
// opened again (as a directory, or with the open flags the kernel
// gives) on first use.
func (w *inherit) inherited(cancel <-chan struct{}, h *fuse.InHeader, fh uint64, dir bool, flags uint32) (uint64, fuse.Status) {
	w.mu.RLock()
	mine, ok := w.files[fh]
	w.mu.RUnlock()
	if ok {
		return mine, fuse.OK
	}
	if st := w.know(cancel, h, h.NodeId); !st.Ok() {
		return 0, st
	}
	in := fuse.OpenIn{InHeader: *h, Flags: flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC)}
	var out fuse.OpenOut
	var st fuse.Status
	if dir {
		in.Flags = unix.O_RDONLY | unix.O_DIRECTORY
		st = w.next.OpenDir(cancel, &in, &out)
	} else {
		st = w.next.Open(cancel, &in, &out)
	}
	if !st.Ok() {
		return 0, st
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if other, ok := w.files[fh]; ok { // opened meanwhile: keep one
		rel := fuse.ReleaseIn{InHeader: *h, Fh: out.Fh}
		if dir {
			w.next.ReleaseDir(&rel)
		} else {
			w.next.Release(cancel, &rel)
		}
		return other, fuse.OK
	}
	w.files[fh] = out.Fh
	return out.Fh, fuse.OK
}

// release ends the kernel's handle fh: false if it was an earlier
// server's that this one never opened (nothing to release).
func (w *inherit) release(fh *uint64) bool {
	if mine, ok := w.own(*fh); ok {
		*fh = mine
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	mine, ok := w.files[*fh]
	delete(w.files, *fh)
	*fh = mine
	return ok
}

// req is what a request names that an earlier server may have handed
// the kernel, and what its answer hands the kernel.
type req struct {
	h *fuse.InHeader // the node it is about (h.NodeId)
	// node2 is a second node it names (RENAME's new directory, LINK's
	// node, COPY_FILE_RANGE's destination); 0 for none.
	node2 uint64
	// fh is the file handle it carries (nil: none), taken as kind says;
	// fh2 a second (COPY_FILE_RANGE's destination), taken alike.
	fh, fh2 *uint64
	kind    handleKind
	// open is how a file of an earlier server's handle is opened again
	// (READ's and WRITE's flags), for kind reopenFile.
	open uint32
	// valid and validFH say whether fh is set at all, for kind optional:
	// the bit validFH of *valid.
	valid   *uint32
	validFH uint32
	// entry is the node id the answer hands the kernel (the answers
	// with an entry), outFh the file handle (OPEN's, CREATE's); nil for
	// none.
	entry, outFh *uint64
}

// handleKind is how a request's file handle of an earlier server is
// taken.
type handleKind int

const (
	// reopenFile and reopenDir: opened again on first use (see
	// inherited), as a file (with req.open) or a directory.
	reopenFile handleKind = iota + 1
	reopenDir
	// optional: the node answers instead (GETATTR, SETATTR, STATX: the
	// handle only says which open the kernel had at hand).
	optional
	// nothingBuffered: nothing to do, OK (FLUSH, FSYNC, FSYNCDIR: cgfs
	// buffers nothing).
	nothingBuffered
	// notServed: ENOSYS, the answer the bridge gives, as for any request
	// cgfs's nodes do not serve (locks, seeks, allocation, copies,
	// ioctls); so is a node that cannot be known.
	notServed
)

// before readies request r for the bridge: every node it names known,
// its file handles the bridge's. False: the request is answered st
// without the bridge.
func (w *inherit) before(cancel <-chan struct{}, r *req) (st fuse.Status, call bool) {
	switch r.kind {
	case reopenFile, reopenDir:
		if mine, ok := w.own(*r.fh); ok {
			*r.fh = mine
			break
		}
		mine, st := w.inherited(cancel, r.h, *r.fh, r.kind == reopenDir, r.open)
		*r.fh = mine
		return st, st.Ok()
	case optional:
		if mine, ok := w.own(*r.fh); ok {
			*r.fh = mine
		} else {
			*r.valid &^= r.validFH
			*r.fh = 0
		}
	case nothingBuffered:
		mine, ok := w.own(*r.fh)
		if !ok {
			return fuse.OK, false
		}
		*r.fh = mine
	case notServed:
		mine, ok := w.own(*r.fh)
		mine2, ok2 := mine, ok
		if r.fh2 != nil {
			mine2, ok2 = w.own(*r.fh2)
		}
		if !ok || !ok2 || !w.know(cancel, r.h, r.h.NodeId).Ok() || !w.know(cancel, r.h, r.node2).Ok() {
			return fuse.ENOSYS, false
		}
		*r.fh = mine
		if r.fh2 != nil {
			*r.fh2 = mine2
		}
		return fuse.OK, true
	}
	if st := w.know(cancel, r.h, r.h.NodeId); !st.Ok() {
		return st, false
	}
	if r.node2 != 0 {
		if st := w.know(cancel, r.h, r.node2); !st.Ok() {
			return st, false
		}
	}
	return fuse.OK, true
}

// after notes what the bridge's answer st to r handed the kernel.
func (w *inherit) after(r *req, st fuse.Status) {
	if r.entry != nil {
		w.mark(st, *r.entry)
	}
	if r.outFh != nil {
		*r.outFh = w.tag(*r.outFh)
	}
}

// serve is the one way a request goes to the bridge (call), as r says.
func serve[R any](w *inherit, cancel <-chan struct{}, r req, call func() (R, fuse.Status)) (R, fuse.Status) {
	if st, ok := w.before(cancel, &r); !ok {
		var zero R
		return zero, st
	}
	res, st := call()
	w.after(&r, st)
	return res, st
}

// status is serve for the requests answered with a status alone.
func (w *inherit) status(cancel <-chan struct{}, r req, call func() fuse.Status) fuse.Status {
	_, st := serve(w, cancel, r, func() (struct{}, fuse.Status) { return struct{}{}, call() })
	return st
}

// Forget: every node the bridge knows since the takeover was marked, so
// one that is not is an earlier server's that nothing here used. The
// kernel counts lookups over every server of the connection and forgets
// them together (its whole count, as the inode goes), so the bridge is
// given back what it holds of them and no more: go-fuse panics on a
// count that goes below zero, with the node's lock held.
func (w *inherit) Forget(nodeid, nlookup uint64) {
	if w.resumed && nodeid != fuse.FUSE_ROOT_ID {
		w.mu.Lock()
		held := w.checked[nodeid]
		nlookup = min(nlookup, held)
		if held -= nlookup; held == 0 {
			delete(w.checked, nodeid)
		} else {
			w.checked[nodeid] = held
		}
		w.mu.Unlock()
		if nlookup == 0 {
			return
		}
	}
	w.next.Forget(nodeid, nlookup)
}

func (w *inherit) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	if w.release(&in.Fh) && w.know(cancel, &in.InHeader, in.NodeId).Ok() {
		w.next.Release(cancel, in)
	}
}

func (w *inherit) ReleaseDir(in *fuse.ReleaseIn) {
	if w.release(&in.Fh) && w.know(nil, &in.InHeader, in.NodeId).Ok() {
		w.next.ReleaseDir(in)
	}
}

// What each request names. Nodes:

func (w *inherit) Lookup(c <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	return w.status(c, req{h: h, entry: &out.NodeId}, func() fuse.Status { return w.next.Lookup(c, h, name, out) })
}

func (w *inherit) Mknod(c <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return w.status(c, req{h: &in.InHeader, entry: &out.NodeId}, func() fuse.Status { return w.next.Mknod(c, in, name, out) })
}

func (w *inherit) Mkdir(c <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return w.status(c, req{h: &in.InHeader, entry: &out.NodeId}, func() fuse.Status { return w.next.Mkdir(c, in, name, out) })
}

func (w *inherit) Symlink(c <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return w.status(c, req{h: h, entry: &out.NodeId}, func() fuse.Status { return w.next.Symlink(c, h, target, name, out) })
}

func (w *inherit) Link(c <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	return w.status(c, req{h: &in.InHeader, node2: in.Oldnodeid, entry: &out.NodeId}, func() fuse.Status { return w.next.Link(c, in, name, out) })
}

func (w *inherit) Rename(c <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	return w.status(c, req{h: &in.InHeader, node2: in.Newdir}, func() fuse.Status { return w.next.Rename(c, in, oldName, newName) })
}

func (w *inherit) Unlink(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return w.status(c, req{h: h}, func() fuse.Status { return w.next.Unlink(c, h, name) })
}

func (w *inherit) Rmdir(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return w.status(c, req{h: h}, func() fuse.Status { return w.next.Rmdir(c, h, name) })
}

func (w *inherit) Readlink(c <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	return serve(w, c, req{h: h}, func() ([]byte, fuse.Status) { return w.next.Readlink(c, h) })
}

func (w *inherit) Access(c <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	return w.status(c, req{h: &in.InHeader}, func() fuse.Status { return w.next.Access(c, in) })
}

func (w *inherit) StatFs(c <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	return w.status(c, req{h: h}, func() fuse.Status { return w.next.StatFs(c, h, out) })
}

func (w *inherit) GetXAttr(c <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	return serve(w, c, req{h: h}, func() (uint32, fuse.Status) { return w.next.GetXAttr(c, h, attr, dest) })
}

func (w *inherit) ListXAttr(c <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	return serve(w, c, req{h: h}, func() (uint32, fuse.Status) { return w.next.ListXAttr(c, h, dest) })
}

func (w *inherit) SetXAttr(c <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	return w.status(c, req{h: &in.InHeader}, func() fuse.Status { return w.next.SetXAttr(c, in, attr, data) })
}

func (w *inherit) RemoveXAttr(c <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	return w.status(c, req{h: h}, func() fuse.Status { return w.next.RemoveXAttr(c, h, attr) })
}

// Attributes, with a handle that only says which open the kernel had:

func (w *inherit) GetAttr(c <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	r := req{h: &in.InHeader, fh: &in.Fh_, kind: optional, valid: &in.Flags_, validFH: fuse.FUSE_GETATTR_FH}
	return w.status(c, r, func() fuse.Status { return w.next.GetAttr(c, in, out) })
}

func (w *inherit) SetAttr(c <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	r := req{h: &in.InHeader, fh: &in.Fh, kind: optional, valid: &in.Valid, validFH: fuse.FATTR_FH}
	return w.status(c, r, func() fuse.Status { return w.next.SetAttr(c, in, out) })
}

func (w *inherit) Statx(c <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	r := req{h: &in.InHeader, fh: &in.Fh, kind: optional, valid: &in.GetattrFlags, validFH: fuse.FUSE_GETATTR_FH}
	return w.status(c, r, func() fuse.Status { return w.next.Statx(c, in, out) })
}

// Opens, which hand the kernel a handle:

func (w *inherit) Open(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return w.status(c, req{h: &in.InHeader, outFh: &out.Fh}, func() fuse.Status { return w.next.Open(c, in, out) })
}

func (w *inherit) OpenDir(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return w.status(c, req{h: &in.InHeader, outFh: &out.Fh}, func() fuse.Status { return w.next.OpenDir(c, in, out) })
}

func (w *inherit) Create(c <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	r := req{h: &in.InHeader, entry: &out.NodeId, outFh: &out.Fh}
	return w.status(c, r, func() fuse.Status { return w.next.Create(c, in, name, out) })
}

func (w *inherit) Tmpfile(c <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	r := req{h: &in.InHeader, entry: &out.NodeId, outFh: &out.Fh}
	return w.status(c, r, func() fuse.Status { return w.next.Tmpfile(c, in, out) })
}

// Reads and writes of a handle, opened again if an earlier server's:

func (w *inherit) Read(c <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	r := req{h: &in.InHeader, fh: &in.Fh, kind: reopenFile, open: in.Flags}
	return serve(w, c, r, func() (fuse.ReadResult, fuse.Status) { return w.next.Read(c, in, buf) })
}

func (w *inherit) Write(c <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	r := req{h: &in.InHeader, fh: &in.Fh, kind: reopenFile, open: in.Flags}
	return serve(w, c, r, func() (uint32, fuse.Status) { return w.next.Write(c, in, data) })
}

func (w *inherit) Writev(c <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	r := req{h: &in.InHeader, fh: &in.Fh, kind: reopenFile, open: in.Flags}
	return serve(w, c, r, func() (uint32, fuse.Status) { return w.next.Writev(c, in, data) })
}

func (w *inherit) ReadDir(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: reopenDir}, func() fuse.Status { return w.next.ReadDir(c, in, out) })
}

func (w *inherit) ReadDirPlus(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: reopenDir}, func() fuse.Status { return w.next.ReadDirPlus(c, in, out) })
}

// Nothing is buffered: a flush or sync of an earlier server's handle
// has nothing to do.

func (w *inherit) Flush(c <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: nothingBuffered}, func() fuse.Status { return w.next.Flush(c, in) })
}

func (w *inherit) Fsync(c <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: nothingBuffered}, func() fuse.Status { return w.next.Fsync(c, in) })
}

func (w *inherit) FsyncDir(c <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: nothingBuffered}, func() fuse.Status { return w.next.FsyncDir(c, in) })
}

// cgfs serves no locks, seeks, allocation, copies or ioctls:

func (w *inherit) GetLk(c <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: notServed}, func() fuse.Status { return w.next.GetLk(c, in, out) })
}

func (w *inherit) SetLk(c <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: notServed}, func() fuse.Status { return w.next.SetLk(c, in) })
}

func (w *inherit) SetLkw(c <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: notServed}, func() fuse.Status { return w.next.SetLkw(c, in) })
}

func (w *inherit) Lseek(c <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: notServed}, func() fuse.Status { return w.next.Lseek(c, in, out) })
}

func (w *inherit) Fallocate(c <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: notServed}, func() fuse.Status { return w.next.Fallocate(c, in) })
}

func (w *inherit) Ioctl(c <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	return w.status(c, req{h: &in.InHeader, fh: &in.Fh, kind: notServed}, func() fuse.Status { return w.next.Ioctl(c, in, inbuf, out, outbuf) })
}

func (w *inherit) CopyFileRange(c <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	r := req{h: &in.InHeader, node2: in.NodeIdOut, fh: &in.FhIn, fh2: &in.FhOut, kind: notServed}
	return serve(w, c, r, func() (uint32, fuse.Status) { return w.next.CopyFileRange(c, in) })
}

// And what names nothing of the kernel's:

func (w *inherit) String() string      { return w.next.String() }
func (w *inherit) SetDebug(debug bool) { w.next.SetDebug(debug) }
func (w *inherit) Init(s *fuse.Server) { w.next.Init(s) }
func (w *inherit) OnUnmount()          { w.next.OnUnmount() }
