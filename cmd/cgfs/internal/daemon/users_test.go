package daemon

import (
	"bufio"
	"fmt"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/testhost"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/cmd/cgfs/internal/cgroups"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/control"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/serve"
	"github.com/cgfs/cgfs/cmd/cgfs/internal/users"
	"github.com/cgfs/cgfs/metrics"
	"github.com/cgfs/cgfs/proc"
	"github.com/cgfs/cgfs/translate/layout"
)

// Users of these tests: uids no passwd entry names (users.Lookup makes
// their names of their numbers).
const (
	testUID      = 4242
	otherTestUID = 4243
)

// serveUsers makes fx's daemon serve users with the policy text, their
// containers below a parent cgroup of the test's (cgfs-test-*), which is
// removed with whatever is left in it when the test ends.
func (fx *fixture) serveUsers(policy string) string {
	fx.t.Helper()
	pol, err := users.Parse(strings.NewReader(policy))
	if err != nil {
		fx.t.Fatal(err)
	}
	parent := fmt.Sprintf("cgfs-test-daemon-users-%d-%d", os.Getpid(), cgroupSeq.Add(1))
	l, err := layout.Discover(fx.procs)
	if err != nil {
		fx.t.Fatal(err)
	}
	fx.t.Cleanup(func() {
		for _, h := range l.Hierarchies {
			dir := filepath.Join(h.MountPoint, parent)
			if _, err := os.Stat(dir); err == nil {
				if err := cgroups.RemoveTree(dir); err != nil {
					fx.t.Errorf("removing %s: %v", dir, err)
				}
			}
		}
	})
	fx.d.ServeUsers(UserConfig{Policy: pol, Parent: parent})
	return parent
}

// ask is a user's request, as the user socket's handler gets it.
func (fx *fixture) ask(uid int, req control.Request) control.Answer {
	a, f := fx.d.HandleUser(req, control.Peer{Uid: uid, Gid: uid})
	if f != nil {
		f.Close()
	}
	return a
}

// hostDirs are the host directories of user uid's container name that
// exist, in every hierarchy.
func (fx *fixture) hostDirs(parent string, uid int, name string) []string {
	l, err := layout.Discover(fx.procs)
	if err != nil {
		fx.t.Fatal(err)
	}
	var out []string
	for _, h := range l.Hierarchies {
		dir := filepath.Join(h.MountPoint, parent, fmt.Sprintf("user-%d", uid), name)
		if _, err := os.Stat(dir); err == nil {
			out = append(out, dir)
		}
	}
	return out
}

