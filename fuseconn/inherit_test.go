package fuseconn

import (
	"fmt"
	"slices"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fakeBridge is a node bridge that writes down what reaches it: nodes
// it knows answer a LOOKUP of "." themselves, others are revived.
type fakeBridge struct {
	fuse.RawFileSystem // ENOSYS for the rest
	known              map[uint64]bool
	revived            uint64
	nextFh             uint64
	calls              []string
}

func newFakeBridge(known ...uint64) *fakeBridge {
	b := &fakeBridge{RawFileSystem: fuse.NewDefaultRawFileSystem(), known: map[uint64]bool{}, nextFh: 1}
	for _, id := range known {
		b.known[id] = true
	}
	return b
}

func (b *fakeBridge) call(f string, args ...any) { b.calls = append(b.calls, fmt.Sprintf(f, args...)) }

func (b *fakeBridge) Revived() uint64 { id := b.revived; b.revived = 0; return id }

func (b *fakeBridge) Lookup(c <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	b.call("lookup %d %s", h.NodeId, name)
	if name == "." {
		if !b.known[h.NodeId] {
			b.known[h.NodeId], b.revived = true, h.NodeId
		}
		out.NodeId = h.NodeId
		return fuse.OK
	}
	out.NodeId = 100
	return fuse.OK
}

func (b *fakeBridge) Forget(id, n uint64) { b.call("forget %d %d", id, n) }

func (b *fakeBridge) GetAttr(c <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	b.call("getattr %d fh %d flags %d", in.NodeId, in.Fh_, in.Flags_)
	return fuse.OK
}

func (b *fakeBridge) Open(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	out.Fh = b.nextFh
	b.nextFh++
	b.call("open %d flags %#o: %d", in.NodeId, in.Flags, out.Fh)
	return fuse.OK
}

func (b *fakeBridge) OpenDir(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	out.Fh = b.nextFh
	b.nextFh++
	b.call("opendir %d flags %#o: %d", in.NodeId, in.Flags, out.Fh)
	return fuse.OK
}

func (b *fakeBridge) Read(c <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	b.call("read %d fh %d", in.NodeId, in.Fh)
	return fuse.ReadResultData(nil), fuse.OK
}

func (b *fakeBridge) ReadDir(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	b.call("readdir %d fh %d", in.NodeId, in.Fh)
	return fuse.OK
}

func (b *fakeBridge) Release(c <-chan struct{}, in *fuse.ReleaseIn) {
	b.call("release %d fh %d", in.NodeId, in.Fh)
}

func (b *fakeBridge) Flush(c <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	b.call("flush %d fh %d", in.NodeId, in.Fh)
	return fuse.OK
}

func (b *fakeBridge) GetLk(c <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	b.call("getlk %d fh %d", in.NodeId, in.Fh)
	return fuse.OK
}

func (b *fakeBridge) Rename(c <-chan struct{}, in *fuse.RenameIn, from, to string) fuse.Status {
	b.call("rename %d %s %d %s", in.NodeId, from, in.Newdir, to)
	return fuse.OK
}

func status(st fuse.Status) string {
	if st == fuse.ENOSYS {
		return "ENOSYS"
	}
	return st.String()
}

// earlier and mine are file handles of the server before (generation 1)
// and of this one (2).
func earlier(fh uint64) uint64 { return 1<<32 | fh }
func mine(fh uint64) uint64    { return 2<<32 | fh }

// TestInherit: what of each request reaches the bridge of a server that
// took a connection over (generation 2), and what the kernel is
// answered.
func TestInherit(t *testing.T) {
	hdr := func(id uint64) fuse.InHeader { return fuse.InHeader{NodeId: id} }
	cases := []struct {
		name  string
		known []uint64 // node ids the bridge knows before
		do    func(w *inherit) string
		want  []string // what reaches the bridge, in order
		said  string   // what do says of the answer
	}{
		{"a node the bridge does not know is revived first",
			nil, func(w *inherit) string {
				in := fuse.GetAttrIn{InHeader: hdr(7)}
				return w.GetAttr(nil, &in, &fuse.AttrOut{}).String()
			}, []string{"lookup 7 .", "getattr 7 fh 0 flags 0"}, "OK"},
		{"a node the bridge knows: the lookup of . is given back",
			[]uint64{8}, func(w *inherit) string {
				in := fuse.GetAttrIn{InHeader: hdr(8)}
				w.GetAttr(nil, &in, &fuse.AttrOut{})
				in = fuse.GetAttrIn{InHeader: hdr(8)}
				return w.GetAttr(nil, &in, &fuse.AttrOut{}).String()
			}, []string{"lookup 8 .", "forget 8 1", "getattr 8 fh 0 flags 0", "getattr 8 fh 0 flags 0"}, "OK"},
		{"the root is never looked up",
			nil, func(w *inherit) string {
				in := fuse.GetAttrIn{InHeader: hdr(fuse.FUSE_ROOT_ID)}
				return w.GetAttr(nil, &in, &fuse.AttrOut{}).String()
			}, []string{"getattr 1 fh 0 flags 0"}, "OK"},
		{"an attribute request with an earlier server's handle: the node answers",
			[]uint64{7}, func(w *inherit) string {
				in := fuse.GetAttrIn{InHeader: hdr(7), Flags_: fuse.FUSE_GETATTR_FH, Fh_: earlier(3)}
				return w.GetAttr(nil, &in, &fuse.AttrOut{}).String()
			}, []string{"lookup 7 .", "forget 7 1", "getattr 7 fh 0 flags 0"}, "OK"},
		{"an attribute request with this server's handle",
			nil, func(w *inherit) string {
				in := fuse.GetAttrIn{InHeader: hdr(7), Flags_: fuse.FUSE_GETATTR_FH, Fh_: mine(3)}
				return w.GetAttr(nil, &in, &fuse.AttrOut{}).String()
			}, []string{"lookup 7 .", "getattr 7 fh 3 flags 1"}, "OK"},
		{"an earlier server's handle is opened again once, as the kernel says, and released",
			nil, func(w *inherit) string {
				in := fuse.ReadIn{InHeader: hdr(7), Fh: earlier(5), Flags: unix.O_WRONLY | unix.O_TRUNC | unix.O_CREAT}
				w.Read(nil, &in, nil)
				in = fuse.ReadIn{InHeader: hdr(7), Fh: earlier(5)}
				w.Read(nil, &in, nil)
				w.Release(nil, &fuse.ReleaseIn{InHeader: hdr(7), Fh: earlier(5)})
				w.Release(nil, &fuse.ReleaseIn{InHeader: hdr(7), Fh: earlier(6)}) // never used: nothing
				return ""
			}, []string{"lookup 7 .", "open 7 flags 01: 1", "read 7 fh 1", "read 7 fh 1", "release 7 fh 1"}, ""},
		{"a directory handle of an earlier server is opened again as a directory",
			[]uint64{9}, func(w *inherit) string {
				in := fuse.ReadIn{InHeader: hdr(9), Fh: earlier(2)}
				return w.ReadDir(nil, &in, nil).String()
			}, []string{"lookup 9 .", "forget 9 1", "opendir 9 flags 0200000: 1", "readdir 9 fh 1"}, "OK"},
		{"this server's handles are tagged with its generation, and untagged",
			nil, func(w *inherit) string {
				out := fuse.OpenOut{}
				w.Open(nil, &fuse.OpenIn{InHeader: hdr(7)}, &out)
				in := fuse.ReadIn{InHeader: hdr(7), Fh: out.Fh}
				w.Read(nil, &in, nil)
				return fmt.Sprintf("%#x", out.Fh)
			}, []string{"lookup 7 .", "open 7 flags 0: 1", "read 7 fh 1"}, "0x200000001"},
		{"nothing is buffered: a flush of an earlier server's handle is OK at once",
			nil, func(w *inherit) string {
				a := w.Flush(nil, &fuse.FlushIn{InHeader: hdr(7), Fh: earlier(4)})
				b := w.Flush(nil, &fuse.FlushIn{InHeader: hdr(7), Fh: mine(4)})
				return a.String() + " " + b.String()
			}, []string{"lookup 7 .", "flush 7 fh 4"}, "OK OK"},
		{"locks of an earlier server's handle are not served",
			nil, func(w *inherit) string {
				a := w.GetLk(nil, &fuse.LkIn{InHeader: hdr(7), Fh: earlier(4)}, &fuse.LkOut{})
				b := w.GetLk(nil, &fuse.LkIn{InHeader: hdr(7), Fh: mine(4)}, &fuse.LkOut{})
				return status(a) + " " + status(b)
			}, []string{"lookup 7 .", "getlk 7 fh 4"}, "ENOSYS OK"},
		{"a copy from or to an earlier server's handle is not served",
			nil, func(w *inherit) string {
				_, st := w.CopyFileRange(nil, &fuse.CopyFileRangeIn{InHeader: hdr(7), FhIn: mine(1), NodeIdOut: 8, FhOut: earlier(2)})
				return status(st)
			}, nil, "ENOSYS"},
		{"both nodes of a rename are known",
			nil, func(w *inherit) string {
				return w.Rename(nil, &fuse.RenameIn{InHeader: hdr(7), Newdir: 8}, "a", "b").String()
			}, []string{"lookup 7 .", "lookup 8 .", "rename 7 a 8 b"}, "OK"},
		{"the kernel's forget of its whole count gives the bridge back what it holds",
			nil, func(w *inherit) string {
				w.Lookup(nil, &fuse.InHeader{NodeId: 7}, "x", &fuse.EntryOut{}) // entry 100
				w.Lookup(nil, &fuse.InHeader{NodeId: 7}, "x", &fuse.EntryOut{})
				w.Forget(100, 5) // the kernel's count over both servers
				w.Forget(100, 1) // nothing left
				w.Forget(11, 3)  // an earlier server's node nothing here used
				return ""
			}, []string{"lookup 7 .", "lookup 7 x", "lookup 7 x", "forget 100 2"}, ""},
	}
	for _, c := range cases {
		b := newFakeBridge(c.known...)
		w := &inherit{next: b, gen: 2, resumed: true, checked: map[uint64]uint64{}, files: map[uint64]uint64{}}
		said := c.do(w)
		if !slices.Equal(b.calls, c.want) {
			t.Errorf("%s: the bridge got\n\t%q\nwant\n\t%q", c.name, b.calls, c.want)
		}
		if said != c.said {
			t.Errorf("%s: answered %s, want %s", c.name, said, c.said)
		}
	}
}

// TestInheritOfAFirstServer: a server that made its connection looks
// nothing up; it only tags its handles.
func TestInheritOfAFirstServer(t *testing.T) {
	b := newFakeBridge()
	w := &inherit{next: b, gen: 1, checked: map[uint64]uint64{}, files: map[uint64]uint64{}}
	out := fuse.OpenOut{}
	w.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: 7}}, &out)
	w.Read(nil, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: 7}, Fh: out.Fh}, nil)
	w.Forget(7, 3)
	want := []string{"open 7 flags 0: 1", "read 7 fh 1", "forget 7 3"}
	if !slices.Equal(b.calls, want) || out.Fh != earlier(1) {
		t.Errorf("the bridge got %q and the kernel handle %#x; want %q and %#x", b.calls, out.Fh, want, earlier(1))
	}
}
