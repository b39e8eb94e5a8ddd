// Package keeper keeps a daemon's connections alive across its server
// processes: it runs the server, holds a copy of every descriptor a
// container depends on (each view's FUSE connection and mount root, each
// seccomp listener) with what it takes to serve it again, starts a new
// server with them when the old one dies, and hands over from an old
// server to a new one (an upgrade) so that no container's request fails.
//
// Keeper and server talk over a socket pair (the server's end is
// descriptor 3, named by CGFS_KEEPER): JSON messages with descriptors.
//
//	server → keeper: keep (an item, its state and files; files may be
//	    left out to keep the ones held), drop, upgrade, ready (prepared
//	    to take over), drained (stopped; the items' last states),
//	    serving (took over), listening (its sockets answer)
//	keeper → server: item (one held, at start), end (no more items;
//	    Wait: prepare, send ready, and wait for go), drain, item and
//	    drop (before go: what the old server kept anew or dropped since
//	    the new one started), go (the last states), done (the
//	    upgrade's end, Error or the pause)
package keeper

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Env names the server's end of its link to the keeper.
const Env = "CGFS_KEEPER"

// Msg is one message between keeper and server.
type Msg struct {
	Op   string `json:"op"`
	Name string `json:"name,omitempty"`
	// Kind is what an item is: "view", "agent", "socket" or "user" (a
	// user's container).
	Kind  string          `json:"kind,omitempty"`
	State json.RawMessage `json:"state,omitempty"`
	// States are the items' last states (drained, go), by name.
	States map[string]json.RawMessage `json:"states,omitempty"`
	Wait   bool                       `json:"wait,omitempty"`
	Error  string                     `json:"error,omitempty"`
	// PauseMicros is how long the connections were served by no one
	// during an upgrade (done).
	PauseMicros int64 `json:"pause_us,omitempty"`
	// Files go with the message (SCM_RIGHTS).
	Files []*os.File `json:"-"`
}

// maxFiles bounds the descriptors of one message.
const maxFiles = 8

// Link is one end of the keeper's link with a server.
type Link struct{ c *net.UnixConn }

// Dial is the server's end of its link, from CGFS_KEEPER; nil when the
// server runs without a keeper.
func Dial() (*Link, error) {
	v := os.Getenv(Env)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(Env)
	fd, err := strconv.Atoi(v)
	if err != nil {
		return nil, fmt.Errorf("%s=%q: %w", Env, v, err)
	}
	unix.CloseOnExec(fd)
	return fromFd(fd)
}

func fromFd(fd int) (*Link, error) {
	f := os.NewFile(uintptr(fd), "keeper link")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("the keeper link is not a unix socket")
	}
	return &Link{c: uc}, nil
}

// Pair is a new link: the keeper's end and the server's (a file, for
// the child).
func Pair() (*Link, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	l, err := fromFd(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return l, os.NewFile(uintptr(fds[1]), "keeper link"), nil
}

// Send sends m with its files (which stay the caller's).
func (l *Link) Send(m Msg) error {
	if len(m.Files) > maxFiles {
		return fmt.Errorf("%d descriptors in one message", len(m.Files))
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(m.Files) > 0 {
		fds := make([]int, len(m.Files))
		for i, f := range m.Files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	_, _, err = l.c.WriteMsgUnix(b, oob, nil)
	return err
}

// Recv waits for the next message; its files are the caller's.
func (l *Link) Recv() (Msg, error) {
	buf, oob := make([]byte, 1<<20), make([]byte, unix.CmsgSpace(4*maxFiles))
	n, oobn, _, _, err := l.c.ReadMsgUnix(buf, oob)
	if err != nil {
		return Msg{}, err
	}
	if n == 0 {
		return Msg{}, errors.New("the link closed")
	}
	var m Msg
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, cm := range msgs {
			if fds, err := unix.ParseUnixRights(&cm); err == nil {
				for _, fd := range fds {
					unix.CloseOnExec(fd)
					m.Files = append(m.Files, os.NewFile(uintptr(fd), "kept"))
				}
			}
		}
	}
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		for _, f := range m.Files {
			f.Close()
		}
		return Msg{}, fmt.Errorf("a message of the keeper link: %w", err)
	}
	return m, nil
}

// Close closes the link.
func (l *Link) Close() error { return l.c.Close() }
