package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

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
		return usageError{fmt.Sprintf("user %d may not reach the cgfs daemon's user socket %s: the admin serves users with cgfs daemon --user-socket %s, to every user or to the members of its --user-group", os.Getuid(), socket, socket)}
	}
	return err
}

func (u *userDaemon) Create(name string, lim cgroups.Limits) error {
	u.name = name
	_, _, err := askUser(u.socket, control.Request{Op: "create", Name: name,
		Limits: &control.Limits{Memory: lim.Memory, Pids: lim.Pids, CPUs: lim.CPUs}})
	return err
}

func (u *userDaemon) Update(lim cgroups.Limits) error {
	_, _, err := askUser(u.socket, control.Request{Op: "update", Name: u.name,
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

const userOpsUsage = `usage: cgfs freeze|thaw|kill|stop NAME
       cgfs update NAME [--memory BYTES] [--pids N] [--cpus N]

An unprivileged user's own container NAME, through the daemon's user
socket: freeze or thaw all its processes, kill them all, stop it (SIGTERM
to its init), or change its limits (within the admin's policy).
`

// parseWithName parses args with fl, where the one NAME (or none) may
// come first or last.
func parseWithName(fl *flag.FlagSet, args []string) (string, error) {
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fl.Parse(args); err != nil {
		return "", usageError{err.Error()}
	}
	switch {
	case fl.NArg() == 0:
		return name, nil
	case name == "" && fl.NArg() == 1:
		return fl.Arg(0), nil
	}
	fl.Usage()
	return "", usageError{"one NAME at the most, not " + strings.Join(append([]string{name}, fl.Args()...), " ")}
}

// userOpCmd is cgfs freeze, thaw, kill, stop and update, by a user.
func userOpCmd(op string, args []string, stderr io.Writer) error {
	fl := flag.NewFlagSet(op, flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, userOpsUsage) }
	limits := limitFlags(fl)
	name, err := parseWithName(fl, args)
	if err != nil {
		return err
	}
	if name == "" {
		fl.Usage()
		return usageError{op + " NAME"}
	}
	if os.Geteuid() == 0 {
		return usageError{"cgfs " + op + " is for a user's own containers (root writes its containers' cgroups)"}
	}
	socket := control.UserSocketPath()
	req := control.Request{Op: op, Name: name}
	switch op {
	case "update":
		l, err := limits()
		if err != nil {
			return err
		}
		lim := &control.Limits{Memory: l.Memory, Pids: l.Pids, CPUs: l.CPUs}
		req.Limits = lim
	case "stop":
		a, _, err := askUser(socket, control.Request{Op: "lookup", Name: name})
		if err != nil {
			return err
		}
		// The init is the user's own: the kernel lets it signal it.
		fd, err := unix.PidfdOpen(a.Init, 0)
		if err != nil {
			return fmt.Errorf("the container's init: %w", err)
		}
		defer unix.Close(fd)
		return unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0)
	}
	_, _, err = askUser(socket, req)
	return err
}

// userListCmd is cgfs list by a user: its own containers and their
// inits.
func userListCmd(stdout io.Writer) error {
	a, _, err := askUser(control.UserSocketPath(), control.Request{Op: "list"})
	if err != nil {
		return err
	}
	for _, v := range a.Views {
		fmt.Fprintf(stdout, "%s\t%d\n", v.Name, v.Owner)
	}
	return nil
}

const statsUsage = `usage: cgfs stats [--json] [NAME]

What an unprivileged user's own containers (or NAME) use, as their host
cgroups say: CPU time, memory and its limit, tasks and their limit,
whether frozen, and the OOM kills so far ("-" where the host keeps no such
value). Root reads its containers' in the daemon's metrics.
`

// statsCmd is cgfs stats, by a user: what runc events --stats and
// podman stats cannot say without cgroups of their own.
func statsCmd(args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("stats", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, statsUsage) }
	asJSON := fl.Bool("json", false, "print the answer as JSON")
	name, err := parseWithName(fl, args)
	if err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		return usageError{"cgfs stats is for a user's own containers: root reads its containers' use in the daemon's metrics (cgfs_container_*)"}
	}
	a, _, err := askUser(control.UserSocketPath(), control.Request{Op: "stats", Name: name})
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(a.Stats)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tCPU\tMEMORY / LIMIT\tPIDS / LIMIT\tFROZEN\tOOM KILLS")
	for _, st := range a.Stats {
		frozen := "-"
		if st.Frozen != nil {
			frozen = map[bool]string{true: "yes", false: "no"}[*st.Frozen == 1]
		}
		fmt.Fprintf(w, "%s\t%s\t%s / %s\t%s / %s\t%s\t%s\n", st.Name,
			shown(st.CPUSeconds, func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) + "s" }),
			shown(st.Memory, humanBytes), shown(st.MemoryMax, humanBytes),
			shown(st.Pids, count), shown(st.PidsMax, count), frozen, shown(st.OOMKills, count))
	}
	return w.Flush()
}

