package k8s

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/elf"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

//go:embed testdata/cgfs-veth testdata/pause/main.go testdata/nodeinit/main.go
var testdata embed.FS

// NodeName is the node's name. The API server reaches a kubelet by the
// node's hostname, and "localhost" resolves to 127.0.0.1, where the
// kubelet listens (the kubelet refuses a loopback --node-ip).
const NodeName = "localhost"

// serviceCIDR is --service-cluster-ip-range; its first address is the
// kubernetes service's ClusterIP, which nothing routes here (no
// kube-proxy).
const (
	serviceCIDR = "10.96.0.0/16"
	serviceIP   = "10.96.0.1"
)

const (
	startTimeout    = 3 * time.Minute // for each wait of Start's
	componentsGrace = 5 * time.Second // SIGTERM to SIGKILL, on a restart
	teardownGrace   = 2 * time.Second // and at teardown
)

// Options choose the node's container runtime.
type Options struct {
	// Containerd is "2" (the default: containerd 2.4.2 and runc 1.4.4
	// from .ci/k8s-deps's cache, configuration version 3, NRI on) or
	// "1.6" (Debian's containerd 1.6 and runc 1.1.5, configuration
	// version 2).
	Containerd string
}

// Cluster is a running one-node cluster. Its methods may be called from
// the test's goroutine only, except Kubectl, KubectlCmd, InNode,
// HostPath, Logs and APIServerPort.
type Cluster struct {
	// BusyboxImage is the package's BusyboxImage, imported.
	BusyboxImage string
	// CgroupRoot is the kubelet's cgroupRoot, /cgfs-test-k8s-<random>:
	// every cgroup of the node is below it, in every hierarchy.
	CgroupRoot string
	// Kubeconfig is an admin's (group system:masters) kubeconfig.
	Kubeconfig string

	opts   Options
	dir    string // everything of the cluster's on the host
	bin    binaries
	env    []string // the node's processes'
	node   layout
	pki    *pki
	ports  ports
	api    *http.Client // the API server's, as the admin
	cgroup []string     // CgroupRoot in each hierarchy

	init      *exec.Cmd
	initStdin *os.File // its end is nodeinit's standard input: closing it stops the node
	initDone  chan struct{}

	mu    sync.Mutex
	procs map[string]*proc // by component
	args  map[string][]string
}

// ports are the TCP ports the cluster listens on, all on 127.0.0.1.
type ports struct {
	apiserver, etcd, etcdPeer, kubelet, kubeletHealthz, controllerManager, scheduler int
}

// binaries are the programs a node runs.
type binaries struct {
	kubelet, kubectl, apiserver, controllerManager, scheduler string
	containerd, ctr, runc, shimDir                            string
	etcd, nsenter, unshare, busybox, loopback, goTool         string
}

// cacheDir is where .ci/k8s-deps puts what it builds.
func cacheDir() string {
	if d := os.Getenv("CGFS_K8S_CACHE"); d != "" {
		return d
	}
	return "/var/cache/cgfs-k8s"
}

