package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkOpenReadClose compares open-read-close of a control file
// natively and through cgfs, in the same run: cgroup.events is served by
// the kernel (passthrough where it has it), cgroup.stat is rendered by
// cgfs (hidden leaves left out of its counts).
func BenchmarkOpenReadClose(b *testing.B) {
	requireRoot(b)
	l := detectLane(b)
	host := newCgroup(b, l)
	s := mountView(b, host)
	for _, c := range benchFiles(host, s) {
		path := c.path
		b.Run(c.name, func(b *testing.B) {
			buf := make([]byte, 4096)
			for b.Loop() {
				fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				if n, err := unix.Read(fd, buf); n <= 0 {
					b.Fatal(err)
				}
				unix.Close(fd)
			}
		})
	}
}

// BenchmarkPread compares a read of an already open control file.
func BenchmarkPread(b *testing.B) {
	requireRoot(b)
	l := detectLane(b)
	host := newCgroup(b, l)
	s := mountView(b, host)
	for _, c := range benchFiles(host, s) {
		b.Run(c.name, func(b *testing.B) {
			f, err := os.Open(c.path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 4096)
			for b.Loop() {
				if n, err := unix.Pread(int(f.Fd()), buf, 0); n <= 0 {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMkdirRmdir compares creating and removing a cgroup.
func BenchmarkMkdirRmdir(b *testing.B) {
	requireRoot(b)
	l := detectLane(b)
	host := newCgroup(b, l)
	s := mountView(b, host)
	for _, c := range []struct{ name, dir string }{{"native", host}, {"cgfs", s.mnt}} {
		b.Run(c.name, func(b *testing.B) {
			p := filepath.Join(c.dir, "bench")
			for b.Loop() {
				if err := unix.Mkdir(p, 0o755); err != nil {
					b.Fatal(err)
				}
				if err := unix.Rmdir(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchFiles pairs each benchmarked file natively and through cgfs:
// cgroup.events is served by the kernel (passthrough where it has it),
// cgroup.stat is rendered by cgfs.
func benchFiles(host string, s *server) []struct{ name, path string } {
	var out []struct{ name, path string }
	for _, f := range []string{"cgroup.events", "cgroup.stat"} {
		out = append(out,
			struct{ name, path string }{"native/" + f, filepath.Join(host, f)},
			struct{ name, path string }{"cgfs/" + f, s.path(f)})
	}
	return out
}

// BenchmarkEventRelay is the latency of an inotify event on a view's
// cgroup.events after the kernel changes the host file (a freeze or a
// thaw written on the host), next to the same watch on the host file:
// what a watcher in a container waits for beyond the kernel's own
// notification.
func BenchmarkEventRelay(b *testing.B) {
	requireRoot(b)
	l := detectLane(b)
	host := newCgroup(b, l)
	s := mountView(b, host)
	for _, c := range []struct{ name, events string }{
		{"native", filepath.Join(host, "cgroup.events")},
		{"cgfs", s.path("cgroup.events")},
	} {
		b.Run(c.name, func(b *testing.B) {
			in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(in)
			if _, err := unix.InotifyAddWatch(in, c.events, unix.IN_MODIFY); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 4096)
			freeze := filepath.Join(host, "cgroup.freeze")
			state := "1"
			for b.Loop() {
				if err := os.WriteFile(freeze, []byte(state), 0); err != nil {
					b.Fatal(err)
				}
				if _, err := unix.Read(in, buf); err != nil {
					b.Fatal(err)
				}
				if state == "1" {
					state = "0"
				} else {
					state = "1"
				}
			}
		})
	}
}

// BenchmarkConcurrentSelfMigrations: 100 processes released at once,
// each moving itself into one cgroup (the kernel selftests' test_kill
// and test_freezer "simple" cases), natively in a host cgroup and
// inside cgfs run through its view, from the container's pid namespace.
// Reported per storm and per move.
func BenchmarkConcurrentSelfMigrations(b *testing.B) {
	requireRoot(b)
	l := detectLane(b)
	const children = 100
	report := func(b *testing.B, out []byte) {
		var ns float64
		if _, err := fmt.Sscanf(lastLine(string(out)), "storm %g", &ns); err != nil {
			b.Fatalf("the storm said: %s", out)
		}
		b.ReportMetric(ns/float64(b.N), "ns/storm")
		b.ReportMetric(ns/float64(b.N*children), "ns/move")
		b.ReportMetric(0, "ns/op")
	}
	b.Run("native", func(b *testing.B) {
		dir := newCgroup(b, l)
		cmd := exec.Command("/proc/self/exe", "migratestorm", dir, strconv.Itoa(children), strconv.Itoa(b.N))
		cmd.Env = append(os.Environ(), helperEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		report(b, out)
	})
	b.Run("cgfs-run", func(b *testing.B) {
		v2 := "/sys/fs/cgroup"
		if len(l.v1) > 0 {
			v2 = "/sys/fs/cgroup/unified"
		}
		script := fmt.Sprintf("mkdir %[1]s/storm && exec env %[2]s=1 %[3]s migratestorm %[1]s/storm %[4]d %[5]d", v2, helperEnv, helperBin, children, b.N)
		cmd := exec.Command(cgfsBin, "run", "--parent", runParent(b), "--pids", "1000", "--", "sh", "-c", script)
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("cgfs run: %v: %s", err, out)
		}
		report(b, out)
	})
}
