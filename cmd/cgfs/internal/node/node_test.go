package node

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInstallPutsEachFileInPlace(t *testing.T) {
	host := t.TempDir()
	for _, version := range []int{3, 2, 3} {
		if err := Install(host, version); err != nil {
			t.Fatalf("install, version %d: %v", version, err)
		}
		conf, err := os.ReadFile(filepath.Join(host, map[int]string{2: Snippet1x, 3: DropIn}[version]))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range map[int][]string{
			2: {`[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cgfs]`, `base_runtime_spec = "/opt/cgfs/runtime-spec.json"`},
			3: {"version = 3", `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.cgfs]`, `[plugins."io.containerd.nri.v1.nri".default_validator]`},
		}[version] {
			if !strings.Contains(string(conf), want) {
				t.Errorf("version %d drop-in lacks %q:\n%s", version, want, conf)
			}
		}
	}
	self, _ := os.ReadFile("/proc/self/exe")
	bin, err := os.ReadFile(filepath.Join(host, Binary))
	if err != nil || !bytes.Equal(bin, self) {
		t.Errorf("the binary installed is not this one: %v", err)
	}
	if st, err := os.Stat(filepath.Join(host, Binary)); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("binary: %v %v", st.Mode(), err)
	}
	var spec struct {
		Hooks struct {
			CreateRuntime []struct {
				Path string   `json:"path"`
				Args []string `json:"args"`
			} `json:"createRuntime"`
		} `json:"hooks"`
		Process struct {
			Rlimits []any `json:"rlimits"`
		} `json:"process"`
		Linux struct {
			Seccomp struct {
				ListenerPath string `json:"listenerPath"`
			} `json:"seccomp"`
		} `json:"linux"`
	}
	b, err := os.ReadFile(filepath.Join(host, RuntimeSpec))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatalf("the base spec: %v", err)
	}
	if h := spec.Hooks.CreateRuntime; len(h) != 1 || h[0].Path != Binary || strings.Join(h[0].Args, " ") != "cgfs oci-hook" {
		t.Errorf("the base spec's hooks: %+v", h)
	}
	if spec.Linux.Seccomp.ListenerPath != "/run/cgfs/seccomp.sock" || len(spec.Process.Rlimits) != 0 {
		t.Errorf("the base spec: listener %q, rlimits %v (user-namespaced pods fail with RLIMIT_NOFILE in a base spec)", spec.Linux.Seccomp.ListenerPath, spec.Process.Rlimits)
	}
	left, _ := filepath.Glob(filepath.Join(host, "*", "*", "*.cgfs-new"))
	if len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestInstallRefusesAnUnknownConfigVersion(t *testing.T) {
	host := t.TempDir()
	if err := Install(host, 1); err == nil {
		t.Fatal("version 1 taken")
	}
	if entries, _ := os.ReadDir(host); len(entries) != 0 {
		t.Errorf("a refused install wrote %v", entries)
	}
}
