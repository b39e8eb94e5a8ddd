package k8s

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cgfsImage is the DaemonSet's image (deploy/kubernetes/cgfs.yaml),
// built here from this tree and imported: nothing is pulled.
const cgfsImage = "ghcr.io/cgfs/cgfs:dev"

// deployCgfs builds cgfs (static, as the image's Dockerfile says),
// imports its image and applies deploy/kubernetes/cgfs.yaml as a user
// would, with two changes a test cluster needs: containerd's
// configuration version for containerd 1.6 (the line the manifest says
// to change), the API server's address for the agent, which has no
// kube-proxy here to reach the service's ClusterIP, and the metrics'
// address: the node's InternalIP is this machine's own, where the test
// serves nothing. It waits until the agent labels the node.
func deployCgfs(t *testing.T, c *Cluster, configVersion int) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cgfs")
	build := exec.Command("go", "build", "-o", bin, "./cmd/cgfs")
	build.Dir = "../.."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building cgfs: %v\n%s", err, out)
	}
	c.ImportImage(t, cgfsImage, map[string]string{"/cgfs": bin}, []string{"/cgfs"})
	manifest, err := os.ReadFile("../../deploy/kubernetes/cgfs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := string(manifest)
	m = mustReplace(t, m, `"--containerd-config", "3"`, fmt.Sprintf(`"--containerd-config", "%d"`, configVersion))
	m = mustReplace(t, m, "              valueFrom: {fieldRef: {fieldPath: status.hostIP}}\n",
		"              value: \"127.0.0.1\"\n"+
			"            - {name: KUBERNETES_SERVICE_HOST, value: \"127.0.0.1\"}\n"+
			fmt.Sprintf("            - {name: KUBERNETES_SERVICE_PORT, value: \"%d\"}\n", c.APIServerPort()))
	c.Apply(t, m)
	waitFor(t, "the cgfs agent to label the node cgfs.dev/ready=true", 3*time.Minute, func() bool {
		out, _ := c.Kubectl("get", "nodes", "-l", "cgfs.dev/ready=true", "-o", "name")
		return strings.Contains(out, "node/")
	}, func() string { return c.describe("cgfs-system", "") })
}

func mustReplace(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("deploy/kubernetes/cgfs.yaml no longer has %q", old)
	}
	return strings.Replace(s, old, new, 1)
}

// describe is what a failed wait shows: the pods of namespace (or one)
// described, and the agent's and daemon's logs.
func (c *Cluster) describe(namespace, pod string) string {
	args := []string{"-n", namespace, "describe", "pods"}
	if pod != "" {
		args = append(args, pod)
	}
	out, _ := c.Kubectl(args...)
	agent, _ := c.Kubectl("-n", "cgfs-system", "logs", "ds/cgfs", "-c", "agent", "--tail", "30")
	nri, _ := c.Kubectl("-n", "cgfs-system", "logs", "ds/cgfs", "-c", "nri", "--tail", "30")
	daemon, _ := os.ReadFile(c.HostPath("/var/log/cgfs/daemon.log"))
	return fmt.Sprintf("%s\nagent:\n%s\nnri:\n%s\ndaemon log (tail):\n%s", out, agent, nri, tail(string(daemon), 40))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitFor polls cond until it holds, or fails the test with what why
// says.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for wait := 50 * time.Millisecond; !cond(); wait = min(2*wait, time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s:\n%s", within, what, why())
		}
		time.Sleep(wait)
	}
}

// podSpec is a busybox pod that sleeps, with limits, and what opts it
// in: annotations, a RuntimeClass, its own user namespace.
type podSpec struct {
	name         string
	annotations  map[string]string
	runtimeClass string
	ownUsers     bool   // hostUsers: false
	extra        string // more lines of the pod's spec, as they are
}

func (p podSpec) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: default\n", p.name)
	if len(p.annotations) > 0 {
		b.WriteString("  annotations:\n")
		for k, v := range p.annotations {
			fmt.Fprintf(&b, "    %s: %s\n", k, strconv.Quote(v))
		}
	}
	b.WriteString("spec:\n  terminationGracePeriodSeconds: 1\n")
	if p.runtimeClass != "" {
		fmt.Fprintf(&b, "  runtimeClassName: %s\n", p.runtimeClass)
	}
	if p.ownUsers {
		b.WriteString("  hostUsers: false\n")
	}
	b.WriteString(p.extra)
	fmt.Fprintf(&b, `  containers:
    - name: app
      image: %s
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
      resources:
        limits: {memory: 64Mi, cpu: 100m}
`, BusyboxImage)
	return b.String()
}

