package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/launch"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
)

// An unprivileged user's cgfs commands go through the daemon's user
// socket: it makes the user's containers' cgroups and serves their
// views; the user proves what it claims with descriptors it opens
// itself.

// userDaemon is the daemon's user socket, as launch.UserDaemon.
type userDaemon struct {
	socket string
	name   string
}

var _ launch.UserDaemon = (*userDaemon)(nil)

// askUser asks the daemon's user socket, saying clearly when there is
// none.
func askUser(socket string, req control.Request, files ...*os.File) (control.Answer, *os.File, error) {
	a, f, err := control.AskUser(socket, req, files...)
	if err != nil {
		return a, f, userSocketErr(socket, err)
	}
	return a, f, a.Err()
}

// userSocketErr says what a user without the daemon's user socket can
// do about it.
func userSocketErr(socket string, err error) error {
	switch {
	case errors.Is(err, control.ErrNotRunning):
		return usageError{fmt.Sprintf("cgfs as user %d needs the cgfs daemon's user socket, and %s answers nothing: ask the admin to run cgfs daemon --user-socket %s", os.Getuid(), socket, socket)}
	case errors.Is(err, unix.EACCES):
		return usageError{fmt.Sprintf("the cgfs daemon's user socket %s is not open to user %d (the admin's --user-group)", socket, os.Getuid())}
	}
	return err
}

func (u *userDaemon) Create(name string, lim cgroups.Limits) error {
	u.name = name
	_, _, err := askUser(u.socket, control.Request{Op: "create", Name: name,
		Limits: &control.Limits{Memory: lim.Memory, Pids: lim.Pids, CPUs: lim.CPUs}})
	return err
}

// Adopt sends a pidfd of the init and its user and pid namespaces, all
// opened here: the kernel let this process open them, so they are the
// user's.
func (u *userDaemon) Adopt(init int) error {
	pidfd, err := unix.PidfdOpen(init, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open of the container's init: %w", err)
	}
	files := []*os.File{os.NewFile(uintptr(pidfd), "init")}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, ns := range []string{"user", "pid"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", init, ns))
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	_, _, err = askUser(u.socket, control.Request{Op: "adopt", Name: u.name}, files...)
	return err
}

func (u *userDaemon) Agent(listener *os.File) error {
	_, _, err := askUser(u.socket, control.Request{Op: "agent", Name: u.name}, listener)
	return err
}

func (u *userDaemon) Remove() error {
	_, _, err := askUser(u.socket, control.Request{Op: "remove", Name: u.name})
	var ue control.UsageError
	if errors.As(err, &ue) {
		return nil // the daemon removed it with its init already
	}
	return err
}

// userView asks the daemon for the view of the user's container name and
// returns it with a word to say whether it was put in place.
func userView(socket, name string) (*os.File, func(ok bool), error) {
	a, view, placed, err := control.AskUserConfirm(socket, control.Request{Op: "attach", Name: name})
	if err != nil {
		return nil, nil, userSocketErr(socket, err)
	}
	if err := a.Err(); err != nil {
		placed(false)
		return nil, nil, err
	}
	if view == nil {
		placed(false)
		return nil, nil, errors.New("the daemon sent no view")
	}
	return view, placed, nil
}

// userMaps are the id maps of a user's container: its root is the user
// itself, ids 1.. the user's first subordinate range (at most 65,535 of
// them), as podman maps them; without a range, the user alone.
func userMaps() (*launch.IDMaps, error) {
	who := users.Lookup(os.Getuid())
	who.Gid = os.Getgid()
	m := &launch.IDMaps{
		UID: []syscall.SysProcIDMap{{ContainerID: 0, HostID: who.Uid, Size: 1}},
		GID: []syscall.SysProcIDMap{{ContainerID: 0, HostID: who.Gid, Size: 1}},
	}
	for _, r := range []struct {
		file string
		maps *[]syscall.SysProcIDMap
	}{{"/etc/subuid", &m.UID}, {"/etc/subgid", &m.GID}} {
		ranges, err := users.SubIDs(r.file, who)
		if err != nil {
			return nil, err
		}
		if len(ranges) > 0 {
			*r.maps = append(*r.maps, syscall.SysProcIDMap{ContainerID: 1, HostID: int(ranges[0].Start), Size: int(min(ranges[0].Count, 65535))})
		}
	}
	return m, nil
}
