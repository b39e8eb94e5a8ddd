package daemon

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/keeper"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
	"github.com/cgfs/cgfs/loglimit"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/host"
	"github.com/cgfs/cgfs/translate/layout"
	"github.com/cgfs/cgfs/translate/pidns"
)

// Unprivileged host users' containers, through the user socket.
//
// A user's container is a set of cgroups the daemon made for that user
// (UserParent/user-UID/NAME in every hierarchy), limited as the user
// asked, clamped to what the admin's policy gives the user; its parent
// UserParent/user-UID carries the policy's limits for all of the user's
// containers. The user never names a pid number or a host path: it
// proves what it claims with descriptors it opened itself (a pidfd of
// the container's init, the init's user and pid namespaces: the kernel's
// ptrace check let it open them), and the daemon checks that they belong
// together and to the user (its user namespace, the top-most below the
// host's, made by the user; ids all its own or in its /etc/subuid and
// /etc/subgid ranges; the init pid 1 of its pid namespace), then moves
// the init from inside that pid namespace (a reused id can name nothing
// else) and serves views rooted at the cgroups it made. Names are per
// user: a user sees and acts on its own containers alone.

// UserConfig is how the daemon serves users.
type UserConfig struct {
	// Policy is the admin's (nil: users.Defaults for everyone).
	Policy *users.File
	// Parent is the cgroup below every hierarchy's root that holds the
	// users' parents (user-UID).
	Parent string
	// SubUID and SubGID are the subordinate id files.
	SubUID, SubGID string
}

// userContainer is one container of a user's.
type userContainer struct {
	uid  int
	name string
	cg   *cgroups.Set
	// Once adopted: its init (host pid, and a pidfd that says when it
	// is gone), and its pid namespace (enter moves from inside it).
	init   int
	pidfd  *os.File
	pidns  *os.File
	policy users.Policy
}

// key is the container's view name in the daemon: a user's names never
// meet root's, which have no '/'.
func (c *userContainer) key() string { return fmt.Sprintf("user-%d/%s", c.uid, c.name) }

// userKept is what the keeper holds of a user's container (with the
// init's pidfd and pid namespace, once adopted), for the next server.
type userKept struct {
	Uid    int           `json:"uid"`
	Name   string        `json:"name"`
	Cg     cgroups.State `json:"cgroups"`
	Init   int           `json:"init"`
	Policy users.Policy  `json:"policy"`
}

// keepUser gives the keeper c as it is now.
func (d *Daemon) keepUser(c *userContainer) {
	if d.link == nil {
		return
	}
	k := userKept{Uid: c.uid, Name: c.name, Cg: c.cg.State(), Init: c.init, Policy: c.policy}
	var files []*os.File
	if c.pidfd != nil {
		files = []*os.File{c.pidfd, c.pidns}
	}
	d.send(keeper.Msg{Op: "keep", Name: "user:" + c.key(), Kind: "user", State: mustJSON(k), Files: files})
}

// takeUser takes on a user's container the server before this one kept.
func (d *Daemon) takeUser(u *userState, m keeper.Msg) {
	var k userKept
	if err := json.Unmarshal(m.State, &k); err != nil || k.Name == "" || (len(m.Files) != 0 && len(m.Files) != 2) {
		for _, f := range m.Files {
			f.Close()
		}
		d.unkeep(m.Name)
		return
	}
	c := &userContainer{uid: k.Uid, name: k.Name, cg: cgroups.FromState(k.Cg), policy: k.Policy, init: k.Init}
	if len(m.Files) == 2 {
		c.pidfd, c.pidns = m.Files[0], m.Files[1]
		if err := unix.SetNonblock(int(c.pidfd.Fd()), true); err != nil {
			d.log.Warn("keeper: a user's container's init", "name", c.key(), "err", err)
		}
	}
	u.mu.Lock()
	if u.containers[c.uid] == nil {
		u.containers[c.uid] = map[string]*userContainer{}
	}
	u.containers[c.uid][c.name] = c
	u.mu.Unlock()
	if c.pidfd != nil {
		go d.watchUserInit(u, c)
	} else {
		d.orphanTimer(u, c)
	}
	d.log.Info("keeper: took on a user's container", "uid", c.uid, "name", c.name, "init", c.init)
}

