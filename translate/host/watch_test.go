package host

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openPath(t *testing.T, path string) *os.File {
	t.Helper()
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), path)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestWatcherTellsOfChanges: every subscriber of a file hears of a write
// to it; a cancelled one no more.
func TestWatcherTellsOfChanges(t *testing.T) {
	w, err := NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	path := filepath.Join(t.TempDir(), "cgroup.events")
	if err := os.WriteFile(path, []byte("populated 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, b := make(chan struct{}, 8), make(chan struct{}, 8)
	cancelA, err := w.Watch(openPath(t, path), func() { a <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Watch(openPath(t, path), func() { b <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if got := w.Watches(); got != 1 {
		t.Errorf("two subscribers of one file hold %d kernel watches, want 1", got)
	}
	// One write(2) at offset 0, no truncation: one IN_MODIFY, as the
	// kernel's own change of a control file is.
	write := func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("populated 1\n"), 0); err != nil {
			t.Fatal(err)
		}
	}
	write()
	for name, c := range map[string]chan struct{}{"a": a, "b": b} {
		select {
		case <-c:
		case <-time.After(5 * time.Second):
			t.Fatalf("subscriber %s heard of no change", name)
		}
	}
	cancelA()
	write()
	select {
	case <-b:
	case <-time.After(5 * time.Second):
		t.Fatal("subscriber b heard of no second change")
	}
	select {
	case <-a:
		t.Error("a cancelled subscriber still hears of changes")
	case <-time.After(100 * time.Millisecond):
	}
}

// TestWatcherIsBounded: past its bound a watcher takes no more files
// (ENOSPC), so that containers cannot use up host root's inotify watches.
func TestWatcherIsBounded(t *testing.T) {
	w, err := NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.max = 2
	dir := t.TempDir()
	for i, name := range []string{"a", "b", "c"} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := w.Watch(openPath(t, path), func() {})
		if i < 2 && err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
		if i == 2 && !errors.Is(err, unix.ENOSPC) {
			t.Errorf("watch past the bound = %v, want ENOSPC", err)
		}
	}
}