// userRefusals is cgfs_user_refusals_total{rule} now.
func (fx *fixture) userRefusals(rule string) float64 {
	mfs, err := fx.reg.Gather()
	if err != nil {
		fx.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cgfs_user_refusals_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if lp.GetName() == "rule" && lp.GetValue() == rule {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestUserContainersBoundedUnderConcurrentCreates: a user asking for
// more containers at once than the admin's policy gives it gets exactly
// as many as it may; the rest are refused by that rule (counted), as is
// a name asked twice at once; each user sees its own alone; removals
// asked twice at once remove each container once, and nothing is left
// on the host.
func TestUserContainersBoundedUnderConcurrentCreates(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	parent := fx.serveUsers("* containers=3\n")
	const asked = 8
	answers := make(chan control.Answer, 2*asked)
	var wg sync.WaitGroup
	for i := range asked {
		wg.Add(2)
		go func() {
			defer wg.Done()
			answers <- fx.ask(testUID, control.Request{Op: "create", Name: fmt.Sprintf("c%d", i)})
		}()
		go func() { // another user asks for one name, again and again
			defer wg.Done()
			a := fx.ask(otherTestUID, control.Request{Op: "create", Name: "same"})
			a.Views = []control.ViewInfo{{Name: "other"}} // marks whose
			answers <- a
		}()
	}
	wg.Wait()
	close(answers)
	made, refused, sameMade, sameTaken := 0, 0, 0, 0
	for a := range answers {
		other := len(a.Views) == 1
		switch {
		case a.Error == "" && other:
			sameMade++
		case a.Error == "":
			made++
		case other && a.Usage && strings.Contains(a.Error, "named same already"):
			sameTaken++
		case !other && a.Usage && strings.Contains(a.Error, "as many as the admin's policy gives it"):
			refused++
		default:
			t.Errorf("create: %+v", a)
		}
	}
	if made != 3 || refused != asked-3 {
		t.Errorf("%d containers made and %d refused of %d asked at once, want 3 made (the policy's bound)", made, refused, asked)
	}
	if sameMade != 1 || sameTaken != asked-1 {
		t.Errorf("one name asked %d times at once: made %d times, refused as taken %d times; want once", asked, sameMade, sameTaken)
	}
	if got := fx.userRefusals("user-containers"); got != float64(asked-3) {
		t.Errorf("cgfs_user_refusals_total{rule=user-containers} = %v, want %d", got, asked-3)
	}
	mine := fx.ask(testUID, control.Request{Op: "list"}).Views
	theirs := fx.ask(otherTestUID, control.Request{Op: "list"}).Views
	if len(mine) != 3 || len(theirs) != 1 || theirs[0].Name != "same" {
		t.Errorf("the users list %v and %v, want their own: 3 and [same]", mine, theirs)
	}
	for _, v := range mine {
		if dirs := fx.hostDirs(parent, testUID, v.Name); len(dirs) == 0 {
			t.Errorf("%s has no cgroup on the host", v.Name)
		}
		if a := fx.ask(otherTestUID, control.Request{Op: "remove", Name: v.Name}); a.Error != "" {
			t.Errorf("another user's remove of %s: %+v, want nothing done (it has none)", v.Name, a)
		}
	}
	// Each removed twice at once.
	for _, v := range append(mine, control.ViewInfo{Name: "same"}) {
		uid := testUID
		if v.Name == "same" {
			uid = otherTestUID
		}
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if a := fx.ask(uid, control.Request{Op: "remove", Name: v.Name}); a.Error != "" {
					t.Errorf("remove %s: %+v", v.Name, a)
				}
			}()
		}
	}
	wg.Wait()
	for _, v := range mine {
		if dirs := fx.hostDirs(parent, testUID, v.Name); len(dirs) != 0 {
			t.Errorf("%s left on the host: %v", v.Name, dirs)
		}
	}
	if got := fx.ask(testUID, control.Request{Op: "list"}).Views; len(got) != 0 {
		t.Errorf("listed after every remove: %v", got)
	}
	if n := fx.log.Count("a user's container is gone"); n != 4 {
		t.Errorf("%d removals logged, want 4 (each container once)", n)
	}
}

// TestUnadoptedContainerRemovedOnce: a container nobody adopts in time
// is removed by the daemon while its user removes it too: once, with
// nothing left on the host, its name free again.
func TestUnadoptedContainerRemovedOnce(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	parent := fx.serveUsers("")
	saved := userWait
	userWait = 0 // the daemon's removal races the user's
	t.Cleanup(func() { userWait = saved })
	for i := range 4 {
		name := fmt.Sprintf("orphan%d", i)
		if a := fx.ask(testUID, control.Request{Op: "create", Name: name}); a.Error != "" {
			t.Fatalf("create %s: %+v", name, a)
		}
		// The user's remove returns once the container is gone, whoever
		// removed it (a removal under way is waited for).
		if a := fx.ask(testUID, control.Request{Op: "remove", Name: name}); a.Error != "" {
			t.Errorf("remove %s: %+v", name, a)
		}
		if dirs := fx.hostDirs(parent, testUID, name); len(dirs) != 0 {
			t.Errorf("%s left on the host after its remove: %v", name, dirs)
		}
	}
	if n := fx.log.Count("a user's container is gone"); n != 4 {
		t.Errorf("%d removals logged, want 4 (each container once)", n)
	}
	if n := fx.log.Count("removing a user's container's cgroups"); n != 0 {
		t.Errorf("%d removals failed", n)
	}
	if a := fx.ask(testUID, control.Request{Op: "create", Name: "orphan0"}); a.Error != "" {
		t.Errorf("create of a removed container's name: %+v", a)
	}
}

// TestUserContainerOperations: what a user may do with its container
// before it has an init: limit it (within the policy: stats says so),
// freeze and thaw it, read its stats; what needs an init or a view is
// refused by rule, as are names and values the daemon does not take.
func TestUserContainerOperations(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	parent := fx.serveUsers("* pids=100\n")
	if a := fx.ask(testUID, control.Request{Op: "create", Name: "c"}); a.Error != "" {
		t.Fatalf("create: %+v", a)
	}
	if a := fx.ask(testUID, control.Request{Op: "update", Name: "c", Limits: &control.Limits{Pids: 500}}); a.Error != "" {
		t.Errorf("update: %+v", a)
	}
	a := fx.ask(testUID, control.Request{Op: "stats", Name: "c"})
	if len(a.Stats) != 1 {
		t.Fatalf("stats: %+v", a)
	}
	if s := a.Stats[0]; s.Name != "c" || s.PidsMax == nil || *s.PidsMax != 100 {
		got := "none"
		if s.PidsMax != nil {
			got = fmt.Sprint(*s.PidsMax)
		}
		t.Errorf("stats of %s after asking pids 500 with a policy of 100: pids_max %s, want 100", s.Name, got)
	}
	v2 := ""
	for _, d := range fx.hostDirs(parent, testUID, "c") {
		if strings.HasPrefix(d, fx.v2+"/") {
			v2 = d
		}
	}
	for _, op := range []string{"freeze", "thaw"} {
		if a := fx.ask(testUID, control.Request{Op: op, Name: "c"}); a.Error != "" {
			t.Errorf("%s: %+v", op, a)
		}
		if v2 != "" {
			b, _ := os.ReadFile(filepath.Join(v2, "cgroup.freeze"))
			if want := map[string]string{"freeze": "1", "thaw": "0"}[op]; strings.TrimSpace(string(b)) != want {
				t.Errorf("cgroup.freeze after %s = %q, want %s", op, b, want)
			}
		}
	}
	if a := fx.ask(testUID, control.Request{Op: "stats"}); len(a.Stats) != 1 {
		t.Errorf("stats of every container: %+v", a)
	}
	for _, c := range []struct {
		req  control.Request
		rule string
	}{
		{control.Request{Op: "lookup", Name: "c"}, "user-request"},
		{control.Request{Op: "attach", Name: "c"}, "user-request"},
		{control.Request{Op: "enter", Name: "c", NSPid: 1}, "user-request"},
		{control.Request{Op: "detach", Name: "c"}, "user-request"},
		{control.Request{Op: "agent", Name: "c"}, "user-request"},
		{control.Request{Op: "adopt", Name: "c"}, "user-proof"},
		{control.Request{Op: "create", Name: "../x"}, "bad-name"},
		{control.Request{Op: "create", Name: "c"}, "name-taken"},
		{control.Request{Op: "create", Name: "d", Limits: &control.Limits{Memory: -1}}, "bad-value"},
		{control.Request{Op: "freeze", Name: "nope"}, "no-container"},
		{control.Request{Op: "bogus", Name: "c"}, "user-request"},
	} {
		before := fx.userRefusals(c.rule)
		if a := fx.ask(testUID, c.req); a.Error == "" || !a.Usage {
			t.Errorf("%s %s: %+v, want refused", c.req.Op, c.req.Name, a)
		}
		if got := fx.userRefusals(c.rule); got != before+1 {
			t.Errorf("%s %s: cgfs_user_refusals_total{rule=%s} went from %v to %v, want one more", c.req.Op, c.req.Name, c.rule, before, got)
		}
	}
	if a := fx.ask(testUID, control.Request{Op: "kill", Name: "c"}); a.Error != "" {
		t.Errorf("kill: %+v", a)
	}
}

// TestRefusedUserLogBudget: each user's refusals go to the host log
// within a budget of its own (a burst of 20, then one a second), while
// every one is counted; the next line says how many were left out. No
// user's refusals take another's budget, however many come at once.
func TestRefusedUserLogBudget(t *testing.T) {
	procs, err := proc.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	defer procs.Close()
	logs := &testhost.Log{}
	reg := prometheus.NewRegistry()
	d := New(procs, metrics.New(reg), nil, serve.Bounds{}, slog.New(slog.NewTextHandler(logs, nil)))
	d.ServeUsers(UserConfig{})
	fx := &fixture{t: t, d: d, reg: reg, log: logs}
	const asked = 50
	var wg sync.WaitGroup
	for i := range asked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid := testUID
			if i%10 == 0 {
				uid = otherTestUID // 5 of another user's
			}
			if a := fx.ask(uid, control.Request{Op: "create", Name: "bad/name"}); a.Error == "" {
				t.Errorf("a bad name was taken")
			}
		}()
	}
	wg.Wait()
	if got := fx.userRefusals("bad-name"); got != asked {
		t.Errorf("cgfs_user_refusals_total{rule=bad-name} = %v, want every one of %d", got, asked)
	}
	lines := func(uid int) int { return logs.Count(fmt.Sprintf("uid=%d ", uid)) }
	if got := lines(testUID); got != 20 {
		t.Errorf("%d lines of user %d's 45 refusals at once, want its burst of 20", got, testUID)
	}
	if got := lines(otherTestUID); got != 5 {
		t.Errorf("%d lines of user %d's 5 refusals, want all 5 (a budget of its own)", got, otherTestUID)
	}
	// A second later the user has a line again (its budget gives one a
	// second), which says how many were left out: asked again until it
	// comes, each refusal one more left out.
	leftOut := regexp.MustCompile(fmt.Sprintf(`uid=%d user=%d op=create name=bad/name rule=bad-name .*suppressed=(\d+)`, testUID, testUID))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		fx.ask(testUID, control.Request{Op: "create", Name: "bad/name"})
		said := 0
		for _, m := range leftOut.FindAllStringSubmatch(logs.String(), -1) {
			n, _ := strconv.Atoi(m[1])
			said = max(said, n)
		}
		if said > 0 { // the burst's lines say 0
			if said < 25 {
				t.Errorf("the line after a second says %d were left out, want at least the 25 of the burst", said)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line of user %d's says how many were left out, 5 s on:\n%s", testUID, lastLines(logs.String(), 2))
		}
	}
	// (That the budgets of quiet users are forgotten beyond a bound is
	// package loglimit's test.)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// nobody is the host user whose containers TestUserContainerEnd makes:
// one the host names (its ids are checked against its passwd entry).
const nobody = 65534

// userInit starts what a user's container's init is: a process of user
// nobody, pid 1 of a pid namespace of a user namespace nobody made
// (unshare, as the user runs it), and returns its host pid and the
// proofs the user sends with adopt: a pidfd, its user and pid
// namespaces. It is killed when the test ends.
func (fx *fixture) userInit() (int, []*os.File) {
	fx.t.Helper()
	cmd := exec.Command("unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child",
		"sh", "-c", "echo ready; exec sleep 3600")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		fx.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		fx.t.Skipf("unshare as nobody: %v", err)
	}
	fx.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		fx.t.Fatalf("the user's init said %q, %v", line, err)
	}
	// unshare's one child is the init.
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", cmd.Process.Pid))
	var kids []string
	for _, task := range tasks {
		b, _ := os.ReadFile(task)
		kids = append(kids, strings.Fields(string(b))...)
	}
	if len(kids) != 1 {
		fx.t.Fatalf("unshare has children %v, want the init alone", kids)
	}
	pid, _ := strconv.Atoi(kids[0])
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fx.t.Fatal(err)
	}
	files := []*os.File{os.NewFile(uintptr(pidfd), "init")}
	for _, ns := range []string{"user", "pid"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err != nil {
			fx.t.Fatal(err)
		}
		files = append(files, f)
	}
	return pid, files
}