// userState is what the daemon holds for users.
type userState struct {
	cfg UserConfig

	mu         sync.Mutex
	containers map[int]map[string]*userContainer
	budgets    map[int]*serve.Budget // what each user's containers hold of the daemon, together
	parentMu   map[int]*sync.Mutex   // one container made or removed at a time, per user
	removing   sync.WaitGroup        // removals under way, which a stop waits for
	// closed: the daemon's Close removes every container itself, and no
	// other removal begins (one begun before is waited for), so that
	// removing's count never rises from zero while Close waits.
	closed bool
	// lines are each user's budget of host log lines: a burst of 20,
	// then one a second; the line written says how many were left out.
	lines *loglimit.Keyed[int]
	// subs says whose subordinate uid a peer is (cfg.SubUID).
	subs *users.Subordinates
}

// ServeUsers makes the daemon answer users (HandleUser) with cfg.
func (d *Daemon) ServeUsers(cfg UserConfig) {
	if cfg.Parent == "" {
		cfg.Parent = "cgfs"
	}
	if cfg.SubUID == "" {
		cfg.SubUID = "/etc/subuid"
	}
	if cfg.SubGID == "" {
		cfg.SubGID = "/etc/subgid"
	}
	u := &userState{cfg: cfg, subs: users.NewSubordinates(cfg.SubUID), containers: map[int]map[string]*userContainer{}, budgets: map[int]*serve.Budget{},
		parentMu: map[int]*sync.Mutex{}, lines: loglimit.NewKeyed[int](20, time.Second, 4096)}
	d.mu.Lock()
	d.users = u
	d.mu.Unlock()
}

// userNameRE is what a user may call a container: a plain cgroup name.
var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// userErr is a refusal of a user's request: the answer it gets and the
// rule the host log and metrics name.
type userErr struct {
	rule, msg string
	usage     bool
}

func (e *userErr) Error() string { return e.msg }

func refuseUser(rule, format string, args ...any) *userErr {
	return &userErr{rule: rule, msg: fmt.Sprintf(format, args...), usage: true}
}

