// Package translate maps a container's view of its cgroup tree onto the
// host hierarchy and performs every host cgroup access cgfs makes.
//
// All host I/O goes through Host, which is rooted at a directory file
// descriptor opened before the FUSE mount exists. Every name is resolved
// beneath that descriptor with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
// RESOLVE_NO_MAGICLINKS|RESOLVE_NO_XDEV), so no name a container sends can
// leave the delegated subtree and the server never walks through its own
// mount.
//
// View adds the container's side: virtual paths as the container sees
// them, checked for odd names, translated to host paths.
package translate
