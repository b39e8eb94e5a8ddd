// Package loglimit bounds the host log lines callers can cause: a burst,
// then one line an interval; the next line written says how many were
// suppressed before it, under the key "suppressed".
package loglimit

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Key is the key under which a line says how many before it were
// suppressed.
const Key = "suppressed"

// Limiter is one budget of log lines: a burst of lines at once, then
// one every interval (a token bucket of burst tokens, one more every
// interval, kept as the time the bucket would be full again).
type Limiter struct {
	every     time.Duration // the steady rate: one line each
	tolerance time.Duration // how far ahead of now full may be: (burst-1) * every
	now       func() time.Time

	mu sync.Mutex
	// full is when the budget is whole again ("theoretical arrival
	// time"); a line may be written while it is at most tolerance ahead.
	full       time.Time
	last       time.Time // the last Take, for Keyed
	suppressed int
}

// New is a budget of burst lines at once, then one every interval.
func New(burst int, every time.Duration) *Limiter {
	return &Limiter{every: every, tolerance: time.Duration(max(burst, 1)-1) * every, now: time.Now}
}

// Take reports whether a line may be written now, and how many were
// suppressed since the last one written.
func (l *Limiter) Take() (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.last = now
	full := l.full
	if full.Before(now) {
		full = now
	}
	if full.Sub(now) > l.tolerance {
		l.suppressed++
		return 0, false
	}
	l.full = full.Add(l.every)
	n := l.suppressed
	l.suppressed = 0
	return n, true
}

// Log writes msg with args at level to log, with how many lines were
// suppressed before it (Key), if the budget has a line now.
func (l *Limiter) Log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	if n, ok := l.Take(); ok {
		log.Log(context.Background(), level, msg, append(args, Key, n)...)
	}
}

// Keyed is a budget of lines per key (a user, say): each key's New(burst,
// every). Once it holds more than max keys, a new key makes it forget
// those that took no line for a minute.
type Keyed[K comparable] struct {
	burst int
	every time.Duration
	max   int
	now   func() time.Time

	mu   sync.Mutex // before each Limiter's
	keys map[K]*Limiter
}

// forgetAfter is how long a key of a Keyed takes no line before it may
// be forgotten.
const forgetAfter = time.Minute

// NewKeyed is a budget of burst lines at once, then one every interval,
// for each key; it forgets keys quiet for a minute beyond max keys.
func NewKeyed[K comparable](burst int, every time.Duration, max int) *Keyed[K] {
	return &Keyed[K]{burst: burst, every: every, max: max, now: time.Now, keys: map[K]*Limiter{}}
}

// Take is Limiter.Take of key's budget.
func (k *Keyed[K]) Take(key K) (suppressed int, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l := k.keys[key]
	if l == nil {
		if len(k.keys) > k.max { // forget the quiet ones: bounded by keys
			now := k.now()
			for key, l := range k.keys {
				l.mu.Lock()
				quiet := now.Sub(l.last) > forgetAfter
				l.mu.Unlock()
				if quiet {
					delete(k.keys, key)
				}
			}
		}
		l = New(k.burst, k.every)
		l.now = k.now
		k.keys[key] = l
	}
	return l.Take()
}

// Log is Limiter.Log of key's budget.
func (k *Keyed[K]) Log(key K, log *slog.Logger, level slog.Level, msg string, args ...any) {
	if n, ok := k.Take(key); ok {
		log.Log(context.Background(), level, msg, append(args, Key, n)...)
	}
}
