// Package fuseconn is the life of a FUSE connection, apart from the
// files it serves: it makes the connection (a detached mount), serves it
// with go-fuse, drains it and hands it to the next server process, lets
// a new server inherit what the kernel holds of an earlier one (node ids
// and file handles), relays host inotify events through its mount, and
// aborts it through the FUSE control filesystem.
//
// The nodes a connection serves are someone else's (package fs): they
// come as go-fuse's node bridge (FS), built with ExternalNodeID.
//
// The hand-over relies on go-fuse's internals, each named by a test that
// fails, saying "go-fuse assumption broken", if an upgrade breaks it
// (gofuse_test.go): NewServer answers INIT before it returns
// (TestGoFuseAnswersINITInNewServer); go-fuse serves its descriptor by
// number, so dup3 over it hands it the connection
// (TestGoFuseServesItsDescriptorNumber); its readers sleep in read(2) and
// end on EAGAIN once SIGURG wakes them (TestGoFuseReadersEndOnSIGURG);
// a LOOKUP of "." holds one lookup of a node, and revives an unknown one
// through LookupNode (TestGoFuseLookupCounts); node ids are inode numbers
// (TestGoFuseNodeIDsAreInodeNumbers); file handles fit in 32 bits
// (TestGoFuseFileHandlesFit32Bits).
package fuseconn
