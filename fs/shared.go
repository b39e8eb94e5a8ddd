package fs

import "github.com/cgfs/cgfs/fuseconn"

// Shared is what every mount of one container takes from one budget:
// its own view and the nested views its runtimes mount. A container at
// a bound waits (requests) or goes without (relayed events files); every
// other container is served as before.
type Shared struct {
	// inflight bounds the container's requests served at once, over
	// all its mounts; more wait for a slot (the kernel keeps them
	// queued).
	inflight chan struct{}
	// watches counts the events files relayed for the container, each a
	// host inotify watch charged to host root's
	// fs.inotify.max_user_watches.
	watches *fuseconn.Watches
}

// Default bounds of one container.
const (
	// MaxInFlight is how many requests of one container are served at
	// once.
	MaxInFlight = 64
	// MaxRelayWatches bounds the events files relayed for one
	// container; files beyond it raise no inotify event (as without the
	// relay).
	MaxRelayWatches = 4096
)

// NewShared is the budget of one container: at most inFlight requests
// served at once and watches events files relayed; 0 takes the default.
func NewShared(inFlight, watches int) *Shared {
	if inFlight <= 0 {
		inFlight = MaxInFlight
	}
	if watches <= 0 {
		watches = MaxRelayWatches
	}
	return &Shared{inflight: make(chan struct{}, inFlight), watches: fuseconn.NewWatches(watches)}
}

// Watches is how many events files are relayed for the container, and
// the bound.
func (s *Shared) Watches() (n, max int64) { return s.watches.Held() }
