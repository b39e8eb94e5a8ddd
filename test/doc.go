// Package test holds cgfs's integration tests: real FUSE mounts over
// real cgroup hierarchies, driven from real processes. They need root;
// without it they skip with a reason, and under CI=true a skip fails.
//
// The suite runs in two lanes, told apart by the machine itself: the
// host (this project's machines are hybrid: cgroup v1 controllers plus
// a cgroup2 hierarchy with few controllers) and a VM with every
// controller on cgroup v2 (test/vm).
package test