// TestUserContainerEndRacingAttach: a user's container whose init ends
// while the user attaches its view is removed, view and all: the attach
// is refused, or the view it got is stopped (ENOTCONN, never a closed
// descriptor); the daemon serves nothing of it after, nothing is left on
// the host, and the name is the user's to make again.
func TestUserContainerEndRacingAttach(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	parent := fx.serveUsers("")
	for round := range 3 {
		name := fmt.Sprintf("c%d", round)
		if a := fx.ask(nobody, control.Request{Op: "create", Name: name}); a.Error != "" {
			t.Fatalf("create: %+v", a)
		}
		pid, proofs := fx.userInit()
		a, _ := fx.d.HandleUser(control.Request{Op: "adopt", Name: name, Files: proofs}, control.Peer{Uid: nobody, Gid: nobody})
		if a.Error != "" {
			t.Fatalf("adopt: %+v", a)
		}
		if a := fx.ask(nobody, control.Request{Op: "lookup", Name: name}); a.Init != pid {
			t.Errorf("lookup after adopt: %+v, want init %d", a, pid)
		}
		var s *served
		if round == 0 { // a view served first, then the end
			mnt := fx.userAttach(name)
			if _, err := readAt(mnt, fx.v2File("cgroup.procs")); err != nil {
				t.Errorf("reading the user's view: %v", err)
			}
			s = fx.served(fmt.Sprintf("user-%d/%s", nobody, name))
			unix.Kill(pid, unix.SIGKILL)
			fx.waitDropped(s, "the container's init ended")
			if _, err := readAt(mnt, fx.v2File("cgroup.procs")); !isGone(err) {
				t.Errorf("the user's view after its init ended: %v, want ENOTCONN", err)
			}
		} else { // the end while attaching
			attached := make(chan *os.File, 1)
			go func() {
				a, f := fx.d.HandleUser(control.Request{Op: "attach", Name: name}, control.Peer{Uid: nobody, Gid: nobody})
				if a.Error != "" && f != nil {
					t.Errorf("a refused attach came with a mount")
				}
				attached <- f
			}()
			unix.Kill(pid, unix.SIGKILL)
			if f := <-attached; f != nil {
				// Served before the end: stopped by it.
				if s = fx.served(fmt.Sprintf("user-%d/%s", nobody, name)); s != nil {
					fx.waitDropped(s, "the container's init ended")
				}
				fx.ask(nobody, control.Request{Op: "remove", Name: name}) // waits for the removal under way
				if _, err := readAt(f, fx.v2File("cgroup.procs")); !isGone(err) {
					t.Errorf("a view attached as its init ended: %v, want ENOTCONN", err)
				}
				f.Close()
			}
		}
		// The removal of an ended container is waited for by remove.
		fx.ask(nobody, control.Request{Op: "remove", Name: name})
		if got := fx.listed(); len(got) != 0 {
			t.Errorf("round %d: the daemon serves %v after the container ended", round, got)
		}
		if dirs := fx.hostDirs(parent, nobody, name); len(dirs) != 0 {
			t.Errorf("round %d: left on the host: %v", round, dirs)
		}
		if got := fx.ask(nobody, control.Request{Op: "list"}).Views; len(got) != 0 {
			t.Errorf("round %d: the user lists %v after its container ended", round, got)
		}
	}
}

