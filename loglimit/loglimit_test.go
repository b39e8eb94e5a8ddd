package loglimit

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a time the test moves.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newAt(c *clock, burst int, every time.Duration) *Limiter {
	l := New(burst, every)
	l.now = c.now
	return l
}

// takes takes n lines and says how many were written.
func takes(l *Limiter, n int) (written int) {
	for range n {
		if _, ok := l.Take(); ok {
			written++
		}
	}
	return written
}

func TestBurst(t *testing.T) {
	for _, burst := range []int{1, 20, 100} {
		c := &clock{t: time.Unix(1000, 0)}
		l := newAt(c, burst, 500*time.Millisecond)
		if got := takes(l, burst+50); got != burst {
			t.Errorf("New(%d, 500ms): %d lines at once written, want %d", burst, got, burst)
		}
	}
}

func TestRate(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := newAt(c, 100, 500*time.Millisecond)
	takes(l, 100) // the burst
	cases := []struct {
		after time.Duration
		want  bool
	}{
		{0, false},
		{499 * time.Millisecond, false},
		{time.Millisecond, true}, // 500 ms after the burst: one more
		{0, false},
		{10 * time.Second, true}, // 20 lines' worth, which come at once
	}
	for i, tc := range cases {
		c.advance(tc.after)
		if _, ok := l.Take(); ok != tc.want {
			t.Errorf("step %d (+%v): Take() ok = %v, want %v", i, tc.after, ok, tc.want)
		}
	}
	if got := takes(l, 50); got != 19 {
		t.Errorf("after 10 s: %d more lines at once, want 19 (20 a 10 s, at 2 a second)", got)
	}
	// Idle long: the burst again, never more.
	c.advance(time.Hour)
	if got := takes(l, 150); got != 100 {
		t.Errorf("after an hour: %d lines at once, want the burst of 100", got)
	}
}

// TestOneASecond: a burst of one is at most one line a second, the
// next allowed a second after the last written, however many came
// between.
func TestOneASecond(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := newAt(c, 1, time.Second)
	for i, step := range []struct {
		after time.Duration
		want  bool
	}{{0, true}, {0, false}, {999 * time.Millisecond, false}, {time.Millisecond, true}, {300 * time.Millisecond, false}, {700 * time.Millisecond, true}} {
		c.advance(step.after)
		if _, ok := l.Take(); ok != step.want {
			t.Errorf("step %d (+%v): ok = %v, want %v", i, step.after, ok, step.want)
		}
	}
}

func TestSuppressedCount(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := newAt(c, 2, time.Second)
	for i, want := range []int{0, 0} {
		if n, ok := l.Take(); !ok || n != want {
			t.Fatalf("line %d: Take() = %d, %v; want %d, true", i, n, ok, want)
		}
	}
	for range 7 {
		if n, ok := l.Take(); ok || n != 0 {
			t.Fatalf("beyond the burst: Take() = %d, %v; want 0, false", n, ok)
		}
	}
	c.advance(time.Second)
	if n, ok := l.Take(); !ok || n != 7 {
		t.Errorf("the next line written: Take() = %d, %v; want 7 suppressed before it", n, ok)
	}
	c.advance(time.Second)
	if n, ok := l.Take(); !ok || n != 0 {
		t.Errorf("the one after: Take() = %d, %v; want 0 (the count starts again)", n, ok)
	}
}

func TestLogSaysSuppressed(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	l := newAt(c, 1, time.Second)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	for range 4 {
		l.Log(log, slog.LevelWarn, "refused", "op", "mkdir")
	}
	c.advance(time.Second)
	l.Log(log, slog.LevelWarn, "refused", "op", "rmdir")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "level=WARN msg=refused op=mkdir suppressed=0") ||
		!strings.Contains(lines[1], "op=rmdir suppressed=3") {
		t.Errorf("logged:\n%s\nwant two lines, suppressed=0 then suppressed=3", buf.String())
	}
}

// TestConcurrentTakes: lines taken at once by many goroutines are
// counted once each (run under -race).
func TestConcurrentTakes(t *testing.T) {
	l := New(100, time.Hour)
	var mu sync.Mutex
	written, suppressed := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				n, ok := l.Take()
				mu.Lock()
				if ok {
					written++
				}
				suppressed += n
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if written != 100 || suppressed != 0 {
		t.Errorf("400 lines at once: %d written (%d said suppressed), want 100 (0)", written, suppressed)
	}
	if n, _ := l.Take(); n != 0 {
		t.Errorf("the count after: %d", n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.suppressed != 301 {
		t.Errorf("%d suppressed, want 301", l.suppressed)
	}
}

func TestKeyed(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	k := NewKeyed[int](20, time.Second, 2)
	k.now = c.now
	if got := keyedTakes(k, 1, 30); got != 20 {
		t.Errorf("key 1: %d of 30 lines at once, want its burst of 20", got)
	}
	if got := keyedTakes(k, 2, 30); got != 20 {
		t.Errorf("key 2: %d of 30 lines at once, want a burst of its own", got)
	}
	c.advance(2 * time.Minute)
	keyedTakes(k, 3, 1)
	if n, ok := k.Take(1); !ok || n != 10 {
		t.Errorf("key 1, kept while at most max keys: Take() = %d, %v; want 10 suppressed", n, ok)
	}
	// Beyond max keys, a new one forgets those quiet for a minute (2 and
	// 3 now; 1 just took a line).
	c.advance(2 * time.Minute)
	keyedTakes(k, 1, 1)
	keyedTakes(k, 4, 1)
	if _, ok := k.keys[2]; ok || len(k.keys) != 2 {
		t.Errorf("keys held: %v, want 1 and 4 (2 and 3 quiet and forgotten)", keysOf(k))
	}
	if n, ok := k.Take(2); !ok || n != 0 {
		t.Errorf("key 2 forgotten: Take() = %d, %v; want a new budget", n, ok)
	}
}

func keyedTakes(k *Keyed[int], key, n int) (written int) {
	for range n {
		if _, ok := k.Take(key); ok {
			written++
		}
	}
	return written
}

func keysOf(k *Keyed[int]) []int {
	var out []int
	for key := range k.keys {
		out = append(out, key)
	}
	return out
}
