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
	tasks map[int]*cachedTask // by host tid
	byFd  map[int32]int       // pidfd -> host tid
}

type cachedTask struct {
	nspid []int // pid in each namespace, the server's first
	ns    []NS  // pid namespace at each level: ns[i] is at level i
	pidfd int
}

func newPidCache() (*pidCache, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &pidCache{epfd: epfd, tasks: map[int]*cachedTask{}, byFd: map[int32]int{}}, nil
}

// drainLocked drops the entries of tasks that exited.
func (c *pidCache) drainLocked() {
	events := make([]unix.EpollEvent, 256)
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
	e := c.tasks[tid]
	if e == nil {
		return
	}
	_ = unix.EpollCtl(c.epfd, unix.EPOLL_CTL_DEL, e.pidfd, nil)
	unix.Close(e.pidfd)
	delete(c.byFd, int32(e.pidfd))
	delete(c.tasks, tid)
}

// Translate renders host task ids as th sees them: each id becomes its
// number in th's pid namespace, tasks th cannot see are left out, and
// the result is sorted with no duplicates, as the kernel shows
// cgroup.procs to a reader in a pid namespace.
func (p *Procs) Translate(hostIDs []int, th Thread) []int {
	out := make([]int, 0, len(hostIDs))
	if th.Level == 0 {
		out = append(out, hostIDs...)
	} else {
		c := p.cache
		c.mu.Lock()
		c.drainLocked()
		chains := map[NS][]NS{}
		for _, id := range hostIDs {
			e := c.tasks[id]
			if e == nil {
				e = p.loadLocked(id, chains)
				if e == nil {
					continue // exited meanwhile
				}
			}
			if len(e.nspid) > th.Level && e.ns[th.Level] == th.PidNS {
				out = append(out, e.nspid[th.Level])
			}
		}
		c.mu.Unlock()
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// loadLocked reads a task into the cache (if there is room). chains
// memoizes namespace chains for one Translate call.
func (p *Procs) loadLocked(tid int, chains map[NS][]NS) *cachedTask {
	pin, err := p.Pin(tid)
	if err != nil {
		return nil
	}
	defer pin.Close()
	tgid, nspid, err := pin.Status()
	if err != nil {
		return nil
	}
	nsfd, err := pin.Namespace("pid")
	if err != nil {
		return nil
	}
	own, err := nsOf(nsfd)
	if err != nil {
		unix.Close(nsfd)
		return nil
	}
	chain, ok := chains[own]
	if !ok {
		chain, err = levels(nsfd, len(nspid)) // takes nsfd
		if err != nil {
			return nil
		}
		chains[own] = chain
	} else {
		unix.Close(nsfd)
	}
	// The task was pinned before /proc was read: if it is still alive
	// now, what was read is its own.
	if !pin.Alive() {
		return nil
	}
	e := &cachedTask{nspid: nspid, ns: chain, pidfd: -1}
	c := p.cache
	if len(c.tasks) >= maxCachedTasks {
		return e
	}
	// The kernel tells of the task's exit on a pidfd. PIDFD_THREAD (Linux
	// 6.9) watches the thread itself; before it, a thread is watched
	// through its process, so an entry lives until the process exits.
	pidfd, err := unix.PidfdOpen(tid, unix.PIDFD_THREAD)
	if err != nil {
		pidfd, err = unix.PidfdOpen(tgid, 0)
	}
	if err != nil {
		return e // not cached: read again next time
	}
	if !pin.Alive() {
		unix.Close(pidfd)
		return nil
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(pidfd)}
	if err := unix.EpollCtl(c.epfd, unix.EPOLL_CTL_ADD, pidfd, &ev); err != nil {
		unix.Close(pidfd)
		return e
	}
	e.pidfd = pidfd
	c.tasks[tid] = e
	c.byFd[int32(pidfd)] = tid
	return e
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