// userAttach attaches user nobody's container's view.
func (fx *fixture) userAttach(name string) *os.File {
	fx.t.Helper()
	a, f := fx.d.HandleUser(control.Request{Op: "attach", Name: name}, control.Peer{Uid: nobody, Gid: nobody})
	if a.Error != "" || f == nil {
		fx.t.Fatalf("attach: %+v", a)
	}
	fx.t.Cleanup(func() { f.Close() })
	return f
}

// v2File is file of the cgroup v2 hierarchy in a view of every
// hierarchy (a user's): in its directory of the layout, where the host
// has v1 hierarchies beside it.
func (fx *fixture) v2File(file string) string {
	fx.t.Helper()
	l, err := layout.Discover(fx.procs)
	if err != nil {
		fx.t.Fatal(err)
	}
	for _, h := range l.Hierarchies {
		if !h.V1 && h.Name != "" {
			return h.Name + "/" + file
		}
	}
	return file
}

// TestConcurrentAdoptsTakeOneInit: two adoptions of one container at
// once: one takes the init, the other is refused, and once the container
// is removed the daemon holds no pidfd or pid namespace of its init (the
// second adoption's used to be stored over the first's, lost).
func TestConcurrentAdoptsTakeOneInit(t *testing.T) {
	fx := newFixture(t, serve.Bounds{})
	fx.serveUsers("")
	// held is how many descriptors this process holds of inits: pidfds
	// of them, and their pid namespaces (os/exec's own pidfds are of the
	// unshare processes, not counted).
	held := func(inits []int) int {
		ns := map[string]bool{}
		for _, pid := range inits {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil {
				ns[l] = true
			}
		}
		n := 0
		entries, _ := os.ReadDir("/proc/self/fd")
		for _, e := range entries {
			l, err := os.Readlink("/proc/self/fd/" + e.Name())
			switch {
			case err != nil:
			case ns[l]:
				n++
			case l == "anon_inode:[pidfd]":
				info, _ := os.ReadFile("/proc/self/fdinfo/" + e.Name())
				for _, pid := range inits {
					if strings.Contains(string(info), fmt.Sprintf("Pid:\t%d\n", pid)) {
						n++
					}
				}
			}
		}
		return n
	}
	var inits []int
	for round := range 3 {
		name := fmt.Sprintf("twice%d", round)
		if a := fx.ask(nobody, control.Request{Op: "create", Name: name}); a.Error != "" {
			t.Fatalf("create: %+v", a)
		}
		pid, first := fx.userInit()
		inits = append(inits, pid)
		// The same init's proofs, opened once more.
		var second []*os.File
		for _, f := range first {
			g, err := dupFile(f)
			if err != nil {
				t.Fatal(err)
			}
			second = append(second, g)
		}
		answers := make(chan control.Answer, 2)
		for _, proofs := range [][]*os.File{first, second} {
			go func() {
				a, _ := fx.d.HandleUser(control.Request{Op: "adopt", Name: name, Files: proofs}, control.Peer{Uid: nobody, Gid: nobody})
				answers <- a
			}()
		}
		var ok, refused int
		for range 2 {
			switch a := <-answers; {
			case a.Error == "":
				ok++
			case strings.Contains(a.Error, "has its init already"):
				refused++
			default:
				t.Errorf("an adoption: %+v", a)
			}
		}
		if ok != 1 || refused != 1 {
			t.Errorf("round %d: %d adoptions took the init and %d were refused, want one each", round, ok, refused)
		}
		if n := held(inits[round:]); n != 2 {
			t.Errorf("round %d: the daemon holds %d descriptors of its container's init, want its pidfd and pid namespace", round, n)
		}
		fx.ask(nobody, control.Request{Op: "remove", Name: name})
	}
	if n := held(inits); n != 0 {
		t.Errorf("the daemon holds %d pidfds and pid namespaces of its removed containers' inits, want none", n)
	}
}
