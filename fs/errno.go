package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/loglimit"
)

// errno is the one place a result becomes what the container sees. Every
// error is logged on the host: refusals with the rule that refused them,
// host errors with the host operation, path and data. A failed lookup of
// a name that does not exist is the everyday answer and is not logged.
func (m *mount) errno(ctx context.Context, r *access.Request, op, vpath string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var tid uint32
	if fc, ok := fuse.FromContext(ctx); ok {
		tid = fc.Pid
	}
	var ref *access.Refusal
	if errors.As(err, &ref) {
		m.count.Refusal(string(ref.Rule), op)
		if op == "lookup" && ref.Errno == syscall.ENOENT {
			return ref.Errno // the hidden leaf: not there, to the container
		}
		caller := ""
		if ref.Caller != nil {
			caller = ref.Caller.String()
		} else if r != nil {
			if c, ok := r.Identified(); ok {
				caller = c.String()
			}
		}
		if n, ok := m.logs.Take(); ok {
			pid, _ := m.ident.ThreadGroup(int(tid))
			m.log.Warn("refused", "rule", ref.Rule, "op", op, "path", "/"+vpath, "errno", errName(ref.Errno),
				"detail", ref.Detail, "pid", pid, "tid", tid, "caller", caller, "suppressed", n)
		}
		return ref.Errno
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if op == "lookup" && errno == syscall.ENOENT {
			return errno
		}
		if n, ok := m.logs.Take(); ok {
			m.log.Info("host refused", "op", op, "path", "/"+vpath, "errno", errName(errno),
				"tid", tid, "detail", err.Error(), "suppressed", n)
		}
		return errno
	}
	if errors.Is(err, access.ErrGone) {
		// The caller is gone: nobody reads this answer.
		return syscall.ESRCH
	}
	if n, ok := m.logs.Take(); ok {
		m.log.Error("internal error", "op", op, "path", "/"+vpath, "tid", tid, "err", err, "suppressed", n)
	}
	return syscall.EIO
}

// Log lines for what a container causes are rate-limited per mount: a
// burst of 100, then 2 a second. Metrics count every answer; a line that
// is written says how many were suppressed before it.
func newLogBudget() *loglimit.Limiter { return loglimit.New(100, 500*time.Millisecond) }

func errName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}
