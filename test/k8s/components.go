package k8s

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// writeNodeFiles writes containerd's and the kubelet's configuration,
// the CNI plugins and configuration, and the sysctl files.
func (c *Cluster) writeNodeFiles() error {
	if err := c.writeKubeconfigs(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.node.hostPath("/etc/containerd/conf.d"), 0o755); err != nil {
		return err
	}
	for p, text := range map[string]string{
		c.node.hostPath("/etc/containerd/config.toml"):          c.containerdConfig(),
		c.node.hostPath("/etc/cni/net.d/10-cgfs-test.conflist"): cniConfig,
		filepath.Join(c.dir, "conf", "kubelet.yaml"):            c.kubeletConfig(),
	} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	veth, err := testdata.ReadFile("testdata/cgfs-veth")
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.node.hostPath("/opt/cni/bin/cgfs-veth"), veth, 0o755); err != nil {
		return err
	}
	loopback, err := os.ReadFile(c.bin.loopback)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.node.hostPath("/opt/cni/bin/loopback"), loopback, 0o755); err != nil {
		return err
	}
	sysctls := filepath.Join(c.dir, "sysctl")
	if err := os.MkdirAll(sysctls, 0o755); err != nil {
		return err
	}
	for _, s := range kubeletSysctls {
		b, err := os.ReadFile("/proc/sys/" + s)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(sysctls, strings.ReplaceAll(s, "/", ".")), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// cniConfig is the node's only network: testdata/cgfs-veth. (containerd
// adds the loopback plugin by itself.)
const cniConfig = `{"cniVersion":"1.0.0","name":"cgfs-test","plugins":[{"type":"cgfs-veth","dataDir":"/var/lib/cni/cgfs-veth"}]}
`

// containerdConfig is /etc/containerd/config.toml in the node: the
// version-3 layout for containerd 2, version 2 for 1.6. Both import the
// node's conf.d, use overlayfs, the node's CNI directories and the
// local pause image, and restrict oom_score_adj (root here lacks
// CAP_SYS_RESOURCE: without it runc's init dies).
func (c *Cluster) containerdConfig() string {
	if c.opts.Containerd == "1.6" {
		return fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
imports = ["/etc/containerd/conf.d/*.toml"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`, PauseImage, c.bin.runc)
	}
	return fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
imports = ["/etc/containerd/conf.d/*.toml"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"

[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = "/var/run/nri/nri.sock"
`, PauseImage, c.bin.runc)
}

// kubeletConfig keeps the kubelet off the host: its cgroups below
// CgroupRoot, no iptables chains, loopback-only ports, no eviction or
// image garbage collection on this shared disk.
func (c *Cluster) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
makeIPTablesUtilChains: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
failSwapOn: false
nodeStatusUpdateFrequency: 4s
nodeStatusReportFrequency: 4s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
  imagefs.inodesFree: "1%%"
serializeImagePulls: false
resolvConf: /etc/resolv.conf
`, c.CgroupRoot, c.ports.kubelet, c.ports.kubeletHealthz, c.pki.caFile())
}

// componentArgs is the command line of a component, in the node.
func (c *Cluster) componentArgs(name string) []string {
	pki := func(f string) string { return filepath.Join(c.pki.dir, f) }
	local := func(port int) string { return fmt.Sprintf("http://127.0.0.1:%d", port) }
	switch name {
	case "etcd":
		return []string{c.bin.etcd,
			"--name", "node",
			"--data-dir", filepath.Join(c.dir, "etcd"),
			"--listen-client-urls", local(c.ports.etcd),
			"--advertise-client-urls", local(c.ports.etcd),
			"--listen-peer-urls", local(c.ports.etcdPeer),
			"--initial-advertise-peer-urls", local(c.ports.etcdPeer),
			"--initial-cluster", "node=" + local(c.ports.etcdPeer),
		}
	case "containerd":
		return []string{c.bin.containerd, "--config", "/etc/containerd/config.toml"}
	case "kube-apiserver":
		return []string{c.bin.apiserver,
			"--etcd-servers", local(c.ports.etcd),
			"--bind-address", "127.0.0.1",
			"--secure-port", strconv.Itoa(c.ports.apiserver),
			"--advertise-address", "127.0.0.1",
			// The endpoint reconcilers refuse a loopback address; nothing
			// routes the kubernetes service here anyway (no kube-proxy).
			"--endpoint-reconciler-type", "none",
			"--service-cluster-ip-range", serviceCIDR,
			"--client-ca-file", c.pki.caFile(),
			"--tls-cert-file", pki("apiserver.crt"),
			"--tls-private-key-file", pki("apiserver.key"),
			"--kubelet-client-certificate", pki("apiserver-kubelet-client.crt"),
			"--kubelet-client-key", pki("apiserver-kubelet-client.key"),
			"--kubelet-preferred-address-types", "Hostname",
			"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file", pki("sa.pub"),
			"--service-account-signing-key-file", pki("sa.key"),
			"--authorization-mode", "Node,RBAC",
			"--enable-admission-plugins", "NodeRestriction",
			"--allow-privileged=true",
			"--cert-dir", filepath.Join(c.dir, "conf"),
			"--profiling=false",
		}
	case "kube-controller-manager":
		kc := pki("kube-controller-manager.kubeconfig")
		return []string{c.bin.controllerManager,
			"--kubeconfig", kc,
			"--authentication-kubeconfig", kc,
			"--authorization-kubeconfig", kc,
			"--bind-address", "127.0.0.1",
			"--secure-port", strconv.Itoa(c.ports.controllerManager),
			"--cert-dir", filepath.Join(c.dir, "conf"),
			"--leader-elect=false",
			"--root-ca-file", c.pki.caFile(),
			"--service-account-private-key-file", pki("sa.key"),
			"--use-service-account-credentials",
			"--cluster-signing-cert-file", c.pki.caFile(),
			"--cluster-signing-key-file", pki("ca.key"),
			"--profiling=false",
		}
	case "kube-scheduler":
		kc := pki("kube-scheduler.kubeconfig")
		return []string{c.bin.scheduler,
			"--kubeconfig", kc,
			"--authentication-kubeconfig", kc,
			"--authorization-kubeconfig", kc,
			"--bind-address", "127.0.0.1",
			"--secure-port", strconv.Itoa(c.ports.scheduler),
			"--leader-elect=false",
			"--profiling=false",
		}
	case "kubelet":
		// A mount namespace of its own, below the node's: the sysctl
		// files over /proc/sys there only (/proc is private), and
		// /var/lib/kubelet shared with the node's (--propagation unchanged).
		script := `set -e; while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"`
		args := []string{c.bin.unshare, "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", script, "kubelet-namespace"}
		for _, s := range kubeletSysctls {
			args = append(args, filepath.Join(c.dir, "sysctl", strings.ReplaceAll(s, "/", ".")), "/proc/sys/"+s)
		}
		return append(args, "--", c.bin.kubelet,
			"--config", filepath.Join(c.dir, "conf", "kubelet.yaml"),
			"--kubeconfig", pki("kubelet.kubeconfig"),
			"--hostname-override", NodeName,
			"--v", "2",
		)
	}
	panic("unknown component " + name)
}
