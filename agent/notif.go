//go:build linux

package agent

import (
	"errors"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The structs of linux/seccomp.h. golang.org/x/sys/unix v0.50.0 has the
// constants but not these types.

// seccompData is struct seccomp_data.
type seccompData struct {
	Nr   int32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

// seccompNotif is struct seccomp_notif.
type seccompNotif struct {
	ID    uint64
	Pid   uint32 // thread id, in the pid namespace of the receiver
	Flags uint32
	Data  seccompData
}

// seccompNotifResp is struct seccomp_notif_resp.
type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// seccompNotifSizes is struct seccomp_notif_sizes.
type seccompNotifSizes struct {
	Notif, Resp, Data uint16
}

// listener wraps the listener fd. Every ioctl goes through RawConn.Control,
// which holds a reference on the fd: a concurrent Close never lets an
// ioctl reach a reused descriptor number, it makes it fail instead.
type listener struct {
	f        *os.File
	rc       syscall.RawConn
	notifBuf []uint64 // the kernel's struct seccomp_notif, sized as it says
	respLen  int      // the kernel's struct seccomp_notif_resp, in uint64s
}

func newListener(f *os.File) (*listener, error) {
	var sz seccompNotifSizes
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_NOTIF_SIZES, 0, uintptr(unsafe.Pointer(&sz))); e != 0 {
		return nil, os.NewSyscallError("seccomp(SECCOMP_GET_NOTIF_SIZES)", e)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	words := func(kernel uint16, ours uintptr) int {
		return (max(int(kernel), int(ours)) + 7) / 8
	}
	return &listener{
		f:        f,
		rc:       rc,
		notifBuf: make([]uint64, words(sz.Notif, unsafe.Sizeof(seccompNotif{}))),
		respLen:  words(sz.Resp, unsafe.Sizeof(seccompNotifResp{})),
	}, nil
}

// ioctl runs one ioctl on the listener.
func (l *listener) ioctl(req uintptr, arg unsafe.Pointer) error {
	var errno unix.Errno
	err := l.rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// setFlags sets flags of the listener (SECCOMP_IOCTL_NOTIF_SET_FLAGS takes
// them as the argument itself, not a pointer).
func (l *listener) setFlags(flags uintptr) error {
	var errno unix.Errno
	err := l.rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags)
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// wait blocks until the listener has a notification (ready), has no task
// left that uses its filter (hup), or wake becomes readable (woken).
func (l *listener) wait(wake int) (ready, hup, woken bool, err error) {
	var perr error
	err = l.rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
		for {
			_, perr = unix.Poll(fds, -1)
			if !errors.Is(perr, unix.EINTR) {
				break
			}
		}
		ready = fds[0].Revents&unix.POLLIN != 0
		hup = fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
		woken = fds[1].Revents != 0
	})
	if err == nil && perr != nil {
		err = os.NewSyscallError("poll", perr)
	}
	return ready, hup, woken, err
}

// recv receives one notification. Only one goroutine at a time may call
// it (a second would block in the ioctl, out of Close's reach). ENOENT
// means the notification's task was interrupted before it was received.
func (l *listener) recv() (seccompNotif, error) {
	clear(l.notifBuf) // the kernel refuses a buffer that is not zeroed
	if err := l.ioctl(unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&l.notifBuf[0])); err != nil {
		return seccompNotif{}, err
	}
	return *(*seccompNotif)(unsafe.Pointer(&l.notifBuf[0])), nil
}

// valid reports whether notification id is still alive: its task is still
// waiting in the syscall, so its thread id still names it.
func (l *listener) valid(id uint64) bool {
	return l.ioctl(unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&id)) == nil
}

// send responds to notification id. errno 0 with val is a success;
// continued asks the kernel to run the syscall itself.
func (l *listener) send(id uint64, val int64, errno unix.Errno, continued bool) error {
	buf := make([]uint64, l.respLen)
	r := (*seccompNotifResp)(unsafe.Pointer(&buf[0]))
	r.ID = id
	if continued {
		r.Flags = unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE
	} else {
		r.Val = val
		r.Error = -int32(errno)
	}
	return l.ioctl(unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&buf[0]))
}
