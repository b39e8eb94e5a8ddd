package k8s

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sleeper is a busybox pod that sleeps, with limits; extra is added to
// its spec.
func sleeper(name, extra string) string {
	return podSpec{name: name, extra: extra}.yaml()
}

// inPod runs a command in the pod's container.
func inPod(t *testing.T, c *Cluster, pod string, args ...string) string {
	t.Helper()
	out, err := c.Kubectl(append([]string{"exec", pod, "--"}, args...)...)
	if err != nil {
		t.Fatalf("kubectl exec %s %q: %v\n%s", pod, args, err, out)
	}
	return out
}

// hostSysctls reads the sysctls the kubelet would write.
func hostSysctls(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, s := range kubeletSysctls {
		b, err := os.ReadFile("/proc/sys/" + s)
		if err != nil {
			t.Fatal(err)
		}
		m[s] = strings.TrimSpace(string(b))
	}
	return m
}

// checkGone checks, once the cluster is torn down, that it left no
// cgroup, directory or mount on the host.
func checkGone(t *testing.T, c **Cluster) {
	t.Cleanup(func() {
		if *c == nil {
			return
		}
		hierarchies, err := cgroupHierarchies()
		if err != nil {
			t.Error(err)
		}
		for _, h := range hierarchies {
			if p := filepath.Join(h, (*c).CgroupRoot); exists(p) {
				t.Errorf("after teardown, %s is left", p)
			}
		}
		if exists((*c).dir) {
			t.Errorf("after teardown, %s is left", (*c).dir)
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mounts), (*c).dir) {
			t.Errorf("after teardown, the host's mount table names %s", (*c).dir)
		}
	})
}