// findBinaries locates every program the node needs and lists those
// missing.
func findBinaries(o Options) (binaries, []string) {
	cache := cacheDir()
	b := binaries{
		kubelet:           filepath.Join(cache, "bin", "kubelet"),
		kubectl:           filepath.Join(cache, "bin", "kubectl"),
		apiserver:         filepath.Join(cache, "bin", "kube-apiserver"),
		controllerManager: filepath.Join(cache, "bin", "kube-controller-manager"),
		scheduler:         filepath.Join(cache, "bin", "kube-scheduler"),
		loopback:          "/usr/lib/cni/loopback",
	}
	if o.Containerd == "1.6" {
		b.containerd, b.ctr, b.runc = "/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc"
		b.shimDir = "/usr/bin"
	} else {
		b.shimDir = filepath.Join(cache, "containerd2")
		b.containerd, b.ctr = filepath.Join(b.shimDir, "containerd"), filepath.Join(b.shimDir, "ctr")
		b.runc = filepath.Join(cache, "runc", "runc")
	}
	var missing []string
	need := []string{b.kubelet, b.kubectl, b.apiserver, b.controllerManager, b.scheduler,
		b.containerd, b.ctr, b.runc, filepath.Join(b.shimDir, "containerd-shim-runc-v2"), b.loopback}
	for _, p := range need {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	for _, tool := range []struct {
		dst  *string
		name string
	}{{&b.etcd, "etcd"}, {&b.nsenter, "nsenter"}, {&b.unshare, "unshare"}, {&b.busybox, "busybox"},
		{&b.goTool, "go"}, {new(string), "ip"}, {new(string), "flock"}, {new(string), "mount"}} {
		p, err := exec.LookPath(tool.name)
		if err != nil {
			missing = append(missing, tool.name)
			continue
		}
		*tool.dst = p
	}
	if b.busybox != "" && !isStatic(b.busybox) {
		missing = append(missing, "a static busybox (busybox-static), not "+b.busybox)
	}
	return b, missing
}

// isStatic says whether an ELF executable has no program interpreter.
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// skip skips with a reason, or fails under CI=true: CI must never pass
// by skipping (the rule of test/'s requireRoot).
func skip(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true forbids skipping: %s", reason)
	}
	t.Skip(reason)
}

// Start runs a cluster for the test and tears it down in t.Cleanup,
// whatever happens. It returns once the node is Ready, untainted, and
// the default namespace has its service account. Without root, or
// without the binaries .ci/k8s-deps builds, the test skips (fails under
// CI=true).
func Start(t *testing.T, o Options) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "the Kubernetes lane needs root (namespaces, mounts, cgroups)")
	}
	switch o.Containerd {
	case "":
		o.Containerd = "2"
	case "2", "1.6":
	default:
		t.Fatalf("Options.Containerd %q: want \"2\" or \"1.6\"", o.Containerd)
	}
	bin, missing := findBinaries(o)
	if len(missing) > 0 {
		skip(t, fmt.Sprintf("the Kubernetes lane lacks %s: run .ci/k8s-deps", strings.Join(missing, ", ")))
	}
	began := time.Now()
	sweepStale(t)
	dir, err := os.MkdirTemp("", "cgfs-test-k8s-")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeOwner(filepath.Join(dir, "owner"), os.Getpid()); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{
		BusyboxImage: BusyboxImage,
		CgroupRoot:   "/" + filepath.Base(dir),
		opts:         o,
		dir:          dir,
		bin:          bin,
		procs:        map[string]*proc{},
		args:         map[string][]string{},
	}
	t.Cleanup(func() { c.teardown(t) })
	if err := c.start(t); err != nil {
		t.Fatalf("starting the cluster (containerd %s): %v\n%s", o.Containerd, err, c.logTails())
	}
	t.Logf("cluster up: node %s Ready %.1fs after Start (containerd %s, cgroupRoot %s, API server 127.0.0.1:%d)",
		NodeName, time.Since(began).Seconds(), o.Containerd, c.CgroupRoot, c.ports.apiserver)
	return c
}

