//go:build linux

package agent

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// lxcMsg is an LXC 5.0 proxy message as lxcMonitor sends it: the
// header, a notification of the syscall nr with args, the response
// (its id set), and the cookie.
func lxcMsg(nr int32, args [6]uint64, cookie string) []byte {
	n := seccompNotif{ID: 0x1234, Pid: 4242, Data: seccompData{Nr: nr, Arch: unix.AUDIT_ARCH_X86_64, Args: args}}
	notifLen, respLen := int(unsafe.Sizeof(n)), int(unsafe.Sizeof(seccompNotifResp{}))
	msg := make([]byte, lxcHeaderLen+notifLen+respLen, lxcHeaderLen+notifLen+respLen+len(cookie))
	binary.NativeEndian.PutUint32(msg[8:], 4000)
	binary.NativeEndian.PutUint32(msg[12:], 4001)
	binary.NativeEndian.PutUint16(msg[16:], uint16(notifLen))
	binary.NativeEndian.PutUint16(msg[18:], uint16(respLen))
	binary.NativeEndian.PutUint16(msg[20:], uint16(unsafe.Sizeof(seccompData{})))
	binary.NativeEndian.PutUint64(msg[24:], uint64(len(cookie)))
	copy(msg[lxcHeaderLen:], unsafe.Slice((*byte)(unsafe.Pointer(&n)), notifLen))
	binary.NativeEndian.PutUint64(msg[lxcHeaderLen+notifLen:], n.ID)
	return append(msg, cookie...)
}

// FuzzLXCMessage: what an LXC monitor sends the proxy (handleMsg). A
// message whose header does not hold together (short, reserved bits
// set, sizes below the kernel's structs or past the message) gets the
// empty reply, which LXC answers ENOSYS; any other gets exactly header,
// notification and response, the first two as sent, the response for
// the notification's id. A proxy that serves no view and no mounts
// continues every syscall, for callers it cannot check above all (the
// listener sent is none), and no reply is longer than the message.
// Every descriptor sent is closed, whatever the message.
func FuzzLXCMessage(f *testing.F) {
	for _, nr := range []int32{x86_64Statfs, x86_64Fstatfs, x86_64Mount, 39} {
		f.Add(lxcMsg(nr, [6]uint64{0, 0x1000}, "cookie"), true, false)
		f.Add(lxcMsg(nr, [6]uint64{3}, ""), false, true)
	}
	f.Add(lxcMsg(x86_64Statfs, [6]uint64{}, "")[:lxcHeaderLen], false, false)
	f.Add([]byte{}, true, false)
	tmp := f.TempDir()
	procDir := filepath.Join(tmp, "proc")
	if err := os.Mkdir(procDir, 0o755); err != nil {
		f.Fatal(err)
	}
	mem := filepath.Join(tmp, "mem")
	f.Fuzz(func(t *testing.T, msg []byte, withFds, views bool) {
		cfg := Config{}
		if views {
			cfg.Magic = func(dev, ino uint64) (int64, bool) { return unix.CGROUP2_SUPER_MAGIC, true }
		}
		s := &LXCProxy{a: newAgent(cfg)}
		var fds []int
		if withFds {
			// /proc/PID (an empty directory), its mem (the message
			// itself, so pointers into it read its bytes), and a
			// listener that is none (no notification is valid).
			if err := os.WriteFile(mem, msg, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, o := range []struct {
				path  string
				flags int
			}{{procDir, unix.O_RDONLY | unix.O_DIRECTORY}, {mem, unix.O_RDWR}, {"/dev/null", unix.O_RDONLY}} {
				fd, err := unix.Open(o.path, o.flags|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				fds = append(fds, fd)
			}
		}
		before := s.Stats()
		reply := s.handleMsg(msg, 0, fds)
		for _, fd := range fds {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
				t.Fatalf("handleMsg(%q) left descriptor %d open", msg, fd)
			}
		}
		notifLen, respLen := int(unsafe.Sizeof(seccompNotif{})), int(unsafe.Sizeof(seccompNotifResp{}))
		holds := len(msg) >= lxcHeaderLen && binary.NativeEndian.Uint64(msg) == 0
		if holds {
			notifLen = int(binary.NativeEndian.Uint16(msg[16:]))
			respLen = int(binary.NativeEndian.Uint16(msg[18:]))
			holds = notifLen >= int(unsafe.Sizeof(seccompNotif{})) && respLen >= int(unsafe.Sizeof(seccompNotifResp{})) &&
				int(binary.NativeEndian.Uint16(msg[20:])) >= int(unsafe.Sizeof(seccompData{})) &&
				len(msg) >= lxcHeaderLen+notifLen+respLen
		}
		if !holds {
			if len(reply) != 0 || s.Stats() != before {
				t.Fatalf("handleMsg(%q) = %q (stats %+v), want the empty reply, nothing counted", msg, reply, s.Stats())
			}
			return
		}
		base := lxcHeaderLen + notifLen
		if len(reply) != base+respLen || len(reply) > len(msg) || !bytes.Equal(reply[:base], msg[:base]) {
			t.Fatalf("handleMsg(%q) = %q, want %d bytes, the first %d as sent", msg, reply, base+respLen, base)
		}
		var r seccompNotifResp
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&r)), unsafe.Sizeof(r)), reply[base:])
		if id := binary.NativeEndian.Uint64(msg[lxcHeaderLen:]); r.ID != id {
			t.Fatalf("handleMsg(%q): response for id %#x, want %#x", msg, r.ID, id)
		}
		if r.Flags != unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE || r.Error != 0 || r.Val != 0 || slices.ContainsFunc(reply[base+int(unsafe.Sizeof(r)):], func(b byte) bool { return b != 0 }) {
			t.Fatalf("handleMsg(%q): response %+v, want the syscall continued", msg, r)
		}
		if after := s.Stats(); after.Handled() != before.Handled()+1 {
			t.Fatalf("handleMsg(%q): stats %+v -> %+v, want one more handled", msg, before, after)
		}
	})
}

