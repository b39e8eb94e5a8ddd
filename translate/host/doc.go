// Package host does all of cgfs's I/O on a host cgroup hierarchy,
// beneath one directory descriptor opened before the FUSE mount exists.
//
// Every name is resolved beneath that descriptor with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|
// RESOLVE_NO_XDEV), so no name a container sends can leave the delegated
// subtree and the server never walks through its own mount. Paths are
// relative to that directory ("" or "." for itself).
package host
