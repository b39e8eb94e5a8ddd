package proc

import (
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// maxCachedTasks bounds the pid cache (each entry holds a pidfd).
const maxCachedTasks = 1 << 16

// pidCache remembers, for live host tasks, their pid in every pid
// namespace and which namespaces those are: what never changes in a
// task's life. Each entry holds a pidfd of its task in an epoll set;
// the kernel reports the task's exit there and the entry is dropped
// before the next use, so a reused pid never meets a stale entry.
// Reads of cgroup.procs then cost no /proc access for known tasks.
// Only rendering uses it; decisions (migrations) read afresh.
type pidCache struct {
	mu    sync.Mutex
	epfd  int
	tasks map[int]cachedTask // by host tid
	byFd  map[int32]int      // pidfd -> host tid
	// events is drainLocked's buffer.
	events [256]unix.EpollEvent
	// hits and misses count translations from the cache and reads of
	// /proc.
	hits, misses uint64
}

// inlineLevels is how many pid namespace levels an entry holds: the
// entries are values in the map, so a lookup touches one place in
// memory (a read of 10,000 tasks makes 10,000 of them). Deeper tasks are
// read each time.
const inlineLevels = 4

type cachedTask struct {
	nspid [inlineLevels]int32 // pid in each namespace, the server's first
	ns    [inlineLevels]NS    // pid namespace at each level: ns[i] is at level i
	depth int32               // levels held
	pidfd int32
}

// at is the task's number in th's pid namespace, if th sees it.
func (e *cachedTask) at(th Thread) (int, bool) {
	if th.Level < int(e.depth) && e.ns[th.Level] == th.PidNS {
		return int(e.nspid[th.Level]), true
	}
	return 0, false
}

func newPidCache() (*pidCache, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &pidCache{epfd: epfd, tasks: map[int]cachedTask{}, byFd: map[int32]int{}}, nil
}

// drainLocked drops the entries of tasks that exited.
func (c *pidCache) drainLocked() {
	events := c.events[:]
	for {
		n, err := unix.EpollWait(c.epfd, events, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		for _, ev := range events[:n] {
			if tid, ok := c.byFd[ev.Fd]; ok {
				c.dropLocked(tid)
			}
		}
		if n < len(events) {
			return
		}
	}
}

func (c *pidCache) dropLocked(tid int) {
	e, ok := c.tasks[tid]
	if !ok {
		return
	}
	_ = unix.EpollCtl(c.epfd, unix.EPOLL_CTL_DEL, int(e.pidfd), nil)
	unix.Close(int(e.pidfd))
	delete(c.byFd, e.pidfd)
	delete(c.tasks, tid)
}

// Translate renders host task ids as th sees them: each id becomes its
// number in th's pid namespace and tasks th cannot see are left out.
// The order is kept, as cgroup v2 lists tasks; sorted sorts them with no
// duplicates, as cgroup v1's task lists are.
func (p *Procs) Translate(hostIDs []int, th Thread, sorted bool) []int {
	out := make([]int, 0, len(hostIDs))
	if th.Level == 0 {
		out = append(out, hostIDs...)
	} else {
		c := p.cache
		c.mu.Lock()
		c.drainLocked()
		var chains map[NS][]NS
		for _, id := range hostIDs {
			e, ok := c.tasks[id]
			if !ok {
				c.misses++
				if chains == nil {
					chains = map[NS][]NS{}
				}
				nspid, ns := p.loadLocked(id, chains)
				if th.Level < len(nspid) && ns[th.Level] == th.PidNS {
					out = append(out, nspid[th.Level])
				}
				continue // (nothing if it exited meanwhile)
			}
			c.hits++
			if n, ok := e.at(th); ok {
				out = append(out, n)
			}
		}
		c.mu.Unlock()
	}
	if !sorted {
		return out
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// CacheStats is how many task ids were translated from the pid cache
// (hits) and read from /proc (misses).
func (p *Procs) CacheStats() (hits, misses uint64) {
	p.cache.mu.Lock()
	defer p.cache.mu.Unlock()
	return p.cache.hits, p.cache.misses
}

// loadLocked reads a task's pid and pid namespace at every level and
// keeps them in the cache (if there is room); nil if it is gone. chains
// memoizes namespace chains for one Translate call.
func (p *Procs) loadLocked(tid int, chains map[NS][]NS) (nspid []int, ns []NS) {
	pin, err := p.Pin(tid)
	if err != nil {
		return nil, nil
	}
	defer pin.Close()
	tgid, nspid, err := pin.Status()
	if err != nil {
		return nil, nil
	}
	nsfd, err := pin.Namespace("pid")
	if err != nil {
		return nil, nil
	}
	own, err := nsOf(nsfd)
	if err != nil {
		unix.Close(nsfd)
		return nil, nil
	}
	chain, ok := chains[own]
	if !ok {
		chain, err = levels(nsfd, len(nspid)) // takes nsfd
		if err != nil {
			return nil, nil
		}
		chains[own] = chain
	} else {
		unix.Close(nsfd)
	}
	// The task was pinned before /proc was read: if it is still alive
	// now, what was read is its own.
	if !pin.Alive() {
		return nil, nil
	}
	c := p.cache
	if len(c.tasks) >= maxCachedTasks || len(nspid) > inlineLevels {
		return nspid, chain // not cached: read again next time
	}
	// The kernel tells of the task's exit on a pidfd. PIDFD_THREAD (Linux
	// 6.9) watches the thread itself; before it, a thread is watched
	// through its process, so an entry lives until the process exits.
	pidfd, err := unix.PidfdOpen(tid, unix.PIDFD_THREAD)
	if err != nil {
		pidfd, err = unix.PidfdOpen(tgid, 0)
	}
	if err != nil {
		return nspid, chain
	}
	if !pin.Alive() {
		unix.Close(pidfd)
		return nil, nil
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(pidfd)}
	if err := unix.EpollCtl(c.epfd, unix.EPOLL_CTL_ADD, pidfd, &ev); err != nil {
		unix.Close(pidfd)
		return nspid, chain
	}
	e := cachedTask{depth: int32(len(nspid)), pidfd: int32(pidfd)}
	for i := range nspid {
		e.nspid[i], e.ns[i] = int32(nspid[i]), chain[i]
	}
	c.tasks[tid] = e
	c.byFd[int32(pidfd)] = tid
	return nspid, chain
}

// levels returns the pid namespaces from level 0 (the server's) down to
// the one of nsfd, which is at level depth-1. It consumes nsfd.
func levels(nsfd, depth int) ([]NS, error) {
	up, err := Ancestry(nsfd, depth)
	if err != nil {
		return nil, err
	}
	if len(up) != depth {
		return nil, fmt.Errorf("pid namespace chain has %d levels, NSpid %d", len(up), depth)
	}
	chain := make([]NS, depth)
	for i, a := range up {
		chain[depth-1-i] = a.NS
	}
	return chain, nil
}

// Close releases what the task cache holds (its epoll set and pidfds).
// The Procs is not used afterwards.
func (p *Procs) Close() {
	c := p.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	for tid := range c.tasks {
		c.dropLocked(tid)
	}
	if c.epfd >= 0 {
		unix.Close(c.epfd)
		c.epfd = -1
	}
}
