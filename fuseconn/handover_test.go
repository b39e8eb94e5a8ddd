package fuseconn

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDrainOfAnIdleServer: a server whose readers sleep in read(2), with
// nothing asked, still drains at once; with no descriptor of the
// connection left, the kernel then ends it.
func TestDrainOfAnIdleServer(t *testing.T) {
	mnt, conn, _ := mountStore(t, newStore(), cache(time.Second))
	var st unix.Stat_t
	if err := unix.Stat(mnt+"/d", &st); err != nil {
		t.Fatal(err)
	}
	// The case under test: a reader that nothing but a signal wakes.
	waitAsleepInRead(t, conn.clone, "an idle server")
	done := make(chan error, 1)
	go func() { done <- conn.Drain() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Drain of an idle server did not return (%d readers asleep in read(2))", asleepInRead(conn.clone))
	}
	if err := conn.Drain(); !errors.Is(err, ErrDrained) {
		t.Errorf("a second Drain: %v, want ErrDrained", err)
	}
	stat := make(chan error, 1) // of a name the kernel never looked up: a request
	go func() { stat <- unix.Stat(mnt+"/f", &st) }()
	select {
	case err := <-stat:
		if !errors.Is(err, unix.ENOTCONN) {
			t.Errorf("stat of a drained connection nobody holds: %v, want ENOTCONN", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("stat of a drained connection nobody holds waits: the connection lives on")
	}
}

// TestForgetOfEarlierLookups: the kernel counts the lookups of a node
// over every server of its connection, and forgets them all at once (a
// FORGET of its whole count, when the inode goes); the server taking
// over, which holds the node for fewer, gives back only what it holds,
// and serves on.
func TestForgetOfEarlierLookups(t *testing.T) {
	s := newStore()
	// No entry cached: every path walk is a LOOKUP, one more for the
	// kernel each.
	mnt, first, _ := mountStore(t, s, cache(0))
	if err := unix.Mkdir(mnt+"/x", 0o755); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	for range 3 { // x has four lookups from the first server (MKDIR's too)
		if err := unix.Stat(mnt+"/x", &st); err != nil {
			t.Fatal(err)
		}
	}
	x, _, _ := s.lookup(1, "x")
	second, fs := handOver(t, first, s, cache(0), nil)
	// The second server learns x (one lookup of its own), and then the
	// kernel forgets x with every lookup it counted.
	if err := unix.Stat(mnt+"/x", &st); err != nil {
		t.Fatalf("stat after the takeover: %v", err)
	}
	if err := unix.Rmdir(mnt + "/x"); err != nil {
		t.Fatalf("rmdir after the takeover: %v", err)
	}
	waitForgotten(t, fs, x, "the server that took over did not forget a node the kernel forgot")
	if err := unix.Stat(mnt+"/x", &st); !errors.Is(err, unix.ENOENT) {
		t.Errorf("stat of the removed directory: %v, want ENOENT", err)
	}
	select {
	case <-second.Done():
		t.Fatal("the server stopped after the kernel forgot a node it had looked up before the takeover")
	default:
	}
	if b, err := readFile(mnt + "/f"); err != nil || b != "f\n" {
		t.Errorf("f after the forget: %q, %v", b, err)
	}
	// x again is a new directory, and a new node.
	if err := unix.Mkdir(mnt+"/x", 0o755); err != nil {
		t.Fatalf("mkdir x again: %v", err)
	}
	if err := unix.Stat(mnt+"/x", &st); err != nil {
		t.Errorf("stat of the new x: %v", err)
	}
	if err := unix.Rmdir(mnt + "/x"); err != nil {
		t.Errorf("rmdir of the new x: %v", err)
	}
	select {
	case r := <-fs.srv.panicked:
		t.Errorf("a request panicked in the server that took over (go-fuse's lookup count went below zero?): %v", r)
	default:
	}
}

// TestFilesRacingTheEnd: copies of a connection taken while it ends (a
// keeper's copy as the container goes) are copies of it or an error,
// never of a file that took the closed number; under -race, they and
// the end share no unguarded descriptor.
func TestFilesRacingTheEnd(t *testing.T) {
	for range 20 {
		_, conn, _ := mountStore(t, newStore(), cache(time.Second))
		copies := make(chan error, 1)
		go func() {
			for {
				master, root, err := conn.Files()
				if err != nil {
					copies <- err
					return
				}
				var st unix.Stat_t
				if err := unix.Fstat(int(master.Fd()), &st); err == nil && st.Rdev != unix.Mkdev(10, 229) {
					copies <- fmt.Errorf("a copy of the connection is not /dev/fuse (rdev %#x)", st.Rdev)
					return
				}
				master.Close()
				if root != nil {
					root.Close()
				}
			}
		}()
		conn.Stop()
		if err := <-copies; err == nil || !strings.Contains(err.Error(), "the connection has ended") {
			t.Errorf("a copy taken as the connection ends: %v, want \"the connection has ended\"", err)
		}
	}
}