// TestNodeRunsPods: on containerd 2, a pod with limits runs in a
// cgroup below CgroupRoot whose memory limit is the pod's, gets a
// service-account token the API server accepts, with the cluster's CA;
// a hostUsers: false pod runs in a user namespace of its own; both
// outlive restarts of the kubelet and of containerd; the host's sysctls
// are the host's throughout.
func TestNodeRunsPods(t *testing.T) {
	before := hostSysctls(t)
	var c *Cluster
	checkGone(t, &c)
	began := time.Now()
	c = Start(t, Options{})
	t.Logf("Start took %.1fs; the node's InternalIP is %s", time.Since(began).Seconds(), c.NodeIP(t))

	c.Apply(t, sleeper("limits", ""))
	c.WaitPod(t, "default", "limits", 2*time.Minute)
	t.Logf("first pod Ready %.1fs after Start", time.Since(began).Seconds())

	cgroups := inPod(t, c, "limits", "cat", "/proc/self/cgroup")
	t.Logf("/proc/self/cgroup in the pod:\n%s", cgroups)
	memory := ""
	s := bufio.NewScanner(strings.NewReader(cgroups))
	for s.Scan() {
		// 4:memory:/cgfs-test-k8s-1/kubepods/pod<uid>/<container>
		if f := strings.SplitN(s.Text(), ":", 3); len(f) == 3 && f[1] == "memory" {
			memory = f[2]
		}
	}
	if !strings.HasPrefix(memory, c.CgroupRoot+"/kubepods/") {
		t.Fatalf("the pod's memory cgroup is %q, want one below %s/kubepods", memory, c.CgroupRoot)
	}
	limitFile := filepath.Join("/sys/fs/cgroup/memory", memory, "memory.limit_in_bytes")
	if b, err := os.ReadFile(limitFile); err != nil || strings.TrimSpace(string(b)) != "67108864" {
		t.Errorf("%s = %q, %v; want 67108864 (64Mi)", limitFile, b, err)
	}

	// The projected service-account volume: the token is one the API
	// server accepts, the CA is the cluster's.
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
	if ca := inPod(t, c, "limits", "cat", sa+"ca.crt"); ca != string(c.CACert()) {
		t.Errorf("the pod's ca.crt is not the cluster's CA:\n%s", ca)
	}
	token := strings.TrimSpace(inPod(t, c, "limits", "cat", sa+"token"))
	review := fmt.Sprintf(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":%q}}`, token)
	cmd := c.KubectlCmd("create", "-o", "json", "-f", "-")
	cmd.Stdin = strings.NewReader(review)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	var tr struct {
		Status struct {
			Authenticated bool
			User          struct{ Username string }
		}
	}
	if err := json.Unmarshal(out, &tr); err != nil {
		t.Fatal(err)
	}
	if want := "system:serviceaccount:default:default"; !tr.Status.Authenticated || tr.Status.User.Username != want {
		t.Errorf("the pod's token reviews as %+v, want authenticated as %s", tr.Status, want)
	}

	// A pod in a user namespace of its own.
	c.Apply(t, sleeper("own-users", "  hostUsers: false\n"))
	c.WaitPod(t, "default", "own-users", 2*time.Minute)
	uidMap := inPod(t, c, "own-users", "cat", "/proc/self/uid_map")
	t.Logf("the hostUsers: false pod's uid_map: %s", strings.TrimSpace(uidMap))
	if f := strings.Fields(uidMap); len(f) != 3 || f[0] != "0" || f[1] == "0" {
		t.Errorf("the hostUsers: false pod's uid_map is %q, want 0 mapped to a host uid other than 0", uidMap)
	}

	// A DaemonSet-like pod: hostPID sees the node's pid 1, whose mount
	// namespace is the node's; a hostPath volume is the test's directory.
	c.Apply(t, sleeper("host", `  hostPID: true
  hostNetwork: true
  volumes:
    - {name: conf, hostPath: {path: /etc/containerd/conf.d}}
`)+`      securityContext: {privileged: true}
      volumeMounts:
        - {name: conf, mountPath: /conf.d}
`)
	c.WaitPod(t, "default", "host", 2*time.Minute)
	if comm := inPod(t, c, "host", "cat", "/proc/1/comm"); comm != "nodeinit\n" {
		t.Errorf("a hostPID pod's pid 1 is %q, want the node's nodeinit", comm)
	}
	inPod(t, c, "host", "sh", "-c", "echo '# from a pod' > /conf.d/pod.toml")
	if b, err := os.ReadFile(c.HostPath("/etc/containerd/conf.d/pod.toml")); err != nil || string(b) != "# from a pod\n" {
		t.Errorf("what the pod wrote in its hostPath volume: %q %v", b, err)
	}
	sock := inPod(t, c, "host", "nsenter", "-t", "1", "-m", "--", "sh", "-c", "test -S /var/run/nri/nri.sock && test -S /run/containerd/containerd.sock && echo sockets")
	if sock != "sockets\n" {
		t.Errorf("nsenter -t 1 -m from a hostPID pod does not see containerd's sockets: %q", sock)
	}

	c.RestartKubelet(t)
	c.RestartContainerd(t)
	for _, pod := range []string{"limits", "own-users", "host"} {
		if out := inPod(t, c, pod, "echo", "still here"); out != "still here\n" {
			t.Errorf("after the restarts, %s says %q", pod, out)
		}
		restarts, err := c.Kubectl("get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
		if err != nil || restarts != "0" {
			t.Errorf("after the restarts, %s's restartCount is %q (%v), want 0", pod, restarts, err)
		}
	}
	if after := hostSysctls(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the host's sysctls changed: %v, were %v", after, before)
	}
	// What the kubelet wrote went to the test's file in its namespace.
	if b, err := os.ReadFile(filepath.Join(c.dir, "sysctl", "vm.overcommit_memory")); err != nil || string(b) != "1" {
		t.Errorf("the kubelet's vm/overcommit_memory: %q %v, want the 1 it writes", b, err)
	}
}

// TestNodeOnContainerd16: Debian's containerd 1.6 and runc 1.1.5 run a
// pod too.
func TestNodeOnContainerd16(t *testing.T) {
	var c *Cluster
	checkGone(t, &c)
	c = Start(t, Options{Containerd: "1.6"})
	c.Apply(t, sleeper("plain", ""))
	c.WaitPod(t, "default", "plain", 2*time.Minute)
	if out := inPod(t, c, "plain", "echo", "hello"); out != "hello\n" {
		t.Errorf("kubectl exec said %q", out)
	}
}

// TestNodeLayout: every node directory is the test's own on the host;
// one the host lacks gets an overlay over its deepest existing ancestor,
// never over /; what the node creates elsewhere under such an ancestor
// is found in the overlay's upper directory.
func TestNodeLayout(t *testing.T) {
	root := t.TempDir()
	l, err := planNode(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range nodeDirs {
		if got := l.hostPath(d + "/x"); !strings.HasPrefix(got, filepath.Join(root, "node")+"/") {
			t.Errorf("hostPath(%q) = %q, want a path below %s/node", d+"/x", got, root)
		}
		if target := canonical(d); !exists(target) {
			if a := existingAncestor(target); l.overlays[a] == "" || a == "/" {
				t.Errorf("%s is missing on the host and %s has no overlay", target, a)
			}
		}
	}
	if got, want := l.hostPath("/var/run/nri/nri.sock"), l.hostPath("/run/nri/nri.sock"); got != want {
		t.Errorf("hostPath(/var/run/nri/nri.sock) = %q, hostPath(/run/nri/nri.sock) = %q", got, want)
	}
	for a, upper := range l.overlays {
		p := filepath.Join(a, "cgfs-test-only-in-the-node")
		if got := l.hostPath(p); got != p {
			t.Errorf("hostPath(%q) = %q before the node made it", p, got)
		}
		if err := os.WriteFile(filepath.Join(upper, filepath.Base(p)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if got, want := l.hostPath(p), filepath.Join(upper, filepath.Base(p)); got != want {
			t.Errorf("hostPath(%q) = %q, want %q", p, got, want)
		}
	}
	// Nothing the node mounts may reach the host's mount table.
	if m := l.mounts[0]; m.Target != "/" || m.Flags != syscall.MS_REC|syscall.MS_PRIVATE {
		t.Errorf("the node's first mount is %+v, want / made private, recursively", m)
	}
}
