// Package k8s runs a real Kubernetes node and control plane on this machine for cgfs's Kubernetes lane.
//
// Start brings up, from binaries .ci/k8s-deps caches, etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd and a kubelet, all
// in one new mount namespace and one new pid namespace whose pid 1 is a
// small reaper (testdata/nodeinit). Network, user and cgroup namespaces
// are the host's. Inside the node's mount namespace the standard paths
// a DaemonSet mounts with hostPath (/etc/containerd, /var/lib/kubelet,
// /var/run/nri, ...) are the test's own directories; where such a path
// does not exist on the host, its deepest existing ancestor is covered by
// an overlay whose upper directory is the test's, so nothing on the host
// is created or changed. A hostPID pod sees the node's pid namespace,
// and `nsenter -t 1 -m` from it reaches the node's mount namespace, as on
// a real node.
//
// The kubelet runs in a mount namespace of its own below the node's: the
// sysctls it would write are files of the test's bind-mounted over
// /proc/sys there, and /var/lib/kubelet is shared with the node's
// namespace so the volumes it mounts reach containerd. Pods get a
// network namespace from testdata/cgfs-veth, a CNI plugin that makes both
// ends of a veth pair inside it. Every cgroup the node makes is below
// Cluster.CgroupRoot, /cgfs-test-k8s-<random>, in every hierarchy.
//
// Everything is torn down in t.Cleanup: processes by pid, then the
// node's pid 1 (the kernel kills what is left in its namespace), then the
// cgroups and the temporary directory.
package k8s
