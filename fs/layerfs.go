package fs

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ocifs/ocifs/index"
)

// A mount that serves many trees (a [LayerFS]; podman's additional layer
// store) numbers its nodes so that no two trees meet: each tree has a slot,
// and the FUSE node id of a tree's node is slot<<32 | the node's ID (its
// depth-first number in the tree, below 2^32). Slot 0 is the mount's own
// directories (its root is node 1). The mount must set go-fuse's
// ExternalNodeID, so the node ids are these numbers.

// MaxSlot is the highest slot a [ServedTree] may have.
const MaxSlot = 1<<32 - 1

// ServedTree is one tree of an image ready to be served under a directory
// of a mount of many trees, in slot slot: the building block of [LayerFS].
// Its nodes serve the image's verified bytes as [Image.Mount]'s do
// (passthrough where the layer is extracted). It is immutable.
type ServedTree struct {
	im    *Image
	tree  *Tree
	layer int    // the layer whose view tree is
	base  uint64 // slot << 32
	gen   uint64 // the generation of every node's handle
}

// NewServedTree returns layer layer's view tree of the loaded image im (from
// [Image.LayerView]) for slot slot (1 to [MaxSlot]). The generation of its
// handles is a digest of the DiffIDs up to the layer and the numbered view
// (identity.go), so the same view in the same slot gives the same handles
// in every daemon.
func NewServedTree(im *Image, tree *Tree, layer int, slot uint64) (*ServedTree, error) {
	switch {
	case slot == 0 || slot > MaxSlot:
		return nil, fmt.Errorf("serve tree: slot %d, want 1 to %d", slot, uint64(MaxSlot))
	case layer < 0 || layer >= len(im.layers):
		return nil, fmt.Errorf("serve tree: layer %d of an image of %d layers", layer, len(im.layers))
	case im.prog != nil:
		return nil, fmt.Errorf("serve tree: a progressive load's nodes change: load the image without Options.Progressive")
	case tree == nil || tree.Root == nil || tree.Root.ID != 1:
		return nil, fmt.Errorf("serve tree: the tree's root is not node 1")
	case uint64(tree.Nodes) >= 1<<32:
		return nil, fmt.Errorf("serve tree: %d nodes do not fit a slot", tree.Nodes)
	}
	diffIDs := make([]string, layer+1)
	for i := range diffIDs {
		diffIDs[i] = im.layers[i].diffID.String()
	}
	return &ServedTree{im: im, tree: tree, layer: layer, base: slot << 32, gen: uint64(treeGeneration(diffIDs, tree))}, nil
}

// Root returns the node of the tree's root directory and its identity,
// for a parent's Lookup to hand to NewInode.
func (s *ServedTree) Root() (fusefs.InodeEmbedder, fusefs.StableAttr) {
	return &inode{im: s.im, n: s.tree.Root, view: s}, fusefs.StableAttr{Mode: typeBits(index.TypeDir), Ino: s.base | s.tree.Root.ID, Gen: s.gen}
}

// FillEntry fills out with the attributes of the tree's root directory.
func (s *ServedTree) FillEntry(out *fuse.EntryOut) {
	(&inode{im: s.im, n: s.tree.Root, view: s}).fill(&out.Attr)
}

// Image is the image the tree's bytes come from.
func (s *ServedTree) Image() *Image { return s.im }

// Tree is the tree served.
func (s *ServedTree) Tree() *Tree { return s.tree }

// Slot is the tree's slot.
func (s *ServedTree) Slot() uint64 { return s.base >> 32 }

// layerIDScheme names how a mount of many trees numbers its nodes (above)
// and slots its trees (LayerFS.slot), besides each tree's own numbering
// (idScheme).
const layerIDScheme = "ocifs layer mount ids 1: slot<<32 | the view's node id; a snapshot id is its own slot\n"

// LayerGeneration identifies the numbering of a [LayerFS] served raw, for
// a takeover's check that the next daemon numbers the mount's trees as
// the kernel was told (each tree's nodes have their own generation too,
// which the kernel checks at every lookup).
func LayerGeneration() uint32 {
	h := sha256.Sum256([]byte(layerIDScheme + idScheme))
	return max(binary.BigEndian.Uint32(h[:4]), 1)
}
