package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDaemonThreadsRunEachJobOnASetUpThread: jobs given at once from
// many goroutines each run on one of the pool's threads, after its setup
// (which may change the thread for good); a setup that failed fails
// every job of its thread; stop waits for the threads.
func TestDaemonThreadsRunEachJobOnASetUpThread(t *testing.T) {
	var mu sync.Mutex
	setUp := map[int]bool{}
	pool := newDaemonThreads(3, func() error {
		mu.Lock()
		defer mu.Unlock()
		setUp[unix.Gettid()] = true
		return nil
	})
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := pool.do(func() error {
				mu.Lock()
				defer mu.Unlock()
				if !setUp[unix.Gettid()] {
					return errors.New("a job ran on a thread that was not set up")
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	pool.stop()
	if len(setUp) != 3 {
		t.Errorf("%d threads set up, want 3", len(setUp))
	}

	failed := newDaemonThreads(2, func() error { return errors.New("no namespace") })
	defer failed.stop()
	ran := false
	if err := failed.do(func() error { ran = true; return nil }); err == nil || err.Error() != "no namespace" || ran {
		t.Errorf("a job on a thread whose setup failed: %v (ran %v), want the setup's error and not run", err, ran)
	}
}

// TestWorkerAnswersEachRequest: the bench's worker (the command of its
// containers) answers each JSON line with one: a measure, a write done,
// or what failed, and ends with its input.
func TestWorkerAnswersEachRequest(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("max\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- WorkerMain(inR, outW)
		outW.Close()
	}()
	replies := bufio.NewScanner(outR)
	next := func() reply {
		t.Helper()
		if !replies.Scan() {
			t.Fatal("the worker said nothing more")
		}
		var r reply
		if err := json.Unmarshal(replies.Bytes(), &r); err != nil {
			t.Fatalf("reply %q: %v", replies.Text(), err)
		}
		return r
	}
	if r := next(); !strings.HasPrefix(r.Err, "ready ") {
		t.Fatalf("the worker began with %+v, want ready", r)
	}
	ask := func(req string) reply {
		t.Helper()
		if _, err := io.WriteString(inW, req+"\n"); err != nil {
			t.Fatal(err)
		}
		return next()
	}
	for _, kind := range []string{"orc", "pread"} {
		if r := ask(`{"op":"` + kind + `","path":"` + file + `","rounds":2}`); r.Err != "" || r.US <= 0 {
			t.Errorf("%s of a file: %+v, want a time", kind, r)
		}
	}
	if r := ask(`{"op":"write","path":"` + file + `","data":"5"}`); r.Err != "" {
		t.Errorf("write: %+v", r)
	}
	if b, _ := os.ReadFile(file); string(b) != "5" {
		t.Errorf("the file after the worker's write: %q", b)
	}
	if r := ask(`{"op":"orc","path":"` + filepath.Join(dir, "missing") + `"}`); !strings.Contains(r.Err, "no such file") {
		t.Errorf("a measure of a missing file: %+v, want its error", r)
	}
	if r := ask(`not json`); r.Err == "" {
		t.Errorf("a line that is no request: %+v, want an error", r)
	}
	inW.Close()
	if c := <-code; c != 0 {
		t.Errorf("the worker ended %d at the end of its input, want 0", c)
	}
}