// start builds what the node runs, starts its pid 1, then the
// components, and waits for the node.
func (c *Cluster) start(t *testing.T) error {
	t0 := time.Now()
	steps := []string{}
	step := func(name string) {
		steps = append(steps, fmt.Sprintf("%s %.1fs", name, time.Since(t0).Seconds()))
	}
	defer func() { t.Logf("start: %s", strings.Join(steps, ", ")) }()
	for _, d := range []string{"logs", "home", "tmp", "bin", "conf"} {
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
			return err
		}
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if c.opts.Containerd == "2" {
		path = c.bin.shimDir + ":" + path // containerd finds its shim on $PATH
	}
	c.env = []string{"PATH=" + path, "HOME=" + filepath.Join(c.dir, "home"), "TMPDIR=" + filepath.Join(c.dir, "tmp")}

	// What runs beside the start is waited for whatever happens: nothing
	// may still write in the cluster's directory when teardown removes it.
	var bg sync.WaitGroup
	defer bg.Wait()
	built := make(chan error, 1)
	bg.Go(func() { built <- c.buildPrograms() })
	if err := c.makePKI(); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	var err error
	if c.ports, err = freePorts(); err != nil {
		return err
	}
	if c.node, err = planNode(c.dir); err != nil {
		return fmt.Errorf("the node's directories: %w", err)
	}
	if err := c.writeNodeFiles(); err != nil {
		return err
	}
	if c.cgroup, err = makeCgroupRoot(c.CgroupRoot); err != nil {
		return fmt.Errorf("cgroup root: %w", err)
	}
	if err := <-built; err != nil {
		return err
	}
	step("prepared")
	if err := c.startInit(); err != nil {
		return err
	}
	step("node namespaces")
	for _, name := range []string{"etcd", "containerd", "kube-apiserver"} {
		if err := c.startComponent(name); err != nil {
			return err
		}
	}
	imported := make(chan error, 1)
	bg.Go(func() { imported <- c.importBaseImages() })
	if err := c.waitAPIServer(time.Now().Add(startTimeout)); err != nil {
		return err
	}
	step("API server ready")
	// The controller manager exits if it starts before the API server has
	// made its RBAC roles (/readyz waits for that); the kubelet would be
	// caught in the backoff of its first registration attempts.
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kubelet"} {
		if err := c.startComponent(name); err != nil {
			return err
		}
	}
	if err := <-imported; err != nil {
		return err
	}
	step("images imported")
	deadline := time.Now().Add(startTimeout)
	if err := c.waitNode(deadline, time.Time{}); err != nil {
		return err
	}
	step("node Ready")
	err = poll(deadline, "the default service account", func() (bool, error) {
		_, code, err := c.get("/api/v1/namespaces/default/serviceaccounts/default")
		return code == http.StatusOK, err
	})
	step("service account")
	return err
}

// buildPrograms builds testdata's pause and nodeinit, static.
func (c *Cluster) buildPrograms() error {
	for _, name := range []string{"pause", "nodeinit"} {
		src := filepath.Join(c.dir, "src", name)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		main, err := testdata.ReadFile("testdata/" + name + "/main.go")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(src, "main.go"), main, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module "+name+"\n\ngo 1.22\n"), 0o644); err != nil {
			return err
		}
		cmd := exec.Command(c.bin.goTool, "build", "-trimpath", "-o", filepath.Join(c.dir, "bin", name), ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building testdata/%s: %v\n%s", name, err, out)
		}
	}
	return nil
}

// makePKI makes the CA, the API server's serving certificate, a client
// certificate per user (the admin in system:masters, the kubelet as
// system:node:localhost, the API server to kubelets, the controller
// manager, the scheduler), the service-account keys, and the admin's
// HTTP client.
func (c *Cluster) makePKI() error {
	p, err := newPKI(filepath.Join(c.dir, "pki"))
	if err != nil {
		return err
	}
	c.pki = p
	if _, err := p.issue("apiserver", pkix.Name{CommonName: "kube-apiserver"},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(serviceIP)}); err != nil {
		return err
	}
	clients := []struct {
		name string
		subj pkix.Name
	}{
		{"admin", pkix.Name{CommonName: "cgfs-test-admin", Organization: []string{"system:masters"}}},
		{"kubelet", pkix.Name{CommonName: "system:node:" + NodeName, Organization: []string{"system:nodes"}}},
		{"apiserver-kubelet-client", pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}},
		{"kube-controller-manager", pkix.Name{CommonName: "system:kube-controller-manager"}},
		{"kube-scheduler", pkix.Name{CommonName: "system:kube-scheduler"}},
	}
	for _, cl := range clients {
		if _, err := p.issue(cl.name, cl.subj, nil, nil); err != nil {
			return err
		}
	}
	if _, _, err := p.serviceAccountKeys(); err != nil {
		return err
	}
	admin := certFiles{cert: filepath.Join(p.dir, "admin.crt"), key: filepath.Join(p.dir, "admin.key")}
	pair, err := tls.LoadX509KeyPair(admin.cert, admin.key)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	c.api = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}},
	}
	return nil
}

