// Command nodeinit is pid 1 of a test node's pid namespace, started in
// the node's own mount namespace. It makes the mounts the harness lists
// in $CGFS_NODE_MOUNTS (JSON), says "ready" on its standard output,
// then reaps orphans until SIGTERM or SIGINT, or until its standard
// input ends (the harness is gone). When it exits, the kernel kills
// every process left in the namespace.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// mount is one mount(2) call; Mkdir creates the target first.
type mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	Mkdir                  bool
}

func main() {
	var mounts []mount
	if err := json.Unmarshal([]byte(os.Getenv("CGFS_NODE_MOUNTS")), &mounts); err != nil {
		fail("reading $CGFS_NODE_MOUNTS: %v", err)
	}
	for _, m := range mounts {
		if m.Mkdir {
			if err := os.MkdirAll(m.Target, 0o755); err != nil {
				fail("%v", err)
			}
		}
		if err := syscall.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil {
			fail("mount %q on %s (type %q, flags %#x, %q): %v", m.Source, m.Target, m.FSType, m.Flags, m.Data, err)
		}
	}
	if err := os.Chdir("/"); err != nil {
		fail("%v", err)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("ready")
	os.Stdout.Close()

	gone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(gone)
	}()
	// SIGCHLDs coalesce: reap on each, and now and then besides.
	tick := time.NewTicker(time.Second)
	for {
		select {
		case s := <-sigs:
			if s != syscall.SIGCHLD {
				fmt.Fprintf(os.Stderr, "nodeinit: %v, exiting\n", s)
				os.Exit(0)
			}
		case <-tick.C:
		case <-gone:
			fmt.Fprintln(os.Stderr, "nodeinit: standard input ended, exiting")
			os.Exit(0)
		}
		reap()
	}
}

func reap() {
	for {
		var ws syscall.WaitStatus
		if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
			return
		}
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nodeinit: "+format+"\n", args...)
	os.Exit(1)
}
