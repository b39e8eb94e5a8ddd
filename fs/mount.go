package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/access"
	"github.com/cgfs/cgfs/translate"
)

// Config is what one mount serves and how it judges callers.
type Config struct {
	View       *translate.View
	Policy     *access.Policy
	Identifier *access.Identifier
	Log        *slog.Logger
	// Debug logs every FUSE request.
	Debug bool
}

// mount is the state of one mount, shared by its nodes. Nothing in it is
// shared with other mounts.
type mount struct {
	view   *translate.View
	policy *access.Policy
	ident  *access.Identifier
	log    *slog.Logger
}

// Kernel cache lifetimes. Attributes and names may be cached briefly;
// a missing name is never cached so a cgroup made on the host shows at
// once. Content is never cached (FOPEN_DIRECT_IO).
var (
	entryTimeout    = time.Second
	attrTimeout     = time.Second
	negativeTimeout = time.Duration(0)
)

// Mount serves cfg.View at dir. It returns once the mount is live; the
// caller waits on the server and unmounts it.
func Mount(dir string, cfg Config) (*fuse.Server, error) {
	st, err := cfg.View.Stat("")
	if err != nil {
		return nil, err
	}
	m := &mount{view: cfg.View, policy: cfg.Policy, ident: cfg.Identifier, log: cfg.Log}
	root := &node{m: m}
	opts := &gofs.Options{
		MountOptions: fuse.MountOptions{
			DirectMount: true,
			AllowOther:  true,
			FsName:      "cgfs",
			Name:        "cgfs",
			// cgroup xattrs (systemd's trusted.delegate, ...) are not
			// carried yet: the kernel answers EOPNOTSUPP.
			DisableXAttrs: true,
			Debug:         cfg.Debug,
		},
		EntryTimeout:    &entryTimeout,
		AttrTimeout:     &attrTimeout,
		NegativeTimeout: &negativeTimeout,
		RootStableAttr:  &gofs.StableAttr{Mode: unix.S_IFDIR, Ino: st.Ino},
	}
	return gofs.Mount(dir, root, opts)
}

// caller identifies the thread that made the request in ctx.
func (m *mount) caller(ctx context.Context) (access.Caller, error) {
	fc, ok := fuse.FromContext(ctx)
	if !ok {
		return access.Caller{}, errors.New("request without a caller")
	}
	return m.ident.Identify(int(fc.Pid))
}

// errno is the one place an error becomes what the container sees. Every
// error is logged on the host: refusals with the rule that refused, host
// errors with the host operation, path and data.
func (m *mount) errno(ctx context.Context, op, vpath string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var pid uint32
	if fc, ok := fuse.FromContext(ctx); ok {
		pid = fc.Pid
	}
	var ref *access.Refusal
	if errors.As(err, &ref) {
		m.log.Warn("refused", "rule", ref.Rule, "op", op, "path", "/"+vpath,
			"errno", errName(ref.Errno), "caller", ref.Caller.String())
		return ref.Errno
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		m.log.Info("host refused", "op", op, "path", "/"+vpath, "errno", errName(errno),
			"tid", pid, "detail", err.Error())
		return errno
	}
	if errors.Is(err, access.ErrGone) {
		// The caller is gone: nobody reads this answer.
		return syscall.ESRCH
	}
	m.log.Error("internal error", "op", op, "path", "/"+vpath, "tid", pid, "err", err)
	return syscall.EIO
}

func errName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}
