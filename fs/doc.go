// Package fs holds the FUSE nodes of a cgfs mount.
//
// The package is thin on purpose: each operation starts one
// access.Request for its caller (identified at most once, only if a
// decision needs it), calls one method of the translate.View it serves
// with plain values, and turns the result into an errno, a host log line
// and a count in one place (errno.go). No file names, pid or permission
// logic live here, and nothing of the FUSE connection's life (made,
// handed over, inherited, relayed, aborted): that is package fuseconn's,
// which serves these nodes (Serve).
package fs
