package proc

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cgfs/cgfs/test/fake"
)

var (
	statusLine = regexp.MustCompile(`(?m)^(Tgid|Pid|NStgid|NSpid|Uid):\t.*$`)
	statPpid   = regexp.MustCompile(`^(\d+ \(cat\) R )\d+`)
)

// FuzzStatus: /proc/PID/status and stat, as the pins of tasks read them
// (a fake proc filesystem holds the fuzzed text; ns/pid is the test's
// own). No text makes a read panic; the status the kernel writes reads
// back exactly (thread group, pid in each namespace, uids, parent);
// every reader of one status agrees with the others: the thread group
// of ThreadGroup, Status and Thread, and a Thread's level and own ids
// are its NSpid's.
func FuzzStatus(f *testing.F) {
	for _, p := range []string{"proc-self", "proc-pidns"} {
		f.Add(fake.Kernel(f, p+"-status"), fake.Kernel(f, p+"-stat"), false, uint32(100), uint32(1), uint32(0))
	}
	f.Add([]byte("Tgid:\t100\nNSpid:\t100\t7\t1\nUid:\t0\t0\t0\t0\n"), []byte("100 (x) S 1"), true, uint32(100), uint32(7), uint32(100000))
	f.Add([]byte("Tgid:\t100\nNSpid:\nUid:\n"), []byte("100 ((sd-pam)) S 4853 4853"), false, uint32(0), uint32(0), uint32(0))
	root := f.TempDir()
	const tid = 100
	dir := filepath.Join(root, strconv.Itoa(tid))
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink("/proc/self/ns/pid", filepath.Join(dir, "ns/pid")); err != nil {
		f.Fatal(err)
	}
	p, err := Open(root)
	if err != nil {
		f.Fatal(err)
	}
	kernelStatus, kernelStat := fake.Kernel(f, "proc-pidns-status"), fake.Kernel(f, "proc-pidns-stat")
	f.Fuzz(func(t *testing.T, status, stat []byte, asKernel bool, ppid, inner, uid uint32) {
		if asKernel {
			// The kernel's own text for a task 100 in a child pid
			// namespace, numbered inner there (1 to PID_MAX_LIMIT).
			inner = inner%(1<<22) + 1
			status = statusLine.ReplaceAllFunc(kernelStatus, func(line []byte) []byte {
				k, _, _ := strings.Cut(string(line), ":")
				switch k {
				case "NSpid", "NStgid":
					return []byte(k + ":\t100\t" + strconv.FormatUint(uint64(inner), 10))
				case "Uid":
					u := strconv.FormatUint(uint64(uid), 10)
					return []byte("Uid:\t" + u + "\t" + u + "\t" + u + "\t" + u)
				}
				return []byte(k + ":\t100")
			})
			stat = statPpid.ReplaceAll(kernelStat, []byte("${1}"+strconv.FormatUint(uint64(ppid), 10)))
		}
		fake.Write(t, filepath.Join(dir, "status"), string(status))
		fake.Write(t, filepath.Join(dir, "stat"), string(stat))
		pin, err := p.Pin(tid)
		if err != nil {
			t.Fatal(err)
		}
		defer pin.Close()
		tgid, nspid, serr := pin.Status()
		u, su, uerr := pin.UIDs()
		parent, perr := pin.Parent()
		group, gerr := p.ThreadGroup(tid)
		th, terr := pin.Thread()
		if asKernel {
			if serr != nil || tgid != tid || !slices.Equal(nspid, []int{tid, int(inner)}) {
				t.Fatalf("status of a task %d numbered %d inside = %d, %v, %v", tid, inner, tgid, nspid, serr)
			}
			if uerr != nil || u != uid || su != uid {
				t.Fatalf("uids of a task of uid %d = %d, %d, %v", uid, u, su, uerr)
			}
			if perr != nil || parent != int(ppid) {
				t.Fatalf("parent %d reads %d, %v", ppid, parent, perr)
			}
		}
		if serr != nil {
			return
		}
		if len(nspid) == 0 || gerr != nil || group != tgid {
			t.Fatalf("status %q: Status = %d, %v; ThreadGroup = %d, %v", status, tgid, nspid, group, gerr)
		}
		if terr == nil && (th.Tid != tid || th.Tgid != tgid || th.Level != len(nspid)-1 || th.OwnTid != nspid[len(nspid)-1] ||
			tgid == tid && th.OwnPid != th.OwnTid) {
			t.Fatalf("status %q: Thread = %+v, but Status = %d, %v", status, th, tgid, nspid)
		}
		if terr != nil && tgid == tid {
			t.Fatalf("status %q: Thread of a process's leader = %v", status, terr)
		}
	})
}