// exec runs script in the pod's container (busybox sh).
func (c *Cluster) exec(t *testing.T, pod, script string) string {
	t.Helper()
	out, err := c.Kubectl("exec", pod, "--", "sh", "-c", script)
	if err != nil {
		t.Fatalf("kubectl exec %s: %v\n%s", pod, err, out)
	}
	return out
}

// viewScript is what a container does with its view on this hybrid host
// (cgroup v1 controllers, and the unified hierarchy at
// /sys/fs/cgroup/unified): every line it prints is checked.
const viewScript = `
cg=/sys/fs/cgroup
sub=sub$$
echo "mount $(grep fuse.cgfs /proc/self/mountinfo | cut -d' ' -f5)"
echo "statfs $(stat -f -c %t $cg/unified)"
mkdir $cg/memory/$sub && echo "mkdir ok"
echo 33554432 > $cg/memory/$sub/memory.limit_in_bytes && echo "sub limit $(cat $cg/memory/$sub/memory.limit_in_bytes)"
echo 1073741824 > $cg/memory/memory.limit_in_bytes 2>/dev/null && echo "raised own" || echo "own limit kept $(cat $cg/memory/memory.limit_in_bytes)"
mkdir $cg/freezer/$sub
sleep 1000 &
echo $! > $cg/freezer/$sub/cgroup.procs
echo FROZEN > $cg/freezer/$sub/freezer.state
echo "freezer $(cat $cg/freezer/$sub/freezer.state)"
echo "frozen pid $(cat $cg/freezer/$sub/cgroup.procs) of $!"
echo THAWED > $cg/freezer/$sub/freezer.state
kill $!; wait $! 2>/dev/null
rmdir $cg/freezer/$sub
echo "root pids $(cat $cg/pids/cgroup.procs | tr '\n' ' ')"
echo "host memory $(grep ':memory:' /proc/self/cgroup | cut -d: -f3)"
echo "sub $sub"
`

// checkView runs viewScript in pod and checks what it says against the
// host: the sub-cgroup and its limit are real, the pod's own limit is
// the pod's, pids are the pod's.
func (c *Cluster) checkView(t *testing.T, pod string) {
	t.Helper()
	out := c.exec(t, pod, viewScript)
	t.Logf("%s's view:\n%s", pod, out)
	said := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, " ")
		if k == "mkdir" || k == "own" || (k == "sub" && strings.HasPrefix(v, "limit")) || k == "root" || k == "host" || k == "frozen" {
			k2, v2, _ := strings.Cut(v, " ")
			k, v = k+" "+k2, v2
		}
		said[k] = v
	}
	for k, want := range map[string]string{
		"mount":     "/sys/fs/cgroup",
		"statfs":    "63677270", // cgroup2's magic, from the seccomp agent
		"mkdir ok":  "",
		"sub limit": "33554432",
		"own limit": "kept 67108864", // 64Mi, the pod's limit: EPERM to raise it
		"freezer":   "FROZEN",
	} {
		if got, ok := said[k]; !ok || got != want {
			t.Errorf("%s: %q said %q, want %q", pod, k, got, want)
		}
	}
	// The pod's own tasks, by busybox cat (sendfile): its init is 1.
	if pids := strings.Fields(said["root pids"]); len(pids) < 2 || pids[0] != "1" {
		t.Errorf("%s: its root cgroup.procs reads %q, want its init (1) and the exec'd shell, in its own pid namespace", pod, said["root pids"])
	}
	if pid, of, _ := strings.Cut(said["frozen pid"], " of "); pid == "" || pid != of {
		t.Errorf("%s: the frozen task is %q, want its pid in the pod's namespace (%s)", pod, pid, of)
	}
	hostDir := said["host memory"]
	if hostDir == "" || hostDir == "/" {
		t.Fatalf("%s: its memory cgroup on the host is %q", pod, hostDir)
	}
	sub := filepath.Join("/sys/fs/cgroup/memory", hostDir, said["sub"])
	if b, err := os.ReadFile(filepath.Join(sub, "memory.limit_in_bytes")); err != nil || strings.TrimSpace(string(b)) != "33554432" {
		t.Errorf("%s: on the host, %s/memory.limit_in_bytes: %q %v", pod, sub, b, err)
	}
	c.exec(t, pod, "rmdir /sys/fs/cgroup/memory/"+said["sub"])
	if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", hostDir, "memory.limit_in_bytes")); err != nil || strings.TrimSpace(string(b)) != "67108864" {
		t.Errorf("%s: on the host, its own limit is %q %v", pod, b, err)
	}
}

