// Package fuseconn is the life of a FUSE connection, apart from the
// files it serves: it makes the connection (a detached mount), serves it
// with go-fuse, drains it and hands it to the next server process, lets
// a new server inherit what the kernel holds of an earlier one (node ids
// and file handles), relays host inotify events through its mount, and
// aborts it through the FUSE control filesystem.
//
// The nodes a connection serves are someone else's (package fs): they
// come as go-fuse's node bridge (FS), built with ExternalNodeID.
package fuseconn