// HandleUser answers one request of host user peer.Uid on the user
// socket.
func (d *Daemon) HandleUser(req control.Request, peer control.Peer) (control.Answer, *os.File) {
	closeAll := func() {
		for _, f := range req.Files {
			f.Close()
		}
		if req.File != nil {
			req.File.Close()
		}
	}
	d.mu.Lock()
	u := d.users
	d.mu.Unlock()
	if u == nil {
		closeAll()
		return control.Answer{Error: "this daemon serves no users", Usage: true}, nil
	}
	who := users.Lookup(peer.Uid)
	pol := u.cfg.Policy.For(who.Name, who.Uid, who.Groups)
	answer := func(err error) control.Answer {
		var ue *userErr
		if errors.As(err, &ue) {
			d.UserRefused(peer.Uid, ue.rule)
			u.lines.Log(peer.Uid, d.log, slog.LevelWarn, "refused a user's request", "uid", peer.Uid, "user", who.Name, "op", req.Op, "name", req.Name, "rule", ue.rule, "why", ue.msg)
			return control.Answer{Error: ue.msg, Usage: ue.usage}
		}
		u.lines.Log(peer.Uid, d.log, slog.LevelWarn, "a user's request failed", "uid", peer.Uid, "op", req.Op, "name", req.Name, "err", err)
		return control.Answer{Error: err.Error()}
	}
	if pol.Refused {
		closeAll()
		return answer(refuseUser("user-refused", "the admin's policy gives user %s no containers", who.Name)), nil
	}
	if req.Op != "list" && !(req.Op == "stats" && req.Name == "") && !userNameRE.MatchString(req.Name) {
		closeAll()
		return answer(refuseUser("bad-name", "%q: a container name is up to 64 letters, digits, '.', '_' or '-'", req.Name)), nil
	}
	switch req.Op {
	case "create":
		closeAll()
		if err := d.userCreate(u, who, pol, req.Name, req.Limits); err != nil {
			return answer(err), nil
		}
		return control.Answer{}, nil
	case "adopt":
		defer closeAll()
		if err := d.userAdopt(u, who, req.Name, req.Files); err != nil {
			return answer(err), nil
		}
		return control.Answer{}, nil
	case "attach":
		closeAll()
		if !d.beginOp() {
			return control.Answer{Error: errHandingOver.Error(), Retry: true}, nil
		}
		defer d.ops.RUnlock()
		f, s, err := d.userAttach(u, who, req.Name)
		if err != nil {
			return answer(err), nil
		}
		a := control.Answer{}
		if req.Confirm {
			a.Placed = func(ok bool) {
				if !ok {
					d.log.Warn("dropped: the view was not put in place", "view", s.req.Name)
					s.stop()
				}
			}
		}
		return a, f
	case "agent":
		for _, f := range req.Files {
			defer f.Close()
		}
		c, err := u.container(who.Uid, req.Name)
		if err != nil || len(req.Files) != 1 {
			if err == nil {
				err = refuseUser("user-request", "agent needs one seccomp listener")
			}
			return answer(err), nil
		}
		if !d.beginOp() {
			return control.Answer{Error: errHandingOver.Error(), Retry: true}, nil
		}
		defer d.ops.RUnlock()
		if !d.serving(c.key()) {
			return answer(refuseUser("user-request", "container %s has no view yet", req.Name)), nil
		}
		f, err := dupFile(req.Files[0])
		if err != nil {
			return answer(err), nil
		}
		d.serveAgent(f, c.key())
		return control.Answer{}, nil
	case "enter":
		closeAll()
		if err := d.userEnter(u, who, req.Name, req.NSPid); err != nil {
			return answer(err), nil
		}
		return control.Answer{}, nil
	case "update":
		closeAll()
		c, err := u.container(who.Uid, req.Name)
		if err == nil {
			err = c.cg.Limit(clamp(req.Limits, c.policy))
		}
		if err != nil {
			return answer(err), nil
		}
		return control.Answer{}, nil
	case "freeze", "thaw":
		closeAll()
		c, err := u.container(who.Uid, req.Name)
		if err == nil {
			err = freeze(c.cg, req.Op == "freeze")
		}
		if err != nil {
			return answer(err), nil
		}
		return control.Answer{}, nil
	case "detach":
		closeAll()
		c, err := u.container(who.Uid, req.Name)
		if err == nil && !d.Detach(c.key()) {
			err = refuseUser("user-request", "container %s has no view", req.Name)
		}
		if err != nil {
			return answer(err), nil
		}
		return control.Answer{}, nil
	case "kill", "remove":
		closeAll()
		c, err := u.container(who.Uid, req.Name)
		if err != nil && req.Op == "remove" {
			// Its init's end may be removing it: that is done first.
			u.settled(who.Uid)
			return control.Answer{}, nil
		}
		if err != nil {
			return answer(err), nil
		}
		if req.Op == "kill" {
			if err := c.cg.Kill(); err != nil {
				return answer(err), nil
			}
			return control.Answer{}, nil
		}
		d.userRemove(u, c)
		return control.Answer{}, nil
	case "list":
		closeAll()
		return control.Answer{Views: u.list(who.Uid)}, nil
	case "stats":
		closeAll()
		var cs []*userContainer
		if req.Name == "" {
			cs = u.all(who.Uid)
		} else {
			c, err := u.container(who.Uid, req.Name)
			if err != nil {
				return answer(err), nil
			}
			cs = []*userContainer{c}
		}
		var out []control.Stats
		for _, c := range cs {
			m := metrics.Use(c.cg.V2, c.cg.V1ByController())
			out = append(out, control.Stats{Name: c.name, CPUSeconds: m.CPUSeconds, Memory: m.Memory,
				MemoryMax: m.MemoryMax, Pids: m.Pids, PidsMax: m.PidsMax, Frozen: m.Frozen, OOMKills: m.OOMKills})
		}
		return control.Answer{Stats: out}, nil
	case "lookup":
		closeAll()
		c, err := u.container(who.Uid, req.Name)
		if err != nil {
			return answer(err), nil
		}
		if c.init == 0 {
			return answer(refuseUser("user-request", "container %s has no init yet", req.Name)), nil
		}
		return control.Answer{Init: c.init}, nil
	}
	closeAll()
	return answer(refuseUser("user-request", "the user socket answers create, adopt, attach, agent, enter, update, freeze, thaw, kill, detach, remove, list, stats and lookup, not %q", req.Op)), nil
}

// container is user uid's container name.
func (u *userState) container(uid int, name string) (*userContainer, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if c := u.containers[uid][name]; c != nil {
		return c, nil
	}
	return nil, refuseUser("no-container", "no container %s of yours", name)
}

