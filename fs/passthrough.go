package fs

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// An open regular file whose layer has an extracted tree is served from
// that tree's file. With passthrough (DESIGN step 4; Linux 6.9+, as root)
// the file is handed to the kernel, which then reads it without asking the
// daemon at all; elsewhere, or when the kernel refuses, Read serves it.
//
// The kernel holds an inode in one io mode at a time: while any open of it
// is passthrough every open must be, and while any is cached none may be
// (a mismatch fails the open with EIO). So the mode is chosen by the first
// open of an inode and kept until its last release.

// fileHandle is an open regular file. f holds its bytes when its layer has
// a tree; pt marks a handle opened in passthrough mode.
type fileHandle struct {
	in *inode
	f  *os.File
	pt bool
}

var (
	_ fusefs.FilePassthroughFder = (*fileHandle)(nil)
	_ fusefs.FileReleaser        = (*fileHandle)(nil)
)

// PassthroughFd gives go-fuse the file to register with the kernel. It is
// asked only for the first passthrough open of an inode; later ones reuse
// the registration.
func (h *fileHandle) PassthroughFd() (int, bool) {
	if !h.pt || h.f == nil {
		return 0, false
	}
	h.in.im.passthroughFiles.Add(1)
	return int(h.f.Fd()), true
}

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	in := h.in
	in.omu.Lock()
	if in.opens--; in.opens == 0 {
		in.pt = false
	}
	in.omu.Unlock()
	if h.f != nil {
		h.f.Close()
	}
	return 0
}

// open returns the handle for a new open of a regular file.
func (in *inode) open() *fileHandle {
	var f *os.File
	if n, err := in.data(); err == nil { // Open checked it
		f = in.im.openFile(n)
	}
	in.omu.Lock()
	defer in.omu.Unlock()
	if in.opens == 0 {
		in.pt = f != nil && in.im.passthrough
	}
	// An open joining passthrough opens of the inode without a file of its
	// own (the layer's tree was dropped meanwhile) still goes through the
	// kernel: go-fuse hands it the backing file the first open registered,
	// checked when it was opened.
	in.opens++
	return &fileHandle{in: in, f: f, pt: in.pt}
}

// read serves a read of an open file from its tree file.
func (h *fileHandle) read(n *Node, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= n.Size {
		return fuse.ReadResultData(nil), 0
	}
	if rem := n.Size - off; int64(len(dest)) > rem {
		dest = dest[:rem]
	}
	got, err := h.f.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		h.in.im.log.Error("reading an extracted layer file", "file", h.f.Name(), "err", err)
		return nil, syscall.EIO
	}
	h.in.im.hit(kindFile)
	h.in.im.bytesServed.Add(int64(got))
	h.in.im.layers[n.Layer].served.Add(int64(got))
	return fuse.ReadResultData(dest[:got]), 0
}
