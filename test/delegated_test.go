package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Delegated mode: cgfs run by an ordinary user who owns a cgroup v2
// subtree (as systemd's Delegate= or an admin's chown gives one), with
// no daemon and no root process: only shadow's set-user-ID newuidmap and
// newgidmap.

// delegateTo makes a cgroup below the v2 root and delegates it to user a
// as an admin does (systemd's Delegate= alike): the directory, its
// cgroup.procs, cgroup.subtree_control and cgroup.threads become a's.
// It is removed when the test ends.
func delegateTo(t *testing.T, l lane, a *testUser) string {
	t.Helper()
	d := newCgroupIn(t, l.cgroup2)
	for _, f := range []string{"", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"} {
		if err := os.Chown(filepath.Join(d, f), a.uid, a.gid); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// delegatedCommand is `cgfs ARGS` as user a, started in cgroup d (as a
// login in a delegated scope is). FUSE is the user's where /dev/fuse is
// open to everyone, as udev makes it (50-udev-default.rules; the VM lane
// does the same); on a host whose /dev/fuse is root's alone, the command
// gets such a node in a private mount namespace of its own: the host's
// stays as it is.
func delegatedCommand(t *testing.T, a *testUser, d string, args ...string) *exec.Cmd {
	t.Helper()
	cg, err := os.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cg.Close() })
	var st syscall.Stat_t
	if err := syscall.Stat("/dev/fuse", &st); err != nil {
		t.Fatal(err)
	}
	c := a.command(cgfsBin, args...)
	if st.Mode&0o006 != 0o006 {
		for _, tool := range []string{"unshare", "setpriv", "mknod"} {
			requireTool(t, tool)
		}
		dev := publicDir(t)
		script := fmt.Sprintf(`mount -t tmpfs -o mode=755 none %[1]s && mknod -m 666 %[1]s/fuse c 10 229 && mount --bind %[1]s/fuse /dev/fuse && exec setpriv --reuid %[2]d --regid %[3]d --clear-groups "$@"`,
			dev, a.uid, a.gid)
		env := c.Env
		c = exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c", script, "sh", cgfsBin}, args...)...)
		c.Env, c.Dir = env, "/"
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	c.SysProcAttr.UseCgroupFD, c.SysProcAttr.CgroupFD = true, int(cg.Fd())
	// No daemon serves users here.
	c.Env = append(c.Env, "CGFS_USER_SOCKET="+filepath.Join(publicDir(t), "none.sock"))
	return c
}

// TestDelegatedRunWithoutRoot: an ordinary user's cgfs run in the cgroup
// delegated to it, with no daemon: the container's limits are in force
// on the host where the delegated cgroup offers the controllers (the v2
// lane; this hybrid host's v2 offers none of them), its root makes,
// limits (hidden leaves, not EBUSY), moves and freezes cgroups in its
// view and cannot raise its own limits; every process of cgfs run is the
// user's and the container's root is not the user (who owns the host's
// cgroup files); cgfs run exits with the command's status and leaves
// only its own empty leaf.
func TestDelegatedRunWithoutRoot(t *testing.T) {
	requireRoot(t)
	l := detectLane(t)
	a := newTestUser(t)
	d := delegateTo(t, l, a)
	offers := strings.Fields(readFile(t, filepath.Join(d, "cgroup.controllers")))
	has := func(c string) bool { return slices.Contains(offers, c) }
	limited := has("memory") && has("pids")
	args := []string{"run", "--name", "c1"}
	if limited {
		args = append(args, "--memory", "64M", "--pids", "50")
	}
	script := `echo uid $(id -u) map $(head -1 /proc/self/uid_map | tr -s ' ' | cut -d' ' -f2-3)
echo view $(grep -c ' /sys/fs/cgroup .* - fuse.cgfs ' /proc/self/mountinfo)
if [ -e /sys/fs/cgroup/memory.max ]; then
	echo max > /sys/fs/cgroup/memory.max || echo "its limit stays $(cat /sys/fs/cgroup/memory.max)"
	own=/tmp/cgfs-own-$$; mkdir $own
	if mount -t cgroup2 none $own; then
		echo max > $own/memory.max || echo "its own cgroupfs keeps its limit $(cat $own/memory.max)"
		umount $own
	fi
	rmdir $own
fi
mkdir /sys/fs/cgroup/sub && echo made sub
if grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
	echo +memory > /sys/fs/cgroup/cgroup.subtree_control && echo enabled memory
	echo 32M > /sys/fs/cgroup/sub/memory.max && echo limited sub $(cat /sys/fs/cgroup/sub/memory.max)
fi
sleep 1000 & kid=$!
echo $kid > /sys/fs/cgroup/sub/cgroup.procs && echo moved a child
echo 1 > /sys/fs/cgroup/sub/cgroup.freeze
until grep -q 'frozen 1' /sys/fs/cgroup/sub/cgroup.events; do sleep 0.1; done
echo froze a child
kill -9 $kid
echo running
read x
exit 7
`
	c := delegatedCommand(t, a, d, append(args, "--", "sh", "-c", script)...)
	var out lockedBuffer
	c.Stdout, c.Stderr = &out, &out
	stdin, err := c.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	ended := startUntilEnd(t, c, func() { stdin.Close() })
	waitFor(t, "the delegated container to run", 60*time.Second*laneSlowdown(), func() bool {
		return strings.Contains(out.String(), "running\n") || ended()
	})
	t.Logf("cgfs run as %s in %s:\n%s", a.name, d, out.String())
	wantSaid(t, out.String(), "the delegated container", "uid 0 map 0 "+strconv.Itoa(a.sub), "view 1\n",
		"made sub\n", "moved a child\n", "froze a child\n")
	if has("memory") {
		wantSaid(t, out.String(), "the delegated container", "its limit stays 67108864\n",
			"its own cgroupfs keeps its limit 67108864\n", "enabled memory\n", "limited sub 33554432\n")
	}
	ctr := filepath.Join(d, "c1")
	if limited {
		for f, want := range map[string]string{"memory.max": "67108864", "pids.max": "50"} {
			if got := strings.TrimSpace(readFile(t, filepath.Join(ctr, f))); got != want {
				t.Errorf("the container's %s on the host = %s, want %s", f, got, want)
			}
		}
	}
	// Every process of cgfs run (the command and its server, in the
	// leaf) is the user's; none of the container's is.
	leafProcs := treeProcs(t, filepath.Join(d, "cgfs-run"))
	if len(leafProcs) < 2 {
		t.Errorf("cgfs run's leaf holds %v, want cgfs run and its server", leafProcs)
	}
	for _, pid := range leafProcs {
		if uids := statusIDs(t, pid, "Uid:"); !allAre(uids, a.uid) {
			t.Errorf("process %d of cgfs run has uids %v, want the user's %d alone", pid, uids, a.uid)
		}
	}
	for _, pid := range treeProcs(t, ctr) {
		if uids := statusIDs(t, pid, "Uid:"); slices.Contains(uids, strconv.Itoa(a.uid)) {
			t.Errorf("the container's process %d has the user's uid (%v)", pid, uids)
		}
	}
	stdin.Close()
	waitFor(t, "cgfs run to end", 30*time.Second*laneSlowdown(), ended)
	if code := c.ProcessState.ExitCode(); code != 7 {
		t.Errorf("cgfs run exited %d, want the command's 7\n%s", code, out.String())
	}
	if _, err := os.Stat(ctr); !os.IsNotExist(err) {
		t.Errorf("the container's cgroup %s is left: %v", ctr, err)
	}
	entries, _ := os.ReadDir(d)
	for _, e := range entries {
		if e.IsDir() && e.Name() != "cgfs-run" {
			t.Errorf("%s is left in the delegated cgroup", e.Name())
		}
	}
}

// treeProcs is every process in cgroup dir and below.
func treeProcs(t *testing.T, dir string) []int {
	t.Helper()
	var pids []int
	_ = filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
		return nil
	})
	return pids
}

// statusIDs are the ids on process pid's /proc status line key (Uid:,
// Gid:): real, effective, saved, file system.
func statusIDs(t *testing.T, pid int, key string) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil // gone
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			return strings.Fields(rest)
		}
	}
	return nil
}

func allAre(ids []string, id int) bool {
	for _, s := range ids {
		if s != strconv.Itoa(id) {
			return false
		}
	}
	return len(ids) > 0
}
