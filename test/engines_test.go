package test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Container engines inside a cgfs run --rootfs container, as they are
// installed (Debian's packages: the host's /usr, bound read-only into a
// root file system of the container's own, where each keeps its own
// /etc, /var and /run), started by the container's root and driven by
// their own commands. What they do is asserted on the host: the limits
// in the host cgroups below the container's, the freezer's state, the
// OOM kill as the engine reports it.

// engineRootfs makes a root file system for an engine: directories for
// the host's /usr and the links into it, the host's users and the
// engine's configuration from /etc (copies), a busybox image as a tar
// (/root/busybox.tar) and as a directory (/root/busybox), and a FIFO
// /out/go through which the test lets the script go on (engineRun).
func engineRootfs(t *testing.T, etc ...string) string {
	t.Helper()
	root := publicDir(t)
	for _, d := range []string{"usr", "etc", "proc", "sys", "dev", "run", "tmp", "root", "var/lib", "var/tmp", "var/log", "out"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin",
		"var/run": "../run", "etc/os-release": "../usr/lib/os-release"}
	for name, to := range links {
		if err := os.Symlink(to, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range append([]string{"passwd", "group", "hosts", "nsswitch.conf", "alternatives"}, etc...) {
		if _, err := os.Lstat("/etc/" + f); err != nil {
			continue
		}
		if out, err := exec.Command("cp", "-a", "/etc/"+f, filepath.Join(root, "etc")).CombinedOutput(); err != nil {
			t.Fatalf("copying /etc/%s: %v\n%s", f, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	busyboxRootfsAt(t, filepath.Join(root, "root/busybox"), containerBase)
	if out, err := exec.Command("tar", "--owner=0", "--group=0", "--numeric-owner", "-C", filepath.Join(root, "root/busybox"), "-cf", filepath.Join(root, "root/busybox.tar"), ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "out/go"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, containerBase, containerBase) })
	return root
}

// engineRun runs command (a script of root's /out, or systemd) as what a
// cgfs run --rootfs root container (parent/name) starts, with the host's
// /usr bound read-only in a mount namespace of the run's own. What the
// container says to the test it writes to the FIFO /out/say
// (enginePrelude sends a script's output there); each line "HOSTCHECK
// what" is answered by check(what) on the host while the container
// waits (it reads /out/go next), and the test then lets it go on. It
// returns what was said and cgfs run's status.
func engineRun(t *testing.T, root, parent, name, command string, check func(what string)) (string, int) {
	t.Helper()
	if err := syscall.Mkfifo(filepath.Join(root, "out/say"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(root, "out/say"), containerBase, containerBase); err != nil {
		t.Fatal(err)
	}
	// Read and write: the FIFO never ends before cgfs run does.
	say, err := os.OpenFile(filepath.Join(root, "out/say"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "-m", "sh", "-c", fmt.Sprintf(
		"mount --make-rprivate / && mount --bind -o ro /usr %s/usr && exec %s run --parent %s --name %s --rootfs %s -- %s",
		root, cgfsBin, parent, name, root, command))
	var output lockedBuffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); say.Close(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
			return
		default:
		}
		// A check failed: the run ends (cgfs run removes what it made).
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	var out strings.Builder
	lines := bufio.NewScanner(say)
	for lines.Scan() {
		line := lines.Text()
		out.WriteString(line + "\n")
		what, ok := strings.CutPrefix(line, "HOSTCHECK ")
		if !ok {
			continue
		}
		check(what)
		// Opening the FIFO waits for the container's read: it is there.
		f, err := os.OpenFile(filepath.Join(root, "out/go"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = f.WriteString("go\n")
		f.Close()
	}
	<-done
	code := cmd.ProcessState.ExitCode()
	t.Logf("cgfs run exited %d; the container said:\n%s\ncgfs run's output:\n%s", code, out.String(), output.String())
	return out.String(), code
}

// enginePrelude sends the script's output to the test (engineRun) and
// defines waitfor (a condition the engine makes true in its time, within
// 30 seconds), check, which asks the host to look (a
// HOSTCHECK line) and waits until it has, and engineCgroup, the cgroup
// of a process of the engine's container below the cgfs container's
// (its memory hierarchy's line on v1, its cgroup v2 line otherwise):
// runtimes on v1 make no cgroup namespace, so the path is relative to
// the cgfs container's.
const enginePrelude = `set -u
exec > /out/say
check() { echo HOSTCHECK "$@"; read _ < /out/go; }
engineCgroup() { sed -n 's/^[0-9]*:memory:\///p; s/^0::\///p' | head -1; }
# waitfor CONDITION: until it holds, at most 30 seconds.
waitfor() { n=0; until eval "$1"; do n=$((n+1)); [ $n -gt 300 ] && return 1; sleep 0.1; done; }
`

// engineChecks answers an engine script's checks, for the cgfs container
// parent/name: "limits REL MEM PIDS QUOTA" (the memory, pids and CPU
// quota limits of cgroup REL below the container's; "-" for one not
// asked), "frozen REL" and "thawed REL" (the freezer's state).
func engineChecks(t *testing.T, parent, name string) func(string) {
	l := detectLane(t)
	dir := func(ctrl, rel string) string {
		if m, ok := l.v1[ctrl]; ok {
			return filepath.Join(m, parent, name, rel)
		}
		return filepath.Join(l.cgroup2, parent, name, rel)
	}
	// A check that fails lets the container go on, to its end.
	file := func(ctrl, rel, v1, v2 string) string {
		path := filepath.Join(dir(ctrl, rel), v2)
		if _, ok := l.v1[ctrl]; ok {
			path = filepath.Join(dir(ctrl, rel), v1)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
		}
		return strings.TrimSpace(string(b))
	}
	return func(what string) {
		f := strings.Fields(what)
		switch {
		case len(f) == 5 && f[0] == "limits":
			rel := f[1]
			if f[2] != "-" {
				if got := file("memory", rel, "memory.limit_in_bytes", "memory.max"); got != f[2] {
					t.Errorf("%s's memory limit on the host = %s, want %s", rel, got, f[2])
				}
			}
			if f[3] != "-" {
				if got := file("pids", rel, "pids.max", "pids.max"); got != f[3] {
					t.Errorf("%s's pids limit on the host = %s, want %s", rel, got, f[3])
				}
			}
			if f[4] != "-" {
				got := file("cpu", rel, "cpu.cfs_quota_us", "cpu.max")
				if got != f[4] && !strings.HasPrefix(got, f[4]+" ") {
					t.Errorf("%s's CPU quota on the host = %s, want %s", rel, got, f[4])
				}
			}
		case len(f) == 2 && (f[0] == "frozen" || f[0] == "thawed"):
			v1, want := "FROZEN", f[0] == "frozen"
			if _, ok := l.v1["freezer"]; ok {
				if got := file("freezer", f[1], "freezer.state", ""); (got == v1) != want {
					t.Errorf("%s's freezer state on the host = %s, want it %s", f[1], got, f[0])
				}
				return
			}
			if got := keyedValue(file("", f[1], "", "cgroup.events"), "frozen"); (got == "1") != want {
				t.Errorf("%s on the host: cgroup.events says frozen %s, want it %s", f[1], got, f[0])
			}
		default:
			t.Errorf("the script asked for an unknown check %q", what)
		}
	}
}

// TestDockerInsideRootfs: Debian's Docker 20.10 (dockerd, containerd,
// runc) inside a cgfs run --rootfs container, started as its root: a
// container with --memory 64m, --pids-limit 20 and --cpus 0.5 has them on
// the host, docker exec runs in it, docker pause freezes it on the host,
// docker stats reads its limit, --network host is the cgfs container's
// network (its own, with only its loopback), a fork past a pids limit is
// refused, and
// an OOM kill is reported as Docker reports it natively (OOMKilled=true:
// containerd's v1 OOM monitor registers through cgroup.event_control).
func TestDockerInsideRootfs(t *testing.T) {
	requireRoot(t)
	requireTool(t, "dockerd")
	parent, name := runParent(t), "docker"
	root := engineRootfs(t)
	script := enginePrelude + `dockerd --iptables=false --ip-masq=false --bridge=none > /out/dockerd.log 2>&1 &
dpid=$!
until docker version > /dev/null 2>&1; do sleep 0.1; done
` + dockerCLIScript("docker") + `docker run --rm --network host busybox sh -c 'echo host network: $(ls /sys/class/net)'
` + dockerCLIFork("docker") + `# The OOM comes once the engine's monitor is registered (before run -d
# returns): the payload waits on a FIFO for the go. Its init lives on
# (the OOM killer takes dd), as the monitors drop an event of a cgroup
# already removed.
mkdir /tmp/oomgo && mkfifo /tmp/oomgo/fifo
docker run -d --name oom --network none --memory 32m -v /tmp/oomgo:/go busybox sh -c 'read x < /go/fifo; busybox dd if=/dev/zero of=/dev/null bs=100M count=1; echo dd $?; exec sleep 1000' > /dev/null
echo go > /tmp/oomgo/fifo
waitfor 'docker logs oom 2>&1 | grep -q "^dd "' && docker logs oom 2>&1 | grep '^dd ' | sed 's/^dd /oom exit /'
# Docker says OOMKilled when a container ends after an OOM event.
waitfor 'docker events --since 0 --until "$(date +%s)" --filter container=oom --filter event=oom | grep -q oom'
docker kill oom > /dev/null; docker wait oom > /dev/null
echo OOMKilled $(docker inspect -f '{{.State.OOMKilled}}' oom)
docker rm -f $id oom > /dev/null
kill $dpid; wait $dpid; echo dockerd ended
`
	writeScript(t, root, script)
	out, code := engineRun(t, root, parent, name, "/bin/sh /out/script.sh", engineChecks(t, parent, name))
	if code != 0 {
		log, _ := os.ReadFile(filepath.Join(root, "out/dockerd.log"))
		t.Errorf("cgfs run exited %d; dockerd's log:\n%s", code, log)
	}
	wantSaid(t, out, "docker inside", "imported\n", "started\n", "exec in docker/", "paused\n", "unpaused\n",
		"stats ", " / 64MiB ", "host network: lo\n", "can't fork", "oom exit 137\n", "OOMKilled true\n", "dockerd ended\n")
}

// TestPodmanInsideRootfs: Debian's podman 4.3.1 with runc (conmon,
// cgroupfs manager) inside a cgfs run --rootfs container, as its root:
// --memory, --pids-limit and --cpus on the host, podman exec, pause
// freezing on the host, podman stats, a fork past a pids limit refused,
// and an OOM kill seen by conmon, which registers through
// cgroup.event_control on v1. conmon 2.1.6 says so with a file "oom" in
// its working directory (and in --persist-dir, which podman 4.3.1 does
// not pass), where podman 4.3.1 does not look (the bundle): podman
// inspect says OOMKilled false (from the source of both; podman starts
// no container natively on this host to compare); the test
// reads conmon's file.
func TestPodmanInsideRootfs(t *testing.T) {
	requireRoot(t)
	requireTool(t, "podman")
	parent, name := runParent(t), "podman"
	root := engineRootfs(t, "containers")
	script := enginePrelude + `p() { podman --runtime runc --cgroup-manager cgroupfs --events-backend file "$@"; }
` + dockerCLIScript("p") + `` + dockerCLIFork("p") + `mkdir /tmp/cwd /tmp/oomgo && mkfifo /tmp/oomgo/fifo && cd /tmp/cwd
p run -d --name oom --network none --memory 32m -v /tmp/oomgo:/go busybox sh -c 'read x < /go/fifo; busybox dd if=/dev/zero of=/dev/null bs=100M count=1; echo dd $?; exec sleep 1000' > /dev/null
echo go > /tmp/oomgo/fifo
waitfor 'p logs oom 2>&1 | grep -q "^dd "' && p logs oom 2>&1 | grep '^dd ' | sed 's/^dd /oom exit /'
waitfor '[ -e /tmp/cwd/oom ]' && echo conmon saw the OOM
echo OOMKilled $(p inspect -f '{{.State.OOMKilled}}' oom)
p rm -f -t 0 $id oom > /dev/null && echo removed
`
	writeScript(t, root, script)
	out, code := engineRun(t, root, parent, name, "/bin/sh /out/script.sh", engineChecks(t, parent, name))
	if code != 0 {
		t.Errorf("cgfs run exited %d", code)
	}
	wantSaid(t, out, "podman inside", "imported\n", "started\n", "exec in ", "paused\n", "unpaused\n",
		"stats ", " / 67.11MB ", "can't fork", "oom exit 137\n", "conmon saw the OOM\n", "removed\n")
}

// TestContainerdInsideRootfs: Debian's containerd 1.6 and ctr inside a
// cgfs run --rootfs container, as its root: a task with
// --memory-limit and --cpus has them on the host, ctr task exec runs in
// it, ctr task pause freezes it on the host, ctr task metrics reads its
// limit, and an OOM kill is a /tasks/oom event (the shim registers
// through cgroup.event_control on v1).
func TestContainerdInsideRootfs(t *testing.T) {
	requireRoot(t)
	requireTool(t, "containerd")
	parent, name := runParent(t), "containerd"
	root := engineRootfs(t)
	script := enginePrelude + `containerd > /out/containerd.log 2>&1 &
cpid=$!
until ctr version > /dev/null 2>&1; do sleep 0.1; done
ctr events > /out/events &
epid=$!
# Events reach ctr events from its subscription on: make one until it is seen.
i=0
until grep -q /namespaces/create /out/events; do i=$((i+1)); ctr namespaces create probe$i; done
ctr run -d --rootfs --memory-limit 67108864 --cpus 0.5 /root/busybox c1 /bin/sleep 1000 && echo started
e=0
waitfor 'e=$((e+1)); cg=$(ctr task exec --exec-id e$e c1 /bin/cat /proc/self/cgroup | engineCgroup); [ -n "$cg" ]' && echo exec in $cg
check limits $cg 67108864 - 50000
ctr task pause c1 && echo paused
check frozen $cg
ctr task resume c1 && echo resumed
check thawed $cg
ctr task metrics c1 | grep -E 'memory.limit_in_bytes|memory.max' | sed 's/^/metrics /'
mkdir /tmp/oomgo && mkfifo /tmp/oomgo/fifo
ctr run -d --rootfs --memory-limit 33554432 --mount type=bind,src=/tmp/oomgo,dst=/go,options=rbind:rw /root/busybox oom /bin/sh -c 'read x < /go/fifo; /bin/busybox dd if=/dev/zero of=/dev/null bs=100M count=1; exec /bin/sleep 1000'
echo go > /tmp/oomgo/fifo
waitfor 'grep -q /tasks/oom /out/events' && echo event /tasks/oom
ctr task kill -s KILL oom
waitfor 'grep /tasks/exit /out/events | grep -q "\"container_id\":\"oom\""'
ctr task delete oom > /dev/null; ctr container delete oom
ctr task kill -s KILL c1; ctr task delete c1 > /dev/null 2>&1; until ctr task delete c1 > /dev/null 2>&1 || ! ctr task ls -q | grep -q c1; do sleep 0.1; done
ctr container delete c1 && echo removed
kill $epid $cpid; wait $cpid; echo containerd ended
`
	writeScript(t, root, script)
	out, code := engineRun(t, root, parent, name, "/bin/sh /out/script.sh", engineChecks(t, parent, name))
	if code != 0 {
		t.Errorf("cgfs run exited %d", code)
	}
	wantSaid(t, out, "containerd inside", "started\n", "exec in ", "paused\n", "resumed\n",
		"metrics ", "67108864", "event /tasks/oom\n", "removed\n", "containerd ended\n")
}

// writeScript writes what an engine container runs, /out/script.sh.
func writeScript(t *testing.T, root, script string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(root, "out/script.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestSystemdNspawnInsideRootfs: systemd 252 as the PID 1 of a cgfs run
// --rootfs container starts systemd-nspawn (Debian's systemd-container)
// as a service with Delegate=yes, MemoryMax=64M and TasksMax=20. nspawn
// mounts cgroupfs from its supervisor cgroup, as a host's kernel roots
// such a mount at the cgroup namespace's root (its nested view is
// rooted there too) and moves its payload below, in cgroup and pid
// namespaces of its own; the limits systemd set are on the host.
func TestSystemdNspawnInsideRootfs(t *testing.T) {
	requireRoot(t)
	const systemd = "/lib/systemd/systemd"
	requireTool(t, "systemd-nspawn")
	if _, err := os.Stat(systemd); err != nil {
		skip(t, "no "+systemd+" (Debian's systemd package; .ci/run installs it)")
	}
	parent, name := runParent(t), "nspawn"
	root := engineRootfs(t)
	// nspawn wants an OS tree: /usr and an os-release.
	for _, d := range []string{"root/busybox/usr", "etc/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"root/busybox/etc/os-release":         "ID=busybox\n",
		"etc/systemd/system/cgfs-test.target": "[Unit]\nDescription=cgfs test\nRequires=cgfs-test.service\nAfter=cgfs-test.service\n",
		"etc/systemd/system/cgfs-test.service": "[Unit]\nDescription=cgfs probe\nDefaultDependencies=no\n\n" +
			"[Service]\nType=oneshot\nExecStart=/bin/sh -c '/bin/sh /out/script.sh; systemctl exit 42'\n",
		"etc/systemd/system/cgfs-nspawn.service": "[Unit]\nDescription=nspawn inside cgfs\nDefaultDependencies=no\n\n" +
			"[Service]\nDelegate=yes\nMemoryMax=64M\nTasksMax=20\nStandardOutput=append:/out/nspawn.log\nStandardError=inherit\n" +
			"ExecStart=/usr/bin/systemd-nspawn --keep-unit --register=no -q -D /root/busybox /bin/sh -c " +
			"'grep -c :/$$ /proc/self/cgroup | sed \"s/^/payload at its namespace root: /\"; echo payload waits; exec sleep 1000'\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("cgfs-test.target", filepath.Join(root, "etc/systemd/system/default.target")); err != nil {
		t.Fatal(err)
	}
	_ = filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, containerBase, containerBase) })
	writeScript(t, root, enginePrelude+`echo pid1 $(cat /proc/1/comm)
systemctl start cgfs-nspawn.service && echo started
until grep -q "payload waits" /out/nspawn.log 2>/dev/null || systemctl -q is-failed cgfs-nspawn.service; do sleep 0.1; done
cat /out/nspawn.log
systemctl is-active cgfs-nspawn.service
ls /sys/fs/cgroup/systemd/system.slice/cgfs-nspawn.service | grep -x payload | sed 's/^/below the service: /'
check limits system.slice/cgfs-nspawn.service 67108864 20 -
systemctl stop cgfs-nspawn.service && echo stopped
`)
	out, code := engineRun(t, root, parent, name, systemd, engineChecks(t, parent, name))
	if code != 42 {
		t.Errorf("cgfs run exited %d, want systemd's 42 (systemctl exit 42)", code)
	}
	wantSaid(t, out, "systemd and nspawn inside", "pid1 systemd\n", "started\n", "payload at its namespace root: 10\n",
		"active\n", "below the service: payload\n", "stopped\n")
}

// dockerCLIScript is what Docker's and podman's command lines (cli) do
// alike: import the busybox image, run a container with 64M, 20 pids and
// half a CPU, exec in it, check its limits on the host, pause it
// (frozen on the host), unpause it, and read its stats.
func dockerCLIScript(cli string) string {
	return strings.ReplaceAll(`C import /root/busybox.tar busybox > /dev/null && echo imported
id=$(C run -d --network none --memory 64m --pids-limit 20 --cpus 0.5 busybox sleep 1000) && echo started
cg=$(C exec $id cat /proc/self/cgroup | engineCgroup) && echo exec in $cg
check limits $cg 67108864 20 50000
C pause $id > /dev/null && echo paused
check frozen $cg
C unpause $id > /dev/null && echo unpaused
check thawed $cg
C stats --no-stream --format 'stats {{.MemUsage}} {{.PIDs}}' $id
`, "C ", cli+" ")
}

// dockerCLIFork runs a container of 5 pids that forks 8 times: its
// shell says it cannot fork.
func dockerCLIFork(cli string) string {
	return cli + ` run --rm --network none --pids-limit 5 busybox sh -c 'for i in 1 2 3 4 5 6 7 8; do sleep 30 & done' 2>&1 | grep -m1 -o "can't fork"
`
}
