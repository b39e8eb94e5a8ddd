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
//     any more is ESTALE.
//   - File handles carry the generation of the server that opened them in
//     their high 32 bits. One of an earlier server is opened again on
//     first use, as the kernel says it was opened (the flags in READ and
//     WRITE; the kernel only sends a handle it granted), and released
//     with it.
//
// A server that made its connection has no earlier nodes: it only tags
// its handles.
type inherit struct {
	fuse.RawFileSystem
	fs      FS
	gen     uint64
	resumed bool

	mu sync.RWMutex
	// checked are the node ids the bridge knows since taking over, each
	// with how many of the kernel's lookups it holds (see Forget).
	checked map[uint64]uint64
	files   map[uint64]uint64 // an earlier server's handle: this one's
}

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
	w.fs.Revived() // clears it
	var out fuse.EntryOut
	hdr := fuse.InHeader{NodeId: id, Caller: h.Caller}
	if st := w.RawFileSystem.Lookup(cancel, &hdr, ".", &out); !st.Ok() {
		return st
	}
	if w.fs.Revived() != id {
		w.RawFileSystem.Forget(id, 1) // it knew it: give the lookup back
	}
	// The one lookup the bridge holds (the revival's, or the one it had)
	// stands for all the earlier servers'.
	w.checked[id] = 1
	return fuse.OK
}

// mark notes a node id the bridge handed the kernel (an answer with an
// entry): it knows it, and holds one more of the kernel's lookups.
func (w *inherit) mark(st fuse.Status, id uint64) fuse.Status {
	if !w.resumed || !st.Ok() || id == fuse.FUSE_ROOT_ID || id == 0 {
		return st
	}
	w.mu.Lock()
	w.checked[id]++
	w.mu.Unlock()
	return st
}

func (w *inherit) knowIn(cancel <-chan struct{}, h *fuse.InHeader) fuse.Status {
	return w.know(cancel, h, h.NodeId)
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
	if st := w.knowIn(cancel, h); !st.Ok() {
		return 0, st
	}
	in := fuse.OpenIn{InHeader: *h, Flags: flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC)}
	var out fuse.OpenOut
	var st fuse.Status
	if dir {
		in.Flags = unix.O_RDONLY | unix.O_DIRECTORY
		st = w.RawFileSystem.OpenDir(cancel, &in, &out)
	} else {
		st = w.RawFileSystem.Open(cancel, &in, &out)
	}
	if !st.Ok() {
		return 0, st
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if other, ok := w.files[fh]; ok { // opened meanwhile: keep one
		rel := fuse.ReleaseIn{InHeader: *h, Fh: out.Fh}
		if dir {
			w.RawFileSystem.ReleaseDir(&rel)
		} else {
			w.RawFileSystem.Release(cancel, &rel)
		}
		return other, fuse.OK
	}
	w.files[fh] = out.Fh
	return out.Fh, fuse.OK
}

// handle is the bridge's handle for the kernel's fh in a request that
// carries one.
func (w *inherit) handle(cancel <-chan struct{}, h *fuse.InHeader, fh *uint64, dir bool, flags uint32) fuse.Status {
	if mine, ok := w.own(*fh); ok {
		*fh = mine
		return w.knowIn(cancel, h)
	}
	mine, st := w.inherited(cancel, h, *fh, dir, flags)
	*fh = mine
	return st
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

func (w *inherit) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return st
	}
	return w.mark(w.RawFileSystem.Lookup(cancel, h, name, out), out.NodeId)
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
	w.RawFileSystem.Forget(nodeid, nlookup)
}

func (w *inherit) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.Flags_&fuse.FUSE_GETATTR_FH != 0 {
		if mine, ok := w.own(in.Fh_); ok {
			in.Fh_ = mine
		} else { // an earlier server's handle: the node answers
			in.Flags_ &^= fuse.FUSE_GETATTR_FH
			in.Fh_ = 0
		}
	}
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return w.RawFileSystem.GetAttr(cancel, in, out)
}