// writeKubeconfigs writes a kubeconfig per client of the API server,
// once its port is known.
func (c *Cluster) writeKubeconfigs() error {
	server := fmt.Sprintf("https://127.0.0.1:%d", c.ports.apiserver)
	for _, name := range []string{"admin", "kubelet", "kube-controller-manager", "kube-scheduler"} {
		f := certFiles{cert: filepath.Join(c.pki.dir, name+".crt"), key: filepath.Join(c.pki.dir, name+".key")}
		path, err := c.pki.kubeconfig(name, server, f)
		if err != nil {
			return err
		}
		if name == "admin" {
			c.Kubeconfig = path
		}
	}
	return nil
}

// freePorts picks ports on 127.0.0.1 nobody listens on now.
func freePorts() (ports, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var p ports
	for _, dst := range []*int{&p.apiserver, &p.etcd, &p.etcdPeer, &p.kubelet, &p.kubeletHealthz, &p.controllerManager, &p.scheduler} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return p, err
		}
		ls = append(ls, l)
		*dst = l.Addr().(*net.TCPAddr).Port
	}
	return p, nil
}

// startInit starts nodeinit in a new mount and pid namespace and waits
// until it has made the node's mounts.
func (c *Cluster) startInit() error {
	mounts, err := json.Marshal(c.node.mounts)
	if err != nil {
		return err
	}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return err
	}
	defer outR.Close()
	logf, err := os.OpenFile(c.logPath("nodeinit"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(c.dir, "bin", "nodeinit"))
	cmd.Env = append(c.env, "CGFS_NODE_MOUNTS="+string(mounts))
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, outW, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID}
	err = cmd.Start()
	stdinR.Close()
	outW.Close()
	logf.Close()
	if err != nil {
		stdinW.Close()
		return fmt.Errorf("starting the node's pid 1: %w", err)
	}
	c.init, c.initStdin, c.initDone = cmd, stdinW, make(chan struct{})
	if err := writeOwner(filepath.Join(c.dir, "init"), cmd.Process.Pid); err != nil {
		return err
	}
	go func() {
		_ = cmd.Wait()
		close(c.initDone)
	}()
	said := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(outR)
		said <- string(b)
	}()
	select {
	case s := <-said:
		if strings.TrimSpace(s) != "ready" {
			<-c.initDone
			return fmt.Errorf("the node's pid 1 failed (%v): %s", cmd.ProcessState, c.Logs("nodeinit"))
		}
	case <-time.After(30 * time.Second):
		return fmt.Errorf("the node's pid 1 did not get ready in 30s: %s", c.Logs("nodeinit"))
	}
	return nil
}

// proc is a process of the node: nsenter, on the host, forks it into
// the node's namespaces.
type proc struct {
	name string
	cmd  *exec.Cmd // nsenter
	pid  int       // the process nsenter forked: what is signalled
	done chan struct{}
}

// startComponent starts a component in the node, appending to its log.
func (c *Cluster) startComponent(name string) error {
	args := c.componentArgs(name)
	p, err := c.startProc(name, args)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.procs[name] = p
	c.args[name] = args
	c.mu.Unlock()
	return nil
}

