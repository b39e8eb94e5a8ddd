package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/keeper"
)

// A daemon under a keeper listens on sockets the keeper holds a copy of
// (the control socket, the seccomp sockets, the metrics address): the
// next server listens on the very same ones, so whoever connects while
// the servers change hands (an upgrade's takeover, a crashed server's
// replacement) waits in the socket's backlog and is answered by the new
// one, instead of being told that nothing listens.

// socketState is what the keeper holds of a listening socket.
type socketState struct {
	Network string `json:"network"`
	Addr    string `json:"addr"`
}

func socketItem(network, addr string) string { return "socket:" + network + ":" + addr }

// errHandingOver is a request refused because this server is handing
// over: the client asks again and reaches the next one.
var errHandingOver = errors.New("the daemon is handing over to a new one: ask again")

// beginOp begins a request that changes what is served (attach,
// detach, enter, agent): false once the server drained for the next.
func (d *Daemon) beginOp() bool {
	d.ops.RLock()
	d.mu.Lock()
	handing := d.handing
	d.mu.Unlock()
	if handing {
		d.ops.RUnlock()
		return false
	}
	return true
}

// Listen is this server's listener on addr (network "unix" or
// "unixpacket" with a path, made as control.Listen makes it, or "tcp"):
// the one the keeper kept, when it kept one and a unix socket's path is
// still there, else a new one, of which the keeper is given a copy.
func (d *Daemon) Listen(network, addr string) (net.Listener, error) {
	name := socketItem(network, addr)
	d.mu.Lock()
	m, ok := d.sockets[name]
	delete(d.sockets, name)
	d.mu.Unlock()
	if ok {
		ln, err := d.takeSocket(m, network, addr)
		if err == nil {
			d.log.Info("listening on the socket kept for this server", "network", network, "addr", addr)
			return ln, nil
		}
		d.log.Warn("keeper: a kept socket cannot be listened on again; listening anew", "network", network, "addr", addr, "err", err)
	}
	var ln net.Listener
	var err error
	if network == "tcp" {
		ln, err = net.Listen(network, addr)
	} else {
		ln, err = control.Listen(network, addr)
	}
	if err != nil {
		return nil, err
	}
	if d.link != nil {
		f, err := dupOf(ln)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("keeping a copy of %s: %w", addr, err)
		}
		d.send(keeper.Msg{Op: "keep", Name: name, Kind: "socket", State: mustJSON(socketState{Network: network, Addr: addr}), Files: []*os.File{f}})
		f.Close()
	}
	return ln, nil
}

// dupOf is a copy of ln's descriptor. Not ln.File(): the Fd of that
// file (which sending it calls) turns the socket blocking, for every
// copy of it, and this server's accepts would then each hold a thread
// in accept(2) that Close cannot end.
func dupOf(ln net.Listener) (*os.File, error) {
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) {
		nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(nfd), "listener "+ln.Addr().String()), nil
}

// takeSocket listens on the kept socket m: its path must still name a
// socket (nobody removed or replaced it), and it must be of network.
func (d *Daemon) takeSocket(m keeper.Msg, network, addr string) (net.Listener, error) {
	defer func() {
		for _, f := range m.Files {
			f.Close()
		}
	}()
	if len(m.Files) != 1 {
		return nil, fmt.Errorf("%d descriptors kept", len(m.Files))
	}
	if network != "tcp" {
		st, err := os.Stat(addr)
		if err != nil {
			return nil, err
		}
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s is no socket now", addr)
		}
	}
	ln, err := net.FileListener(m.Files[0])
	if err != nil {
		return nil, err
	}
	if got := ln.Addr().Network(); got != network {
		ln.Close()
		return nil, fmt.Errorf("the kept socket is %s, not %s", got, network)
	}
	if network != "tcp" && ln.Addr().String() != addr {
		ln.Close()
		return nil, fmt.Errorf("the kept socket is bound at %s", ln.Addr())
	}
	return ln, nil
}

// dropUnusedSockets lets go of the kept sockets this server did not
// listen on (it was started with other addresses).
func (d *Daemon) dropUnusedSockets() {
	d.mu.Lock()
	left := d.sockets
	d.sockets = nil
	d.mu.Unlock()
	for name, m := range left {
		for _, f := range m.Files {
			f.Close()
		}
		var st socketState
		_ = json.Unmarshal(m.State, &st)
		d.log.Info("keeper: a kept socket this server does not listen on is let go", "network", st.Network, "addr", st.Addr)
		d.unkeep(name)
	}
}
