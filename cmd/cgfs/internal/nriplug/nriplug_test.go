package nriplug

import (
	"slices"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

var o = Options{Hook: "/opt/cgfs/bin/cgfs", SeccompSocket: "/run/cgfs/seccomp.sock"}

func pod(ann map[string]string) *api.PodSandbox {
	return &api.PodSandbox{Name: "p", Namespace: "default", Annotations: ann}
}

func ctr(name string, policy *api.LinuxSeccomp) *api.Container {
	return &api.Container{Name: name, Id: "abc", Linux: &api.LinuxContainer{SeccompPolicy: policy}}
}

func TestOnlyOptedInContainersAreAdjusted(t *testing.T) {
	for _, c := range []struct {
		ann       map[string]string
		container string
		want      bool
	}{
		{nil, "app", false},
		{map[string]string{"other": "true"}, "app", false},
		{map[string]string{"view.cgfs.dev": "true"}, "app", true},
		{map[string]string{"view.cgfs.dev/pod": "true"}, "app", true},
		{map[string]string{"view.cgfs.dev": "false"}, "app", false},
		{map[string]string{"view.cgfs.dev": "true", "view.cgfs.dev/container.side": "false"}, "side", false},
		{map[string]string{"view.cgfs.dev": "true", "view.cgfs.dev/container.side": "false"}, "app", true},
		{map[string]string{"view.cgfs.dev/container.app": "true"}, "app", true},
	} {
		a, err := o.Adjust(pod(c.ann), ctr(c.container, nil))
		if err != nil {
			t.Fatalf("%v %s: %v", c.ann, c.container, err)
		}
		if (a != nil) != c.want {
			t.Errorf("%v, container %s: adjusted %v, want %v", c.ann, c.container, a != nil, c.want)
		}
	}
	if _, err := o.Adjust(pod(map[string]string{"view.cgfs.dev": "yes please"}), ctr("app", nil)); err == nil {
		t.Error("an annotation that is not a boolean was taken")
	}
}

func TestTheHookAndListenerAreAdded(t *testing.T) {
	a, err := o.Adjust(pod(map[string]string{"view.cgfs.dev": "true"}), ctr("app", nil))
	if err != nil {
		t.Fatal(err)
	}
	h := a.GetHooks().GetCreateRuntime()
	if len(h) != 1 || h[0].Path != "/opt/cgfs/bin/cgfs" || !slices.Equal(h[0].Args, []string{"cgfs", "oci-hook"}) {
		t.Errorf("createRuntime hooks %v", h)
	}
	p := a.GetLinux().GetSeccompPolicy()
	if p.ListenerPath != "/run/cgfs/seccomp.sock" || p.DefaultAction != "SCMP_ACT_ALLOW" {
		t.Errorf("policy %v", p)
	}
	if act := action(p, "statfs"); act != "SCMP_ACT_NOTIFY" {
		t.Errorf("statfs: %q", act)
	}
	if act := action(p, "clone3"); act != "SCMP_ACT_ERRNO" {
		t.Errorf("clone3: %q", act)
	}
	if a, _ := (Options{Hook: "/x"}).Adjust(pod(map[string]string{"view.cgfs.dev": "true"}), ctr("app", nil)); a.GetLinux().GetSeccompPolicy() != nil {
		t.Error("a policy without a seccomp socket")
	}
}

// A container's own policy (RuntimeDefault) keeps its default action and
// every rule but those for cgfs's calls, which cgfs's replace.
func TestTheContainersPolicyIsKept(t *testing.T) {
	own := &api.LinuxSeccomp{DefaultAction: "SCMP_ACT_ERRNO", Architectures: []string{"SCMP_ARCH_X86_64"},
		Syscalls: []*api.LinuxSyscall{
			{Names: []string{"read", "write", "statfs", "mount"}, Action: "SCMP_ACT_ALLOW"},
			{Names: []string{"clone3"}, Action: "SCMP_ACT_ERRNO"},
		}}
	a, err := o.Adjust(pod(map[string]string{"view.cgfs.dev": "true"}), ctr("app", own))
	if err != nil {
		t.Fatal(err)
	}
	p := a.GetLinux().GetSeccompPolicy()
	if p.DefaultAction != "SCMP_ACT_ERRNO" || !slices.Equal(p.Architectures, own.Architectures) {
		t.Errorf("policy %v", p)
	}
	for name, want := range map[string]string{"read": "SCMP_ACT_ALLOW", "write": "SCMP_ACT_ALLOW", "statfs": "SCMP_ACT_NOTIFY", "mount": "SCMP_ACT_NOTIFY", "clone3": "SCMP_ACT_ERRNO"} {
		if got := action(p, name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if n := rules(p, "statfs"); n != 1 {
		t.Errorf("statfs named by %d rules", n)
	}
	if len(own.Syscalls[0].Names) != 4 {
		t.Error("the container's own policy was changed in place")
	}
}

func action(p *api.LinuxSeccomp, name string) string {
	for _, r := range p.Syscalls {
		if slices.Contains(r.Names, name) {
			return r.Action
		}
	}
	return ""
}

func rules(p *api.LinuxSeccomp, name string) int {
	n := 0
	for _, r := range p.Syscalls {
		if slices.Contains(r.Names, name) {
			n++
		}
	}
	return n
}