func (c *Cluster) startProc(name string, args []string) (*proc, error) {
	logf, err := os.OpenFile(c.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(c.bin.nsenter, append(c.nsenterArgs(), args...)...)
	cmd.Env = c.env
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	children := fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; {
		b, _ := os.ReadFile(children)
		if f := strings.Fields(string(b)); len(f) > 0 {
			p.pid, _ = strconv.Atoi(f[0])
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited at once (%v):\n%s", name, cmd.ProcessState, lastLines(c.Logs(name), 20))
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop(time.Second)
			return nil, fmt.Errorf("nsenter for %s forked nothing in 10s", name)
		}
	}
}

func (c *Cluster) nsenterArgs() []string {
	return []string{"--target", strconv.Itoa(c.init.Process.Pid), "--mount", "--pid", "--wd=/", "--"}
}

// stop sends SIGTERM to the process, SIGKILL after grace, and waits.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	if p.pid > 0 {
		_ = syscall.Kill(p.pid, syscall.SIGTERM)
	}
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	if p.pid > 0 {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// restart stops a component by pid and starts it again, and says when
// the new process started.
func (c *Cluster) restart(name string) (time.Time, error) {
	c.mu.Lock()
	p, args := c.procs[name], c.args[name]
	c.mu.Unlock()
	if p == nil {
		return time.Time{}, fmt.Errorf("%s is not running", name)
	}
	p.stop(componentsGrace)
	started := time.Now()
	p, err := c.startProc(name, args)
	if err != nil {
		return started, err
	}
	c.mu.Lock()
	c.procs[name] = p
	c.mu.Unlock()
	return started, nil
}

// RestartKubelet stops the kubelet (by pid: SIGTERM, then SIGKILL),
// starts it again and waits until it is healthy and the node is Ready
// as of after the restart. Running pods keep running.
func (c *Cluster) RestartKubelet(t *testing.T) {
	t.Helper()
	began := time.Now()
	started, err := c.restart("kubelet")
	if err != nil {
		t.Fatalf("restarting the kubelet: %v", err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	err = poll(deadline, "the kubelet's /healthz", func() (bool, error) {
		client := &http.Client{Timeout: 2 * time.Second}
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", c.ports.kubeletHealthz))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err == nil {
		err = c.waitNode(deadline, started)
	}
	if err != nil {
		t.Fatalf("after restarting the kubelet: %v\n%s", err, c.logTails())
	}
	t.Logf("kubelet restarted, node Ready again in %.1fs", time.Since(began).Seconds())
}

// RestartContainerd stops containerd (by pid: SIGTERM, then SIGKILL),
// starts it again and waits until it has booted and the node is Ready
// as of after the restart. The shims outlive containerd: running pods
// keep running.
func (c *Cluster) RestartContainerd(t *testing.T) {
	t.Helper()
	began := time.Now()
	logged := len(c.Logs("containerd"))
	started, err := c.restart("containerd")
	if err != nil {
		t.Fatalf("restarting containerd: %v", err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	err = c.waitContainerd(deadline, logged)
	if err == nil {
		err = c.waitNode(deadline, started)
	}
	if err != nil {
		t.Fatalf("after restarting containerd: %v\n%s", err, c.logTails())
	}
	t.Logf("containerd restarted, node Ready again in %.1fs", time.Since(began).Seconds())
}

// waitContainerd waits for containerd's log, past offset, to say it
// booted, then checks that its CRI plugin loaded: a configuration
// containerd takes may still leave it without one (containerd 1.x
// replaces a whole plugin section with an imported file's).
func (c *Cluster) waitContainerd(deadline time.Time, offset int) error {
	err := poll(deadline, "containerd to boot", func() (bool, error) {
		if c.exited("containerd") {
			return false, errors.New("containerd exited")
		}
		l := c.Logs("containerd")
		return len(l) > offset && strings.Contains(l[offset:], "containerd successfully booted"), nil
	})
	if err != nil {
		return err
	}
	out, err := c.InNode(c.bin.ctr, "plugins", "ls")
	if err != nil {
		return fmt.Errorf("ctr plugins ls: %v\n%s", err, out)
	}
	status := "not listed"
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "io.containerd.grpc.v1" && f[1] == "cri" {
			status = f[len(f)-1]
		}
	}
	if status == "ok" {
		return nil
	}
	why := []string{"containerd booted without its CRI plugin (" + status + " in ctr plugins ls)"}
	for _, l := range strings.Split(c.Logs("containerd")[offset:], "\n") {
		if strings.Contains(l, "failed to load plugin") {
			why = append(why, l)
		}
	}
	return errors.New(strings.Join(why, "\n"))
}

// importBaseImages imports the pause and busybox images once containerd
// has booted.
func (c *Cluster) importBaseImages() error {
	if err := c.waitContainerd(time.Now().Add(time.Minute), 0); err != nil {
		return err
	}
	if err := c.importImage(PauseImage, []layerEntry{{path: "pause", hostFile: filepath.Join(c.dir, "bin", "pause")}}, []string{"/pause"}); err != nil {
		return fmt.Errorf("importing %s: %w", PauseImage, err)
	}
	entries, err := busyboxEntries(c.bin.busybox)
	if err != nil {
		return err
	}
	if err := c.importImage(BusyboxImage, entries, []string{"/bin/sh"}); err != nil {
		return fmt.Errorf("importing %s: %w", BusyboxImage, err)
	}
	return nil
}

// get GETs path from the API server as the admin.
func (c *Cluster) get(path string) ([]byte, int, error) {
	resp, err := c.api.Get(fmt.Sprintf("https://127.0.0.1:%d%s", c.ports.apiserver, path))
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

func (c *Cluster) waitAPIServer(deadline time.Time) error {
	return poll(deadline, "the API server's /readyz", func() (bool, error) {
		_, code, err := c.get("/readyz")
		if errors.Is(err, syscall.ECONNREFUSED) {
			err = nil
		}
		if c.exited("kube-apiserver") || c.exited("etcd") {
			return false, errors.New("kube-apiserver or etcd exited")
		}
		return code == http.StatusOK, nil
	})
}

// exited says whether a component's process has ended.
func (c *Cluster) exited(name string) bool {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// anyExited names a component whose process has ended, if one has.
func (c *Cluster) anyExited() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, p := range c.procs {
		select {
		case <-p.done:
			return name
		default:
		}
	}
	return ""
}

// nodeObject is what the harness reads of the Node.
type nodeObject struct {
	Spec struct {
		Taints []struct{ Key string } `json:"taints"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type              string    `json:"type"`
			Status            string    `json:"status"`
			LastHeartbeatTime time.Time `json:"lastHeartbeatTime"`
		} `json:"conditions"`
	} `json:"status"`
}

// waitNode waits until the node is Ready without the not-ready taint,
// as the kubelet reported it after since (zero: any time).
func (c *Cluster) waitNode(deadline time.Time, since time.Time) error {
	var last string
	err := poll(deadline, "node "+NodeName+" to be Ready", func() (bool, error) {
		if name := c.anyExited(); name != "" {
			return false, fmt.Errorf("%s exited", name)
		}
		b, code, err := c.get("/api/v1/nodes/" + NodeName)
		if err != nil || code != http.StatusOK {
			last = fmt.Sprintf("GET node: %d %v", code, err)
			return false, nil
		}
		var n nodeObject
		if err := json.Unmarshal(b, &n); err != nil {
			return false, err
		}
		for _, taint := range n.Spec.Taints {
			if taint.Key == "node.kubernetes.io/not-ready" {
				last = "tainted not-ready"
				return false, nil
			}
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == "Ready" {
				last = fmt.Sprintf("Ready=%s at %v", cond.Status, cond.LastHeartbeatTime)
				return cond.Status == "True" && cond.LastHeartbeatTime.After(since.Truncate(time.Second)), nil
			}
		}
		last = "no Ready condition"
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

// poll calls cond until it holds, it fails, or deadline passes.
func poll(deadline time.Time, what string, cond func() (bool, error)) error {
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		time.Sleep(wait)
	}
}

// APIServerPort is the API server's port on 127.0.0.1. Pods see the
// kubernetes service's ClusterIP, which nothing routes here: a
// hostNetwork pod may be given KUBERNETES_SERVICE_HOST=127.0.0.1 and
// KUBERNETES_SERVICE_PORT=APIServerPort().
func (c *Cluster) APIServerPort() int { return c.ports.apiserver }

// NodeIP is the node's InternalIP, which pods see as status.hostIP: the
// address the kubelet picked for the machine (its default route's; it
// refuses a loopback --node-ip), not 127.0.0.1, where the cluster's own
// ports are. A hostNetwork pod listening on its hostIP listens there.
func (c *Cluster) NodeIP(t *testing.T) string {
	t.Helper()
	b, code, err := c.get("/api/v1/nodes/" + NodeName)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET node %s: %d %v", NodeName, code, err)
	}
	var n struct {
		Status struct {
			Addresses []struct{ Type, Address string } `json:"addresses"`
		} `json:"status"`
	}
	if err := json.Unmarshal(b, &n); err != nil {
		t.Fatal(err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == "InternalIP" {
			return a.Address
		}
	}
	t.Fatalf("node %s has no InternalIP: %s", NodeName, b)
	return ""
}

// CACert is the cluster CA's certificate (PEM): the ca.crt of pods'
// service-account volumes.
func (c *Cluster) CACert() []byte { return c.pki.caPEM }

// InitPID is the host pid of the node's pid 1.
func (c *Cluster) InitPID() int { return c.init.Process.Pid }

// HostPath is where a node path lives on the host, for assertions: in
// one of the test's directories, in an overlay's upper directory if the
// node created it under a path the host lacks, or else the path itself.
func (c *Cluster) HostPath(nodePath string) string { return c.node.hostPath(nodePath) }

// InNode runs a command in the node's mount and pid namespaces (nsenter
// -t <pid 1> -m -p) and returns its combined output.
func (c *Cluster) InNode(args ...string) (string, error) {
	cmd := exec.Command(c.bin.nsenter, append(c.nsenterArgs(), args...)...)
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// KubectlCmd is kubectl as the admin, not started. Its cache is the
// cluster's, not $HOME's.
func (c *Cluster) KubectlCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(c.bin.kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "KUBECACHEDIR=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+filepath.Join(c.dir, "home"), "KUBECACHEDIR="+filepath.Join(c.dir, "home", "kube-cache"))
	return cmd
}

// Kubectl runs kubectl as the admin and returns its standard output; a
// failure's error carries its standard error.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	cmd := c.KubectlCmd(args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Apply applies manifests (kubectl apply -f -), failing the test if
// kubectl does.
func (c *Cluster) Apply(t *testing.T, yaml string) {
	t.Helper()
	cmd := c.KubectlCmd("apply", "-f", "-")
	cmd.Stdin = strings.NewReader(yaml)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s\nmanifest:\n%s", err, out, yaml)
	}
}

// WaitPod waits until the pod is Ready, failing the test otherwise with
// kubectl describe, the namespace's events and the tails of the
// kubelet's and containerd's logs.
func (c *Cluster) WaitPod(t *testing.T, namespace, name string, timeout time.Duration) {
	t.Helper()
	var phase string
	err := poll(time.Now().Add(timeout), fmt.Sprintf("pod %s/%s to be Ready", namespace, name), func() (bool, error) {
		b, code, err := c.get(fmt.Sprintf("/api/v1/namespaces/%s/pods/%s", namespace, name))
		if err != nil || code != http.StatusOK {
			return false, nil
		}
		var pod struct {
			Status struct {
				Phase      string `json:"phase"`
				Conditions []struct{ Type, Status string }
			} `json:"status"`
		}
		if err := json.Unmarshal(b, &pod); err != nil {
			return false, err
		}
		phase = pod.Status.Phase
		if phase == "Failed" || phase == "Succeeded" {
			return false, fmt.Errorf("the pod is %s", phase)
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == "Ready" && cond.Status == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		describe, _ := c.Kubectl("-n", namespace, "describe", "pod", name)
		events, _ := c.Kubectl("-n", namespace, "get", "events", "--sort-by", ".lastTimestamp")
		t.Fatalf("%v (phase %q)\n%s\nevents:\n%s\n%s", err, phase, describe, events, c.logTails())
	}
}

// Logs is everything a component wrote: "etcd", "containerd",
// "kube-apiserver", "kube-controller-manager", "kube-scheduler",
// "kubelet" or "nodeinit".
func (c *Cluster) Logs(component string) string {
	b, _ := os.ReadFile(c.logPath(component))
	return string(b)
}

func (c *Cluster) logPath(component string) string {
	return filepath.Join(c.dir, "logs", component+".log")
}

// logTails is the end of the node's logs, for failure messages.
func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, name := range []string{"nodeinit", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet"} {
		if l := c.Logs(name); l != "" {
			fmt.Fprintf(&b, "--- %s log (tail):\n%s\n", name, lastLines(l, 25))
		}
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// teardown stops the node's processes by pid (the kubelet first, so
// it restarts nothing), ends the node's pid 1 (the kernel then kills
// what is left in its namespace: shims, containers; the node's mounts
// go with its mount namespace), removes the cgroups below CgroupRoot
// and the cluster's directory.
func (c *Cluster) teardown(t *testing.T) {
	began := time.Now()
	if t.Failed() {
		t.Logf("the cluster's logs, as the test failed:\n%s", c.logTails())
	}
	c.mu.Lock()
	procs := c.procs
	c.procs = map[string]*proc{}
	c.mu.Unlock()
	if p := procs["kubelet"]; p != nil {
		p.stop(teardownGrace)
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop(teardownGrace)
		}()
	}
	wg.Wait()
	t.Logf("teardown: processes stopped in %.1fs", time.Since(began).Seconds())
	if c.init != nil {
		_ = c.init.Process.Kill()
		c.initStdin.Close()
		select {
		case <-c.initDone:
		case <-time.After(time.Minute):
			t.Errorf("teardown: the node's pid 1 (%d) has not ended after a minute", c.init.Process.Pid)
		}
	}
	for _, dir := range c.cgroup {
		if err := removeCgroupTree(dir, 30*time.Second); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		t.Errorf("teardown: %v", err)
	}
	t.Logf("cluster torn down in %.1fs", time.Since(began).Seconds())
}

// runOutput runs a host command and returns its standard output.
func runOutput(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	return string(out), err
}

// A cluster's directory names, in files "owner" and "init", the test
// process that made it and the node's pid 1 (pid and start time). A
// test killed past its cleanups (go test -timeout panics) leaves its
// cluster's directory and cgroups; its node dies with it (nodeinit's
// standard input ends). The next Start sweeps what such a cluster left
// once both processes are gone, and nothing of a live one.

func writeOwner(path string, pid int) error {
	start, err := processStart(pid)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(fmt.Sprintf("%d %s\n", pid, start)), 0o644)
}

// alive says whether the process a file written by writeOwner names
// still runs. An unreadable file counts as alive, a missing one as
// ifMissing.
func alive(path string, ifMissing bool) bool {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return ifMissing
	}
	if err != nil {
		return true
	}
	var pid int
	var start string
	if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
		return true
	}
	now, err := processStart(pid)
	return err == nil && now == start
}

// processStart is a process's start time (field 22 of /proc/PID/stat).
func processStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name, field 2, may hold spaces: count from its ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	return f[19], nil
}

// sweepStale removes the cgroups and directories of clusters whose test
// and node are gone.
func sweepStale(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "cgfs-test-k8s-*"))
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return
	}
	for _, dir := range dirs {
		// No owner yet: a Start is making it. No init: its node never ran.
		if alive(filepath.Join(dir, "owner"), true) || alive(filepath.Join(dir, "init"), false) {
			continue
		}
		swept := true
		for _, h := range hierarchies {
			if err := removeCgroupTree(filepath.Join(h, filepath.Base(dir)), time.Second); err != nil {
				swept = false
			}
		}
		if swept && os.RemoveAll(dir) == nil {
			t.Logf("swept %s and its cgroups, left by a test that died", dir)
		}
	}
}