// all is user uid's containers, by name.
func (u *userState) all(uid int) []*userContainer {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []*userContainer
	for _, c := range u.containers[uid] {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (u *userState) list(uid int) []control.ViewInfo {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []control.ViewInfo
	for name, c := range u.containers[uid] {
		out = append(out, control.ViewInfo{Name: name, Owner: c.init})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// budget is what user uid's containers hold of the daemon, together.
func (u *userState) budget(uid int, pol users.Policy) *serve.Budget {
	u.mu.Lock()
	defer u.mu.Unlock()
	b := u.budgets[uid]
	if b == nil {
		b = serve.NewBudget(serve.Bounds{OpenFiles: pol.OpenFiles, NestedViews: pol.NestedViews,
			RelayWatches: pol.RelayWatches, PidHelpers: pol.PidHelpers, InFlight: pol.InFlight})
		u.budgets[uid] = b
	}
	return b
}

// userInfo logs what user uid's request did, within the user's budget
// of host log lines (userState.lines).
func (d *Daemon) userInfo(u *userState, uid int, msg string, args ...any) {
	u.lines.Log(uid, d.log, slog.LevelInfo, msg, append(args, "uid", uid)...)
}

// settled waits until no container of user uid is being made or
// removed.
func (u *userState) settled(uid int) {
	pm := u.parentLock(uid)
	pm.Lock()
	defer pm.Unlock()
}

func (u *userState) parentLock(uid int) *sync.Mutex {
	u.mu.Lock()
	defer u.mu.Unlock()
	m := u.parentMu[uid]
	if m == nil {
		m = &sync.Mutex{}
		u.parentMu[uid] = m
	}
	return m
}

// clamp is what a user asked its container may use, within its policy:
// a limit the user leaves out is the policy's.
func clamp(l *control.Limits, pol users.Policy) cgroups.Limits {
	var out cgroups.Limits
	if l != nil {
		out = cgroups.Limits{Memory: l.Memory, Pids: l.Pids, CPUs: l.CPUs}
	}
	if pol.Memory > 0 && (out.Memory <= 0 || out.Memory > pol.Memory) {
		out.Memory = pol.Memory
	}
	if pol.Pids > 0 && (out.Pids <= 0 || out.Pids > pol.Pids) {
		out.Pids = pol.Pids
	}
	if pol.CPUs > 0 && (out.CPUs <= 0 || out.CPUs > pol.CPUs) {
		out.CPUs = pol.CPUs
	}
	return out
}

// userCreate makes user who's container name: its cgroups below its
// parent (made with the policy's limits if it is not there), limited as
// asked within the policy.
func (d *Daemon) userCreate(u *userState, who users.Who, pol users.Policy, name string, lim *control.Limits) error {
	if lim != nil && (lim.Memory < 0 || lim.Pids < 0 || lim.CPUs < 0 || lim.CPUs != lim.CPUs) {
		return refuseUser("bad-value", "limits may not be negative")
	}
	pm := u.parentLock(who.Uid)
	pm.Lock()
	defer pm.Unlock()
	u.mu.Lock()
	mine := u.containers[who.Uid]
	_, taken := mine[name]
	n := len(mine)
	u.mu.Unlock()
	if taken {
		return refuseUser("name-taken", "you have a container named %s already", name)
	}
	if n >= pol.Containers {
		return refuseUser("user-containers", "user %s has %d containers, as many as the admin's policy gives it", who.Name, n)
	}
	parent := filepath.Join(u.cfg.Parent, fmt.Sprintf("user-%d", who.Uid))
	if err := cgroups.MakeParent(d.procs, parent, cgroups.Limits{Memory: pol.Memory, Pids: pol.Pids, CPUs: pol.CPUs}, pol.Descendants); err != nil {
		return err
	}
	cg, err := cgroups.Make(d.procs, parent, name, clamp(lim, pol))
	if err != nil {
		return err
	}
	c := &userContainer{uid: who.Uid, name: name, cg: cg, policy: pol}
	u.mu.Lock()
	if u.containers[who.Uid] == nil {
		u.containers[who.Uid] = map[string]*userContainer{}
	}
	u.containers[who.Uid][name] = c
	u.mu.Unlock()
	d.keepUser(c)
	d.orphanTimer(u, c)
	d.userInfo(u, who.Uid, "a user's container", "user", who.Name, "name", name)
	return nil
}

// orphanTimer removes c if nobody adopts it in time.
func (d *Daemon) orphanTimer(u *userState, c *userContainer) {
	wait := userWait
	time.AfterFunc(wait, func() {
		u.mu.Lock()
		orphan := c.init == 0
		u.mu.Unlock()
		if orphan {
			d.log.Warn("a user's container was not adopted in time: removed", "uid", c.uid, "name", c.name, "wait", wait)
			d.userRemove(u, c)
		}
	})
}

// proof is a user's container init as the kernel proved it to the
// daemon.
type proof struct {
	pid   int
	pidfd *os.File
	pidns *os.File
}

// verifyInit checks what user who sent as its container's init: a
// pidfd, and the init's user and pid namespaces, which the user opened
// itself (/proc/PID/ns/*: the kernel's ptrace check let it). The user
// namespace must be the user's (the top-most of its ancestors below the
// host's made by the user), the pid namespace one of it, the pidfd's
// process pid 1 there and in both namespaces, and its ids and id maps the
// user's own or in its subordinate ranges; all read before the pidfd is
// checked alive once more, so nothing read is of another process.
func (d *Daemon) verifyInit(u *userState, who users.Who, files []*os.File) (*proof, error) {
	if len(files) != 3 {
		return nil, refuseUser("user-proof", "adopt needs a pidfd of the container's init and its user and pid namespaces")
	}
	pidfd, userns, pidns := files[0], files[1], files[2]
	pid, err := pidOfPidfd(pidfd)
	if err != nil {
		return nil, refuseUser("user-proof", "the first descriptor is no pidfd of a live process")
	}
	if t, err := unix.IoctlRetInt(int(userns.Fd()), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWUSER {
		return nil, refuseUser("user-proof", "the second descriptor is no user namespace")
	}
	if t, err := unix.IoctlRetInt(int(pidns.Fd()), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWPID {
		return nil, refuseUser("user-proof", "the third descriptor is no pid namespace")
	}
	chain, err := proc.UserNSAncestry(int(userns.Fd()))
	if err != nil {
		return nil, err
	}
	if len(chain) < 2 || chain[len(chain)-2].OwnerUID != uint32(who.Uid) {
		return nil, refuseUser("user-proof", "the container's user namespace was not made by user %s", who.Name)
	}
	pidOwner, err := unix.IoctlRetInt(int(pidns.Fd()), unix.NS_GET_USERNS)
	if err != nil {
		return nil, err
	}
	var po unix.Stat_t
	err = unix.Fstat(pidOwner, &po)
	unix.Close(pidOwner)
	if err != nil {
		return nil, err
	}
	owned := false
	for _, a := range chain[:len(chain)-1] {
		owned = owned || a.NS == (proc.NS{Dev: po.Dev, Ino: po.Ino})
	}
	if !owned {
		return nil, refuseUser("user-proof", "the container's pid namespace is not of a user namespace of user %s", who.Name)
	}
	pin, err := d.procs.Pin(pid)
	if err != nil {
		return nil, refuseUser("user-proof", "the container's init is gone")
	}
	defer pin.Close()
	for _, ns := range []struct {
		kind string
		f    *os.File
	}{{"user", userns}, {"pid", pidns}} {
		fd, err := pin.Namespace(ns.kind)
		if err != nil {
			return nil, refuseUser("user-proof", "the pidfd's process's %s namespace: %v", ns.kind, errors.Unwrap(err))
		}
		same := sameFile(fd, int(ns.f.Fd()))
		unix.Close(fd)
		if !same {
			return nil, refuseUser("user-proof", "the pidfd's process is not in the %s namespace sent with it", ns.kind)
		}
	}
	th, err := pin.Thread()
	if err != nil || th.OwnPid != 1 || th.Level == 0 {
		return nil, refuseUser("user-proof", "the pidfd's process is not the init (pid 1) of its pid namespace")
	}
	subuids, err := users.SubIDs(u.cfg.SubUID, who)
	if err != nil {
		return nil, err
	}
	subgids, err := users.SubIDs(u.cfg.SubGID, who)
	if err != nil {
		return nil, err
	}
	dir := fmt.Sprintf("%s/%d", d.procs.Root(), pid)
	if err := checkIDs(dir+"/status", who, subuids, subgids); err != nil {
		return nil, err
	}
	for _, m := range []struct {
		file   string
		own    int
		ranges []users.Range
	}{{"uid_map", who.Uid, subuids}, {"gid_map", who.Gid, subgids}} {
		if err := checkMap(dir+"/"+m.file, m.own, m.ranges); err != nil {
			return nil, err
		}
	}
	if !pin.Alive() || unix.PidfdSendSignal(int(pidfd.Fd()), 0, nil, 0) != nil {
		return nil, refuseUser("user-proof", "the container's init is gone")
	}
	// Non-blocking, so that the runtime's poller waits for its end
	// (watchUserInit).
	pfd, err := unix.FcntlInt(pidfd.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(pfd, true); err != nil {
		unix.Close(pfd)
		return nil, err
	}
	pf := os.NewFile(uintptr(pfd), "init")
	pn, err := dupFile(pidns)
	if err != nil {
		pf.Close()
		return nil, err
	}
	return &proof{pid: pid, pidfd: pf, pidns: pn}, nil
}

// checkIDs refuses a process whose ids (real, effective, saved and file
// system uids and gids, host ids) are not all the user's own or in its
// ranges: a process of root's, or a set-user-ID one.
func checkIDs(status string, who users.Who, subuids, subgids []users.Range) error {
	b, err := os.ReadFile(status)
	if err != nil {
		return refuseUser("user-proof", "the container's init is gone")
	}
	for _, line := range strings.Split(string(b), "\n") {
		for _, k := range []struct {
			prefix string
			own    int
			ranges []users.Range
		}{{"Uid:", who.Uid, subuids}, {"Gid:", who.Gid, subgids}} {
			rest, ok := strings.CutPrefix(line, k.prefix)
			if !ok {
				continue
			}
			for _, f := range strings.Fields(rest) {
				id, err := strconv.ParseInt(f, 10, 64)
				if err != nil || !users.Allowed(k.own, k.ranges, id, 1) {
					return refuseUser("user-ids", "the container's init runs as host id %s, not one of the user's", f)
				}
			}
		}
	}
	return nil
}

// checkMap refuses an id map (as the host reads it: host ids outside)
// with a range that is not the user's own id or inside its ranges.
func checkMap(path string, own int, ranges []users.Range) error {
	f, err := os.Open(path)
	if err != nil {
		return refuseUser("user-proof", "the container's init is gone")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) != 3 {
			continue
		}
		outside, err1 := strconv.ParseInt(fl[1], 10, 64)
		count, err2 := strconv.ParseInt(fl[2], 10, 64)
		if err1 != nil || err2 != nil || !users.Allowed(own, ranges, outside, count) {
			return refuseUser("user-ids", "the container maps host ids %s-%s, not the user's (its own and its ranges in /etc/subuid and /etc/subgid)", fl[1], fmt.Sprint(outside+count-1))
		}
	}
	return sc.Err()
}

// pidOfPidfd is the pid (in the daemon's pid namespace) of the live
// process pidfd refers to.
func pidOfPidfd(f *os.File) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", f.Fd()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || pid <= 0 {
				return 0, errors.New("no live process")
			}
			return pid, nil
		}
	}
	return 0, errors.New("not a pidfd")
}

func sameFile(a, b int) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// userAdopt puts user who's container init into the container's cgroups
// in every hierarchy, written as pid 1 from inside its pid namespace (by
// a helper there: nothing else can be named), and watches it: when it
// is gone, the container is.
func (d *Daemon) userAdopt(u *userState, who users.Who, name string, files []*os.File) error {
	// One adoption or removal of the user's containers at a time: two
	// adoptions of one container would both pass the check below (the
	// first's descriptors then lost), and a removal meanwhile would miss
	// the descriptors the adoption then stores on a container gone.
	pm := u.parentLock(who.Uid)
	pm.Lock()
	defer pm.Unlock()
	c, err := u.container(who.Uid, name)
	if err != nil {
		return err
	}
	u.mu.Lock()
	adopted := c.init != 0
	u.mu.Unlock()
	if adopted {
		return refuseUser("user-request", "container %s has its init already", name)
	}
	p, err := d.verifyInit(u, who, files)
	if err != nil {
		return err
	}
	if err := d.moveFromInside(p.pidns, c.cg, 1); err != nil {
		p.pidfd.Close()
		p.pidns.Close()
		return fmt.Errorf("putting the container's init into its cgroups: %w", err)
	}
	u.mu.Lock()
	c.init, c.pidfd, c.pidns = p.pid, p.pidfd, p.pidns
	u.mu.Unlock()
	d.keepUser(c)
	go d.watchUserInit(u, c)
	d.userInfo(u, who.Uid, "a user's container has its init", "name", name, "init", p.pid)
	return nil
}

// moveFromInside writes id n, as the pid namespace ns numbers it, into
// cgroup.procs of every one of cg's cgroups, from a helper in ns.
func (d *Daemon) moveFromInside(ns *os.File, cg *cgroups.Set, n int) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return err
	}
	pool, err := pidns.NewPool(d.procs, ns, proc.Thread{PidNS: proc.NS{Dev: st.Dev, Ino: st.Ino}, Level: 1}, pidns.NewBudget(1))
	if err != nil {
		return err
	}
	defer pool.Close()
	var roots []int
	for _, dir := range cg.Dirs {
		h, err := host.Open(dir)
		if err != nil {
			return err
		}
		defer h.Close()
		roots = append(roots, pool.AddRoot(h))
	}
	m, err := pool.Owner()
	if err != nil {
		return err
	}
	defer m.Release()
	for _, r := range roots {
		if err := m.Write(r, "cgroup.procs", n); err != nil {
			return err
		}
	}
	return nil
}

