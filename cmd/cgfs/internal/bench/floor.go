package bench

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The floor is the least any go-fuse server can cost for these files: a
// loopback of the host directory, built with cgfs's mount options, whose
// entries and attributes the kernel caches for an hour and whose opens
// the kernel serves by passthrough, with no flush at close. Whatever a
// view costs beyond it is cgfs's own.

// floorNode is go-fuse's loopback node with FOPEN_NOFLUSH, as cgfs's.
type floorNode struct{ *gofs.LoopbackNode }

var _ = (gofs.NodeWrapChilder)((*floorNode)(nil))

func (n *floorNode) WrapChild(ctx context.Context, ops gofs.InodeEmbedder) gofs.InodeEmbedder {
	return &floorNode{ops.(*gofs.LoopbackNode)}
}

var _ = (gofs.NodeOpener)((*floorNode)(nil))

func (n *floorNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	return fh, fl | fuse.FOPEN_NOFLUSH, errno
}

// FloorMain serves the floor of the host directory src at mnt until
// SIGTERM or SIGINT; it prints "ready" once mounted.
func FloorMain(src, mnt string) error {
	loop, err := gofs.NewLoopbackRoot(src)
	if err != nil {
		return err
	}
	rootNode := &floorNode{loop.(*gofs.LoopbackNode)}
	hour := time.Hour
	zero := time.Duration(0)
	server, err := gofs.Mount(mnt, rootNode, &gofs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:        true,
			DirectMount:       true,
			DisableXAttrs:     true,
			ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
			FsName:            "cgfs-floor",
			Name:              "cgfs-floor",
		},
		EntryTimeout:    &hour,
		AttrTimeout:     &hour,
		NegativeTimeout: &zero,
	})
	if err != nil {
		return fmt.Errorf("floor mount: %w", err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	fmt.Println("ready")
	go func() {
		<-sig
		_ = server.Unmount()
	}()
	server.Wait()
	return nil
}
