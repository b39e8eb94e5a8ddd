package access

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cgfs/cgfs/proc"
)

// What never changes in a task's life is remembered, so that a request
// costs a few system calls instead of a walk of /proc and of the user
// namespace tree. A thread's pid namespace, thread group and ids are
// fixed for its life; a user namespace's ancestry is fixed for the
// namespace's. Capabilities and the thread's user namespace can change
// at any time, so each request reads them afresh (capget, and a stat of
// ns/user compared with the remembered chain's namespace); fsuid and
// fsgid come with the request.
//
// A remembered task is held by its pin (its /proc directory): once the
// task exits the pin says so (Alive) and the entry is read again, so a
// reused id never meets another task's facts. A remembered chain holds
// its namespace open, so its inode number cannot be reused while the
// entry lives. Both are bounded; what is full forgets some entries.

// Bounds of what an Identifier remembers: each entry holds one
// descriptor.
const (
	maxKnownTasks  = 4096
	maxKnownChains = 256
)

type knownTask struct {
	pin    *proc.Pin
	thread *proc.Thread // nil until a task file needed it
	// refs counts the requests using pin; an entry dropped while in use
	// (gone) is closed by the last of them.
	refs int
	gone bool
}

type knownChain struct {
	fd    int // the namespace, held
	chain []proc.Ancestor
}

type memory struct {
	mu     sync.Mutex
	tasks  map[int]*knownTask
	chains map[proc.NS]*knownChain
	closed bool // Close: nothing is remembered any more
}

// pin returns a pin of host task tid, shared with the memory until
// release, and its thread facts if known. The task may have exited and
// its id been reused since the pin was taken: requests check Alive after
// every read, and a request that finds the pin dead forgets it.
func (id *Identifier) pin(tid int) (*knownTask, *proc.Thread, error) {
	m := &id.known
	m.mu.Lock()
	if k := m.tasks[tid]; k != nil {
		k.refs++
		th := k.thread
		m.mu.Unlock()
		return k, th, nil
	}
	m.mu.Unlock()
	p, err := id.procs.Pin(tid)
	if err != nil {
		return nil, nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tasks == nil {
		m.tasks = map[int]*knownTask{}
	}
	if old := m.tasks[tid]; old != nil {
		m.dropLocked(tid, old)
	}
	if m.closed { // this request's alone: its Done closes it
		return &knownTask{pin: p, refs: 1, gone: true}, nil, nil
	}
	if len(m.tasks) >= maxKnownTasks {
		m.evictTasksLocked()
	}
	k := &knownTask{pin: p, refs: 1}
	m.tasks[tid] = k
	return k, nil, nil
}

// release ends a request's use of k; forget drops it too (its task is
// gone).
func (id *Identifier) release(k *knownTask, forget bool) {
	m := &id.known
	m.mu.Lock()
	defer m.mu.Unlock()
	if forget && m.tasks[k.pin.Tid()] == k {
		m.dropLocked(k.pin.Tid(), k)
	}
	k.refs--
	if k.gone && k.refs == 0 {
		k.pin.Close()
	}
}

// dropLocked forgets k, closing its pin unless a request uses it.
func (m *memory) dropLocked(tid int, k *knownTask) {
	delete(m.tasks, tid)
	k.gone = true
	if k.refs == 0 {
		k.pin.Close()
	}
}

// rememberThread keeps th as the facts of the task pinned by p (the
// caller checked p alive after reading th through it).
func (id *Identifier) rememberThread(p *proc.Pin, th proc.Thread) {
	m := &id.known
	m.mu.Lock()
	defer m.mu.Unlock()
	if k := m.tasks[p.Tid()]; k != nil && k.thread == nil && k.pin == p {
		k.thread = &th // read through this very pin, alive after
	}
}

// evictTasksLocked forgets a quarter of what it remembers, whichever:
// no system call under the lock (a dead entry is found dead, and read
// again, by the request that meets it).
func (m *memory) evictTasksLocked() {
	for tid, k := range m.tasks {
		if len(m.tasks) < maxKnownTasks*3/4 {
			break
		}
		m.dropLocked(tid, k)
	}
}

// chain returns the ancestry of the pinned task's user namespace ns,
// remembered or read through the pin.
func (id *Identifier) chain(p *proc.Pin, ns proc.NS) ([]proc.Ancestor, error) {
	m := &id.known
	m.mu.Lock()
	if c := m.chains[ns]; c != nil {
		m.mu.Unlock()
		return c.chain, nil
	}
	m.mu.Unlock()
	fd, err := p.Namespace("user")
	if err != nil {
		return nil, ErrGone
	}
	chain, err := proc.UserNSAncestry(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if len(chain) == 0 || chain[0].NS != ns {
		unix.Close(fd) // the task changed namespaces meanwhile: not remembered
		return chain, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.chains == nil {
		m.chains = map[proc.NS]*knownChain{}
	}
	if m.chains[ns] != nil || m.closed {
		unix.Close(fd)
		return chain, nil
	}
	if len(m.chains) >= maxKnownChains {
		for k, c := range m.chains { // any: a namespace's chain is cheap to read again
			unix.Close(c.fd)
			delete(m.chains, k)
			break
		}
	}
	m.chains[ns] = &knownChain{fd: fd, chain: chain}
	return chain, nil
}

// Known is how many tasks and user namespaces the identifier remembers.
func (id *Identifier) Known() (tasks, chains int) {
	id.known.mu.Lock()
	defer id.known.mu.Unlock()
	return len(id.known.tasks), len(id.known.chains)
}

// Close forgets what the identifier remembers and closes what that holds
// (a pin a request still uses is closed by its Done); from then on it
// remembers nothing, and every request reads its caller afresh. An
// identifier of views that are gone (a container's nested views) would
// otherwise keep up to maxKnownTasks+maxKnownChains descriptors open for
// as long as the server runs, of tasks long dead among them.
func (id *Identifier) Close() {
	m := &id.known
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for tid, k := range m.tasks {
		m.dropLocked(tid, k)
	}
	for ns, c := range m.chains {
		unix.Close(c.fd)
		delete(m.chains, ns)
	}
}