// watchUserInit removes a user's container once its init is gone (its
// pid namespace, and with it every process of the container, ends).
func (d *Daemon) watchUserInit(u *userState, c *userContainer) {
	proc.WaitExit(c.pidfd)
	d.userRemove(u, c)
}

// userRemove ends a user's container: its view, what is left in its
// cgroups, the cgroups, its name.
func (d *Daemon) userRemove(u *userState, c *userContainer) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return // Close removes it
	}
	u.removing.Add(1)
	u.mu.Unlock()
	d.removeUserContainer(u, c)
}

// removeUserContainer is userRemove, counted in u.removing already.
func (d *Daemon) removeUserContainer(u *userState, c *userContainer) {
	defer u.removing.Done()
	d.mu.Lock()
	handing := d.handing
	d.mu.Unlock()
	if handing {
		return // the next server has it, and sees its init end
	}
	pm := u.parentLock(c.uid)
	pm.Lock()
	defer pm.Unlock()
	u.mu.Lock()
	if u.containers[c.uid][c.name] != c {
		u.mu.Unlock()
		return // removed already
	}
	delete(u.containers[c.uid], c.name)
	if len(u.containers[c.uid]) == 0 {
		delete(u.containers, c.uid)
	}
	u.mu.Unlock()
	d.Detach(c.key())
	if err := c.cg.Remove(); err != nil {
		d.log.Error("removing a user's container's cgroups", "uid", c.uid, "name", c.name, "err", err)
	}
	if c.pidfd != nil {
		c.pidfd.Close() // wakes watchUserInit, which finds it removed
		c.pidns.Close()
	}
	d.unkeep("user:" + c.key())
	d.userInfo(u, c.uid, "a user's container is gone", "name", c.name)
}