func (w *inherit) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.Valid&fuse.FATTR_FH != 0 {
		if mine, ok := w.own(in.Fh); ok {
			in.Fh = mine
		} else {
			in.Valid &^= fuse.FATTR_FH
			in.Fh = 0
		}
	}
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return w.RawFileSystem.SetAttr(cancel, in, out)
}

func (w *inherit) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	if in.GetattrFlags&fuse.FUSE_GETATTR_FH != 0 {
		if mine, ok := w.own(in.Fh); ok {
			in.Fh = mine
		} else {
			in.GetattrFlags &^= fuse.FUSE_GETATTR_FH
			in.Fh = 0
		}
	}
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return w.RawFileSystem.Statx(cancel, in, out)
}

func (w *inherit) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return w.mark(w.RawFileSystem.Mknod(cancel, in, name, out), out.NodeId)
}

func (w *inherit) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return w.mark(w.RawFileSystem.Mkdir(cancel, in, name, out), out.NodeId)
}

func (w *inherit) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return st
	}
	return w.RawFileSystem.Unlink(cancel, h, name)
}

func (w *inherit) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return st
	}
	return w.RawFileSystem.Rmdir(cancel, h, name)
}

func (w *inherit) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	if st := w.know(cancel, &in.InHeader, in.Newdir); !st.Ok() {
		return st
	}
	return w.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (w *inherit) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	if st := w.know(cancel, &in.InHeader, in.Oldnodeid); !st.Ok() {
		return st
	}
	return w.mark(w.RawFileSystem.Link(cancel, in, name, out), out.NodeId)
}

func (w *inherit) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return st
	}
	return w.mark(w.RawFileSystem.Symlink(cancel, h, target, name, out), out.NodeId)
}

func (w *inherit) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return nil, st
	}
	return w.RawFileSystem.Readlink(cancel, h)
}

func (w *inherit) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return w.RawFileSystem.Access(cancel, in)
}

func (w *inherit) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := w.mark(w.RawFileSystem.Create(cancel, in, name, out), out.NodeId)
	out.Fh = w.tag(out.Fh)
	return st
}

func (w *inherit) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := w.mark(w.RawFileSystem.Tmpfile(cancel, in, out), out.NodeId)
	out.Fh = w.tag(out.Fh)
	return st
}

func (w *inherit) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := w.RawFileSystem.Open(cancel, in, out)
	out.Fh = w.tag(out.Fh)
	return st
}

func (w *inherit) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	st := w.RawFileSystem.OpenDir(cancel, in, out)
	out.Fh = w.tag(out.Fh)
	return st
}

func (w *inherit) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if st := w.handle(cancel, &in.InHeader, &in.Fh, false, in.Flags); !st.Ok() {
		return nil, st
	}
	return w.RawFileSystem.Read(cancel, in, buf)
}

func (w *inherit) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if st := w.handle(cancel, &in.InHeader, &in.Fh, false, in.Flags); !st.Ok() {
		return 0, st
	}
	return w.RawFileSystem.Write(cancel, in, data)
}

func (w *inherit) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if st := w.handle(cancel, &in.InHeader, &in.Fh, false, in.Flags); !st.Ok() {
		return 0, st
	}
	return w.RawFileSystem.Writev(cancel, in, data)
}

func (w *inherit) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	if w.release(&in.Fh) {
		if w.knowIn(cancel, &in.InHeader).Ok() {
			w.RawFileSystem.Release(cancel, in)
		}
	}
}

func (w *inherit) ReleaseDir(in *fuse.ReleaseIn) {
	if w.release(&in.Fh) {
		if w.knowIn(nil, &in.InHeader).Ok() {
			w.RawFileSystem.ReleaseDir(in)
		}
	}
}