// shown is v as f writes it, or "-" when the host keeps no such value.
func shown(v *float64, f func(float64) string) string {
	if v == nil {
		return "-"
	}
	return f(*v)
}

func count(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }

// humanBytes writes a number of bytes with a binary unit (64MiB).
func humanBytes(v float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d%s", int64(v), units[i])
	}
	return fmt.Sprintf("%.1f%s", v, units[i])
}

// placeEnv makes the cgfs binary put a view in place inside a
// container's namespaces (placeMain), where a user's hook has nsenter
// start it: a multithreaded process cannot enter a user namespace.
const placeEnv = "CGFS_PLACE"

// hookAsUser is a runtime's hook run as an unprivileged user (rootless
// runc's createRuntime, unprivileged LXC's start-host): the daemon makes
// the container name's cgroups with lim, adopts init (the container's
// init, pid 1 of its pid namespace), and serves its view, which is put
// at target inside root (the namespace's root when "") in init's mount
// namespace.
func hookAsUser(name string, init int, root, target string, lim cgroups.Limits) error {
	socket := control.UserSocketPath()
	u := &userDaemon{socket: socket}
	if err := u.Create(name, lim); err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			_ = u.Remove()
		}
	}()
	if err := u.Adopt(init); err != nil {
		return err
	}
	view, placed, err := userView(socket, name)
	if err != nil {
		return err
	}
	defer view.Close()
	err = placeIn(view, init, root, target)
	placed(err == nil)
	done = err == nil
	return err
}

// placeIn puts view at target inside root in process pid's mount
// namespace, entered with its user namespace (the user's own) by
// nsenter, which starts this binary there (placeMain).
func placeIn(view *os.File, pid int, root, target string) error {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return err
	}
	// Its root stays the host's (-r/), where /proc/self/fd/3 is this
	// binary; the container's root is /proc/PID/root from there, and
	// root below it.
	inRoot := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root)
	args := []string{"-t", strconv.Itoa(pid), "-m", "-r/"}
	// A hook already in the container's user namespace (rootless
	// podman's: runc runs in the user's one namespace) cannot enter it
	// again (EINVAL).
	same, err := sameNS(pid, "user")
	if err != nil {
		return err
	}
	if !same {
		args = append(args, "-U")
	}
	// A user its container maps to root (rootless runc's one line, where
	// setgroups is denied) stays who it is; in one mapped by newuidmap
	// from its subordinate ids (unprivileged LXC), where it is no one,
	// nsenter makes it the namespace's root.
	if inside, err := uidInside(pid, os.Getuid()); err != nil {
		return err
	} else if inside == 0 {
		args = append(args, "--preserve-credentials")
	}
	args = append(args, "--", "/proc/self/fd/3", inRoot, target)
	c := exec.Command(nsenter, args...)
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	defer self.Close()
	c.Env = []string{placeEnv + "=1"}
	c.ExtraFiles = []*os.File{self, view} // 3, 4
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("putting the view in place: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sameNS tells whether process pid is in this process's namespace of
// kind ("user", "mnt", ...).
func sameNS(pid int, kind string) (bool, error) {
	var mine, its unix.Stat_t
	if err := unix.Stat("/proc/self/ns/"+kind, &mine); err != nil {
		return false, err
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), &its); err != nil {
		return false, err
	}
	return mine.Dev == its.Dev && mine.Ino == its.Ino, nil
}

// uidInside is host uid's id in process pid's user namespace, or -1
// when that namespace does not map it.
func uidInside(pid, uid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		in, err1 := strconv.Atoi(f[0])
		out, err2 := strconv.Atoi(f[1])
		n, err3 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		if uid >= out && uid-out < n {
			return in + uid - out, nil
		}
	}
	return -1, nil
}

// placeMain is placeIn's end inside the container's namespaces: the view
// (descriptor 4) at target inside root.
func placeMain(args []string) error {
	if len(args) != 2 {
		return usageError{"placing a view wants ROOT TARGET"}
	}
	return moveMountInRoot(os.NewFile(4, "view"), args[0], args[1])
}