// userAttach serves a view of user who's container, rooted at the
// cgroups the daemon made for it, owned by its init, and returns its
// mount, detached: the user puts it in place itself (move_mount, as the
// kernel allows it in a mount namespace the user owns).
func (d *Daemon) userAttach(u *userState, who users.Who, name string) (*os.File, *served, error) {
	// Not while the user's container is being removed (or adopted): a
	// view of one removed meanwhile would be served, and its pidfd,
	// which the removal closes, is read below.
	pm := u.parentLock(who.Uid)
	pm.Lock()
	defer pm.Unlock()
	c, err := u.container(who.Uid, name)
	if err != nil {
		return nil, nil, err
	}
	u.mu.Lock()
	init := c.init
	u.mu.Unlock()
	if init == 0 {
		return nil, nil, refuseUser("user-request", "container %s has no init yet (adopt it first)", name)
	}
	key := c.key()
	if d.serving(key) {
		return nil, nil, refuseUser("user-request", "container %s has a view already", name)
	}
	dirs, err := d.hierarchyDirs(c.cg)
	if err != nil {
		return nil, nil, err
	}
	budget := u.budget(who.Uid, c.policy)
	views, err := serve.Open(d.procs, serve.Options{Name: key, Owner: init, Dirs: dirs, Log: d.log, Watcher: d.watcher,
		Budget: budget, V1Max: c.policy.V1Descendants})
	if err != nil {
		return nil, nil, err
	}
	// req carries the label for the next server.
	req := control.Request{Op: "attach", Name: key, Owner: init, Label: fmt.Sprintf("%s/%s", who.Name, name), Uid: who.Uid}
	counts := d.metrics.For(labelOf(req))
	mounted, err := views.Serve(d.ident, counts)
	if err != nil {
		views.Close()
		return nil, nil, err
	}
	s := d.newServed(key, views, mounted, budget, req, counts)
	if s.ownerStart, err = d.procs.StartTime(init); err != nil {
		mounted.Stop()
		views.Close()
		return nil, nil, err
	}
	// Its init could have been replaced meanwhile only by its end, which
	// ends the container: the view is of the one adopted.
	if unix.PidfdSendSignal(int(c.pidfd.Fd()), 0, nil, 0) != nil {
		mounted.Stop()
		views.Close()
		return nil, nil, refuseUser("user-proof", "the container's init is gone")
	}
	f := mounted.Take() // before it is listed, as attach does
	if err := d.run(key, s); err != nil {
		f.Close()
		mounted.Stop()
		views.Close()
		return nil, nil, err
	}
	d.userInfo(u, who.Uid, "attached", "view", key, "owner", init)
	return f, s, nil
}