func (w *inherit) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if st := w.handle(cancel, &in.InHeader, &in.Fh, true, 0); !st.Ok() {
		return st
	}
	return w.RawFileSystem.ReadDir(cancel, in, out)
}

func (w *inherit) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if st := w.handle(cancel, &in.InHeader, &in.Fh, true, 0); !st.Ok() {
		return st
	}
	return w.RawFileSystem.ReadDirPlus(cancel, in, out)
}

// Nothing is buffered: a flush or sync of an earlier server's handle
// has nothing to do.

func (w *inherit) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	if mine, ok := w.own(in.Fh); ok {
		in.Fh = mine
		if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
			return st
		}
		return w.RawFileSystem.Flush(cancel, in)
	}
	return fuse.OK
}

func (w *inherit) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if mine, ok := w.own(in.Fh); ok {
		in.Fh = mine
		if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
			return st
		}
		return w.RawFileSystem.Fsync(cancel, in)
	}
	return fuse.OK
}

func (w *inherit) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if mine, ok := w.own(in.Fh); ok {
		in.Fh = mine
		if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
			return st
		}
		return w.RawFileSystem.FsyncDir(cancel, in)
	}
	return fuse.OK
}

// cgfs serves no locks, seeks, allocation, copies or ioctls: for an
// earlier server's handle the answer is the one the bridge gives (ENOSYS
// or what the kernel falls back on).

func (w *inherit) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	if mine, ok := w.own(in.Fh); ok && w.knowIn(cancel, &in.InHeader).Ok() {
		in.Fh = mine
		return w.RawFileSystem.GetLk(cancel, in, out)
	}
	return fuse.ENOSYS
}

func (w *inherit) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	if mine, ok := w.own(in.Fh); ok && w.knowIn(cancel, &in.InHeader).Ok() {
		in.Fh = mine
		return w.RawFileSystem.SetLk(cancel, in)
	}
	return fuse.ENOSYS
}

func (w *inherit) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	if mine, ok := w.own(in.Fh); ok && w.knowIn(cancel, &in.InHeader).Ok() {
		in.Fh = mine
		return w.RawFileSystem.SetLkw(cancel, in)
	}
	return fuse.ENOSYS
}

func (w *inherit) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	if mine, ok := w.own(in.Fh); ok && w.knowIn(cancel, &in.InHeader).Ok() {
		in.Fh = mine
		return w.RawFileSystem.Lseek(cancel, in, out)
	}
	return fuse.ENOSYS
}

func (w *inherit) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	if mine, ok := w.own(in.Fh); ok && w.knowIn(cancel, &in.InHeader).Ok() {
		in.Fh = mine
		return w.RawFileSystem.Fallocate(cancel, in)
	}
	return fuse.ENOSYS
}

func (w *inherit) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	fin, ok1 := w.own(in.FhIn)
	fout, ok2 := w.own(in.FhOut)
	if ok1 && ok2 && w.knowIn(cancel, &in.InHeader).Ok() && w.know(cancel, &in.InHeader, in.NodeIdOut).Ok() {
		in.FhIn, in.FhOut = fin, fout
		return w.RawFileSystem.CopyFileRange(cancel, in)
	}
	return 0, fuse.ENOSYS
}

func (w *inherit) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	if mine, ok := w.own(in.Fh); ok && w.knowIn(cancel, &in.InHeader).Ok() {
		in.Fh = mine
		return w.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf)
	}
	return fuse.ENOSYS
}

func (w *inherit) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return 0, st
	}
	return w.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (w *inherit) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return 0, st
	}
	return w.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (w *inherit) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	if st := w.knowIn(cancel, &in.InHeader); !st.Ok() {
		return st
	}
	return w.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (w *inherit) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return st
	}
	return w.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

func (w *inherit) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	if st := w.knowIn(cancel, h); !st.Ok() {
		return st
	}
	return w.RawFileSystem.StatFs(cancel, h, out)
}