// waitExec waits until kubectl exec reaches pod again: a kubelet that
// restarted learns its pods again after it says it is ready.
func (c *Cluster) waitExec(t *testing.T, pod string) {
	t.Helper()
	waitFor(t, "kubectl exec to reach "+pod, time.Minute, func() bool {
		_, err := c.Kubectl("exec", pod, "--", "true")
		return err == nil
	}, func() string { return c.describe("default", pod) })
}

// checkNoView: a pod that did not opt in has the runtime's
// /sys/fs/cgroup, untouched.
func (c *Cluster) checkNoView(t *testing.T, pod string) {
	t.Helper()
	out := c.exec(t, pod, "grep -c fuse.cgfs /proc/self/mountinfo; mkdir /sys/fs/cgroup/memory/sub 2>&1 || echo refused")
	if !strings.HasPrefix(out, "0\n") || !strings.Contains(out, "refused") {
		t.Errorf("a pod that did not opt in: %q, want no cgfs mount and its cgroupfs read-only", out)
	}
}

// TestDaemonSetAndNRIGiveOptedInPodsAView is the Kubernetes lane on
// containerd 2.x: the DaemonSet alone (no containerd configuration)
// serves pods that opt in by annotation through the NRI plugin, a
// hostUsers: false pod included; a plain pod is untouched; the metrics
// name each pod's container; a rollout of the DaemonSet under a pod
// busy with its view fails none of its operations; kubelet and
// containerd restarts and a crash of the daemon break no view; once
// containerd has read the drop-in the DaemonSet installed, the
// RuntimeClass serves pods too and a pod that requires the plugin is
// refused while it is not registered.
func TestDaemonSetAndNRIGiveOptedInPodsAView(t *testing.T) {
	c := Start(t, Options{Containerd: "2"})
	deployCgfs(t, c, 3)
	c.checkAgentConfined(t)

	optIn := map[string]string{"view.cgfs.dev": "true"}
	for _, p := range []podSpec{
		{name: "viewed", annotations: optIn},
		{name: "own-users", annotations: optIn, ownUsers: true},
		{name: "plain"},
	} {
		c.Apply(t, p.yaml())
	}
	for _, p := range []string{"viewed", "own-users", "plain"} {
		c.WaitPod(t, "default", p, 2*time.Minute)
	}
	c.checkView(t, "viewed")
	c.checkView(t, "own-users")
	if m := c.exec(t, "own-users", "cat /proc/self/uid_map"); strings.Fields(m)[1] == "0" {
		t.Errorf("the hostUsers: false pod's uid map is %q: its root is host root", m)
	}
	c.checkNoView(t, "plain")

	metrics := scrape(t, "http://127.0.0.1:9473/metrics")
	for _, p := range []string{"viewed", "own-users"} {
		if want := `cgfs_view_up{container="default/` + p + `/app"} 1`; !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, `container="default/plain/app"`) {
		t.Error("/metrics names the pod that did not opt in")
	}

	// A rollout under a pod that reads and writes its view all along.
	busy := c.startBusy(t, "viewed")
	if out, err := c.Kubectl("-n", "cgfs-system", "rollout", "restart", "ds/cgfs"); err != nil {
		t.Fatalf("rollout restart: %v\n%s", err, out)
	}
	if out, err := c.Kubectl("-n", "cgfs-system", "rollout", "status", "ds/cgfs", "--timeout", "3m"); err != nil {
		t.Fatalf("rollout status: %v\n%s\n%s", err, out, c.describe("cgfs-system", ""))
	}
	ops, failed := busy.stop(t)
	t.Logf("during the rollout: %d operations, %d failed", ops, failed)
	if failed != 0 || ops < 100 {
		t.Errorf("during the rollout: %d operations, %d failed; want 0 failed of at least 100", ops, failed)
	}
	daemonLog, _ := os.ReadFile(c.HostPath("/var/log/cgfs/daemon.log"))
	if !strings.Contains(string(daemonLog), "took over") {
		t.Errorf("the rollout did not hand the views over to a new daemon:\n%s", tail(string(daemonLog), 30))
	}

	c.RestartKubelet(t)
	c.waitExec(t, "viewed")
	c.checkView(t, "viewed")
	c.RestartContainerd(t) // which now reads the drop-in: the handler "cgfs", NRI's validator
	c.waitExec(t, "own-users")
	c.checkView(t, "own-users")

	// A crash of the daemon: its keeper starts the next one.
	if err := syscall.Kill(c.daemonPid(t), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.checkView(t, "viewed")

	// The RuntimeClass, and a pod created after containerd restarted
	// (the plugin registered again).
	c.Apply(t, podSpec{name: "runtime-class", runtimeClass: "cgfs"}.yaml())
	c.Apply(t, podSpec{name: "after-restart", annotations: optIn}.yaml())
	c.WaitPod(t, "default", "runtime-class", 2*time.Minute)
	c.WaitPod(t, "default", "after-restart", 2*time.Minute)
	c.checkView(t, "runtime-class")
	c.checkView(t, "after-restart")

	// Without the plugin, a pod that requires it is refused, and runs
	// with its view once the plugin is back.
	c.patchNRI(t, false)
	c.Apply(t, podSpec{name: "requires", annotations: map[string]string{"view.cgfs.dev": "true",
		"required-plugins.noderesource.dev": `["cgfs"]`}}.yaml())
	waitFor(t, "the pod that requires the plugin to be refused", 2*time.Minute, func() bool {
		out, _ := c.Kubectl("get", "events", "--field-selector", "involvedObject.name=requires", "-o", "jsonpath={.items[*].message}")
		return strings.Contains(out, `required plugin "cgfs"`)
	}, func() string { return c.describe("default", "requires") })
	refusal, _ := c.Kubectl("get", "events", "--field-selector", "involvedObject.name=requires,reason=Failed", "-o", "jsonpath={.items[0].message}")
	t.Logf("without the plugin, the pod that requires it: %s", refusal)
	if out, _ := c.Kubectl("get", "pod", "requires", "-o", "jsonpath={.status.containerStatuses[0].started}"); out == "true" {
		t.Fatal("a pod that requires the plugin started without it")
	}
	c.patchNRI(t, true)
	c.WaitPod(t, "default", "requires", 3*time.Minute)
	c.checkView(t, "requires")
}

// TestRuntimeClassOnContainerd16: on Debian's containerd 1.6 (no NRI),
// the DaemonSet's drop-in (configuration version 2) gives containerd the
// handler "cgfs" once it restarts, and runtimeClassName: cgfs serves
// the pod.
func TestRuntimeClassOnContainerd16(t *testing.T) {
	c := Start(t, Options{Containerd: "1.6"})
	deployCgfs(t, c, 2)
	// What the manifest asks of a containerd 1.x admin: the snippet the
	// DaemonSet installed, merged into config.toml, and a restart.
	snippet, err := os.ReadFile(c.HostPath("/opt/cgfs/containerd-1.x.toml"))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.OpenFile(c.HostPath("/etc/containerd/config.toml"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conf.Write(append([]byte("\n"), snippet...))
	if cerr := conf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	c.RestartContainerd(t)
	c.Apply(t, podSpec{name: "runtime-class", runtimeClass: "cgfs"}.yaml())
	c.Apply(t, podSpec{name: "plain"}.yaml())
	c.WaitPod(t, "default", "runtime-class", 2*time.Minute)
	c.WaitPod(t, "default", "plain", 2*time.Minute)
	c.checkView(t, "runtime-class")
	c.checkNoView(t, "plain")
}

// checkAgentConfined: the agent's service account, with a token bound
// to the agent's pod as the pod's own is, may set its node's
// cgfs.dev/ready and nothing else of it (the manifest's
// ValidatingAdmissionPolicy over RBAC's patch on nodes).
func (c *Cluster) checkAgentConfined(t *testing.T) {
	t.Helper()
	pod, err := c.Kubectl("-n", "cgfs-system", "get", "pods", "-o", "jsonpath={.items[0].metadata.name} {.items[0].metadata.uid}")
	if err != nil {
		t.Fatal(err)
	}
	name, uid, _ := strings.Cut(pod, " ")
	token, err := c.Kubectl("-n", "cgfs-system", "create", "token", "cgfs", "--bound-object-kind", "Pod", "--bound-object-name", name, "--bound-object-uid", uid)
	if err != nil {
		t.Fatalf("a token of the agent's pod: %v", err)
	}
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, c.CACert(), 0o644); err != nil {
		t.Fatal(err)
	}
	as := func(args ...string) (string, error) {
		// The later --kubeconfig wins: no admin certificate goes along.
		cmd := c.KubectlCmd(append([]string{"--kubeconfig", "/dev/null", "--server", fmt.Sprintf("https://127.0.0.1:%d", c.APIServerPort()),
			"--certificate-authority", ca, "--token", strings.TrimSpace(token)}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := as("label", "node", NodeName, "cgfs.dev/ready=true", "--overwrite"); err != nil {
		t.Errorf("the agent cannot set its node's label: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"label", "node", NodeName, "stolen=1"},
		{"taint", "node", NodeName, "evil=1:NoSchedule"},
		{"cordon", NodeName},
		{"annotate", "node", NodeName, "note=1"},
	} {
		// (kubectl cordon exits 0 after "error: unable to cordon")
		out, err := as(args...)
		if !strings.Contains(out, "denied request: the cgfs agent may change only") {
			t.Errorf("the agent's account: kubectl %s: %v\n%s; want the policy's refusal", strings.Join(args, " "), err, out)
		}
	}
	t.Logf("the agent's account may set cgfs.dev/ready and is refused the rest")
}

// patchNRI takes the DaemonSet's NRI container away (on=false) or puts
// it back, and waits for the rollout.
func (c *Cluster) patchNRI(t *testing.T, on bool) {
	t.Helper()
	var patch string
	if on {
		patch = `[{"op":"add","path":"/spec/template/spec/containers/-","value":{"name":"nri","image":"` + cgfsImage + `","imagePullPolicy":"IfNotPresent","args":["nri"],"volumeMounts":[{"name":"nri","mountPath":"/var/run/nri"}]}}]`
	} else {
		patch = `[{"op":"remove","path":"/spec/template/spec/containers/1"}]`
	}
	if out, err := c.Kubectl("-n", "cgfs-system", "patch", "ds/cgfs", "--type", "json", "-p", patch); err != nil {
		t.Fatalf("patching the DaemonSet: %v\n%s", err, out)
	}
	if out, err := c.Kubectl("-n", "cgfs-system", "rollout", "status", "ds/cgfs", "--timeout", "3m"); err != nil {
		t.Fatalf("rollout status: %v\n%s", err, out)
	}
	if !on {
		// The old pod's plugin is gone once no pod runs it.
		waitFor(t, "the old agent pod to go", 2*time.Minute, func() bool {
			out, _ := c.Kubectl("-n", "cgfs-system", "get", "pods", "-o", "jsonpath={.items[*].spec.containers[*].name}")
			return !strings.Contains(out, "nri")
		}, func() string { return c.describe("cgfs-system", "") })
	}
}

// busy is a loop in a pod that reads and writes its view until stopped.
type busy struct {
	cmd *exec.Cmd
	out *bufio.Scanner
	in  io.WriteCloser
}

// startBusy starts, in pod, a loop that makes and removes a sub-cgroup
// and reads a file of it, counting operations and failures, until its
// input ends.
func (c *Cluster) startBusy(t *testing.T, pod string) *busy {
	t.Helper()
	script := `cg=/sys/fs/cgroup/memory; ops=0; failed=0
exec 3<&0
(cat <&3 > /dev/null; touch /tmp/stop) &
rm -f /tmp/stop; echo started
while [ ! -e /tmp/stop ]; do
  mkdir $cg/busy 2>/dev/null || failed=$((failed+1))
  cat $cg/busy/memory.usage_in_bytes > /dev/null 2>&1 || failed=$((failed+1))
  rmdir $cg/busy 2>/dev/null || failed=$((failed+1))
  ops=$((ops+3))
done
echo "ops $ops failed $failed"`
	cmd := c.KubectlCmd("exec", "-i", pod, "--", "sh", "-c", script)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	b := &busy{cmd: cmd, out: bufio.NewScanner(stdout), in: in}
	if !b.out.Scan() || b.out.Text() != "started" {
		t.Fatalf("the busy loop did not start: %q", b.out.Text())
	}
	return b
}

var opsLine = regexp.MustCompile(`^ops (\d+) failed (\d+)$`)

func (b *busy) stop(t *testing.T) (ops, failed int) {
	t.Helper()
	b.in.Close()
	for b.out.Scan() {
		if m := opsLine.FindStringSubmatch(b.out.Text()); m != nil {
			ops, _ = strconv.Atoi(m[1])
			failed, _ = strconv.Atoi(m[2])
			return ops, failed
		}
	}
	t.Fatal("the busy loop ended without its count")
	return 0, 0
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// daemonPid is the pid (on the host) of the cgfs daemon the keeper runs
// in c's node: `cgfs daemon` without --keep, in the node's pid
// namespace.
func (c *Cluster) daemonPid(t *testing.T) int {
	t.Helper()
	nodeNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", c.InitPID()))
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir("/proc")
	var found []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) < 2 || args[0] != "/opt/cgfs/bin/cgfs" || args[1] != "daemon" || strings.Contains(string(cmdline), "--keep") {
			continue
		}
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); ns == nodeNS {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("the node's cgfs daemons: %v, want one", found)
	}
	return found[0]
}