// FuzzParseRights: the control messages of what a monitor sends. Any
// bytes give at most one descriptor per four; the descriptors of every
// SCM_RIGHTS message are found in order, other messages (credentials)
// skipped; bytes the kernel would not write give none rather than a
// crash.
func FuzzParseRights(f *testing.F) {
	f.Add(unix.UnixRights(3, 4, 5), []byte{3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0})
	f.Add(append(unix.UnixRights(7), unix.UnixCredentials(&unix.Ucred{Pid: 1})...), []byte{9, 0, 0, 0})
	f.Add([]byte{}, []byte{})
	f.Add(unix.UnixRights(3)[:12], []byte{1, 2, 3, 4, 5, 6, 7, 8})
	f.Fuzz(func(t *testing.T, oob, raw []byte) {
		// A payload of part of a descriptor (the kernel never writes
		// one: scm_detach_fds sets cmsg_len to CMSG_LEN(n *
		// sizeof(int))) made x/sys's ParseUnixRights index past its
		// slice; parseRights skips such messages (the crasher is
		// testdata/fuzz/FuzzParseRights/70221b85eb057d02).
		if fds := parseRights(oob); len(fds) > len(oob)/4 {
			t.Fatalf("parseRights(%q) = %v: more than the bytes hold", oob, fds)
		}
		var a, b []int
		for i := 0; i+4 <= len(raw) && i < 64; i += 4 {
			fd := int(int32(binary.NativeEndian.Uint32(raw[i:])))
			if i%8 == 0 {
				a = append(a, fd)
			} else {
				b = append(b, fd)
			}
		}
		var built []byte
		if len(a) > 0 {
			built = append(built, unix.UnixRights(a...)...)
		}
		built = append(built, unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 2, Gid: 3})...)
		if len(b) > 0 {
			built = append(built, unix.UnixRights(b...)...)
		}
		if got, want := parseRights(built), append(slices.Clone(a), b...); !slices.Equal(got, want) {
			t.Fatalf("parseRights of rights %v, credentials, rights %v = %v", a, b, got)
		}
	})
}