// hierarchyDirs are cg's cgroups by the name of their hierarchy in the
// layout (serve.Options.Dirs).
func (d *Daemon) hierarchyDirs(cg *cgroups.Set) (map[string]string, error) {
	l, err := layout.Discover(d.procs)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, h := range l.Hierarchies {
		dir, ok := cg.Dirs[h.MountPoint]
		if !ok {
			return nil, fmt.Errorf("the container has no cgroup in %s", h.MountPoint)
		}
		out[h.Name] = dir
	}
	return out, nil
}

// serving reports whether a view named key is served.
func (d *Daemon) serving(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.views[key]
	return ok
}

// userEnter puts the process numbered n in user who's container's pid
// namespace into the container's cgroup (its root, or the hidden leaf
// there), as cgfs exec does for root: from a helper in that namespace.
func (d *Daemon) userEnter(u *userState, who users.Who, name string, n int) error {
	c, err := u.container(who.Uid, name)
	if err != nil {
		return err
	}
	if n <= 0 {
		return refuseUser("bad-value", "enter needs the process's id in the container")
	}
	d.mu.Lock()
	s := d.views[c.key()]
	d.mu.Unlock()
	if s == nil {
		return refuseUser("user-request", "container %s has no view", name)
	}
	return s.views.EnterNS(n)
}

