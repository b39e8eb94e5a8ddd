package launch

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// terminal is a pseudo-terminal of the container's own, whose other end
// cgfs run joins to its own terminal (raw), passing window sizes on.
type terminal struct {
	master, slave *os.File
	saved         *unix.Termios // the host terminal as it was
	winch         chan os.Signal
	output        chan struct{} // closed when the container's output is all out
}

func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// newTerminal opens a pseudo-terminal whose slave the container's root
// (host uid owner) owns.
func newTerminal(owner int) (*terminal, error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, err
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, err
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	s, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		return nil, err
	}
	if os.Geteuid() != 0 {
		owner = -1 // a user's: the slave is its own, which its container's root is
	}
	if err := unix.Fchown(int(s.Fd()), owner, owner); err != nil {
		m.Close()
		s.Close()
		return nil, err
	}
	t := &terminal{master: m, slave: s}
	if ws, err := unix.IoctlGetWinsize(int(os.Stdin.Fd()), unix.TIOCGWINSZ); err == nil {
		_ = unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, ws)
	}
	return t, nil
}

// terminalOf is the terminal whose master is master: the container's
// console, made in its own devpts by its init.
func terminalOf(master *os.File) *terminal {
	t := &terminal{master: master}
	if ws, err := unix.IoctlGetWinsize(int(os.Stdin.Fd()), unix.TIOCGWINSZ); err == nil {
		_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, ws)
	}
	return t
}

// copy joins the host terminal, made raw, to the container's.
func (t *terminal) copy() {
	if st, err := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS); err == nil {
		saved := *st
		t.saved = &saved
		raw := *st
		raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		raw.Oflag &^= unix.OPOST
		raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		raw.Cflag &^= unix.CSIZE | unix.PARENB
		raw.Cflag |= unix.CS8
		raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
		_ = unix.IoctlSetTermios(int(os.Stdin.Fd()), unix.TCSETS, &raw)
	}
	t.winch = make(chan os.Signal, 1)
	signal.Notify(t.winch, syscall.SIGWINCH)
	go func() {
		for range t.winch {
			if ws, err := unix.IoctlGetWinsize(int(os.Stdin.Fd()), unix.TIOCGWINSZ); err == nil {
				_ = unix.IoctlSetWinsize(int(t.master.Fd()), unix.TIOCSWINSZ, ws)
			}
		}
	}()
	if t.slave != nil {
		t.slave.Close() // the container holds it now
	}
	t.output = make(chan struct{})
	go func() { _, _ = io.Copy(t.master, os.Stdin) }()
	go func() {
		_, _ = io.Copy(os.Stdout, t.master) // until the container's last holder of it goes
		close(t.output)
	}()
}

func (t *terminal) close() {
	if t.output != nil {
		select {
		case <-t.output:
		case <-time.After(time.Second): // a process of the container lives on with it
		}
	}
	if t.winch != nil {
		signal.Stop(t.winch)
		close(t.winch)
	}
	if t.saved != nil {
		_ = unix.IoctlSetTermios(int(os.Stdin.Fd()), unix.TCSETS, t.saved)
	}
	t.master.Close()
	if t.slave != nil {
		t.slave.Close()
	}
}
