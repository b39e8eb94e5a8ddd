// Package fs holds the FUSE nodes of a cgfs view.
//
// The package is thin on purpose: each operation takes the caller from
// the request context, asks package access whether it may proceed and
// package translate to do it on the host, and turns the result into an
// errno in one place (errno.go). No path, pid or permission logic lives
// here.
package fs