// freeze freezes (or thaws) every process of a container: cgroup v2's
// cgroup.freeze, or the v1 freezer's state.
func freeze(cg *cgroups.Set, on bool) error {
	if cg.V2 != "" {
		v := "0"
		if on {
			v = "1"
		}
		if err := os.WriteFile(filepath.Join(cg.V2, "cgroup.freeze"), []byte(v), 0); err == nil {
			return nil
		}
	}
	for _, dir := range cg.Dirs {
		if _, err := os.Stat(filepath.Join(dir, "freezer.state")); err == nil {
			v := "THAWED"
			if on {
				v = "FROZEN"
			}
			return os.WriteFile(filepath.Join(dir, "freezer.state"), []byte(v), 0)
		}
	}
	return errors.New("the host has no freezer")
}

// SubordinateOwner says whose subordinate uid (UserConfig.SubUID) uid
// is, for control.UserBounds.Owner; no user is served, none is.
func (d *Daemon) SubordinateOwner(uid int) (owner int, name string, ok bool, err error) {
	d.mu.Lock()
	u := d.users
	d.mu.Unlock()
	if u == nil {
		return 0, "", false, nil
	}
	return u.subs.Owner(uid)
}

// UserRefused counts a refusal of a user's request by rule.
func (d *Daemon) UserRefused(uid int, rule string) {
	d.metrics.UserRefusal(rule)
}

// every is every user's every container.
func (u *userState) every() []*userContainer {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []*userContainer
	for _, m := range u.containers {
		for _, c := range m {
			out = append(out, c)
		}
	}
	return out
}

// userWait bounds how long a user's init may take to be adopted after
// create: a container nobody adopts is removed.
var userWait = time.Minute
