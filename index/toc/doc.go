// Package toc reads the tables of contents of lazily pullable layers, eStargz
// and zstd:chunked, so that any file of such a layer can be read by fetching
// and verifying only the chunks that hold it, with no ocifs index.
//
// # What it owns
//
// Finding a layer's TOC from its descriptor and the last bytes of its blob
// ([TailSize], [Locate]); checking the TOC against the digest the manifest
// binds, decompressing and parsing it into a [Layer] ([Decode]); and
// decoding one verified chunk of file content ([DecodeChunk]); and reading
// a zstd:chunked layer's tar-split, bound to its TOC by digest, for the
// exact names a JSON TOC cannot hold ([ApplyTarSplit], [Layer.InexactName]).
// Three layouts are understood ([Layout]):
//
//   - eStargz (gzip): a 51-byte footer (or the legacy 47-byte one) gives
//     the offset of the gzip member holding a tar with stargz.index.json;
//     the annotation containerd.io/snapshot/stargz/toc.digest is the
//     sha256 of that JSON.
//   - eStargz's zstd flavour (containerd's estargz/zstdchunked): the TOC
//     JSON zstd-compressed in a skippable frame, a 40-byte footer ("GnUlInUx")
//     in a last skippable frame; bound by the same toc.digest annotation
//     and, when set, the zstd:chunked annotations.
//   - zstd:chunked as containers/storage writes it: the annotation
//     io.github.containers.zstd-chunked.manifest-position
//     ("offset:length:lengthUncompressed:1", the offset just past the
//     8-byte skippable frame header) locates the compressed manifest,
//     and ...manifest-checksum is the digest of those length bytes. A
//     64-byte footer ("GNUlInUx") is read only when the annotations are
//     missing. The older keys "io.containers.zstd-chunked.*", which
//     estargz's zstd flavour still writes, are accepted too.
//
// A typical use:
//
//	loc, err := toc.Locate(desc, nil, opts)
//	if errors.Is(err, toc.ErrNeedTail) {
//		tail := fetch(desc.Size-min(toc.TailSize(), desc.Size), desc.Size)
//		loc, err = toc.Locate(desc, tail, opts)
//	}
//	if errors.Is(err, toc.ErrNotLazy) { ... use another mode ... }
//	if !loc.Verified() { ... refuse, or fetch the whole layer ... }
//	l, err := toc.Decode(loc, fetch(loc.Offset, loc.Offset+loc.Size), opts)
//	// a file e of l.Entries: virtual bytes [e.Offset, e.Offset+e.Size)
//	for i := l.ChunkFor(off); ...; i++ {
//		c := l.Chunks[i]
//		data, err := toc.DecodeChunk(l.Format, c, fetch(c.C, c.CEnd))
//	}
//
// # Invariants
//
//   - The trust chain holds: Decode checks the TOC against the annotation
//     digest(s) in the [Location] (manifest → descriptor → TOC), and
//     DecodeChunk returns bytes only after their sha256 matched the chunk
//     digest in the TOC. Mismatches are [*DigestError] values wrapping
//     [ErrDigest] and [index.ErrFormat], kinds that errors.Is matches with
//     fetch's and fs's sentinels of the same name. A location with no digest annotation is reported by
//     Location.Verified, and refusing it is the caller's policy.
//   - Nothing here panics on hostile input. Errors caused by layer bytes or
//     annotations wrap [index.ErrFormat] and read "invalid input: ...";
//     every size the outside claims is capped ([Options]) before it is
//     allocated, and the TOC JSON and the tar-split are parsed as they are
//     decompressed.
//   - JSON strings are Unicode: a TOC writer puts U+FFFD for each byte of a
//     name that is not UTF-8. [ApplyTarSplit] replaces every name, link
//     target and xattr name with the tar-split's raw header bytes, after
//     checking that the two describe the same entries in everything else.
//   - Entries follow the rules of [index.Entry] exactly as [index.Build]
//     applies them to tar headers: names cleaned so they cannot leave the
//     root, ".wh.NAME" as [index.TypeWhiteout] and ".wh..wh..opq" as
//     [index.TypeOpaque], other ".wh..wh." names skipped, hardlink targets
//     cleaned, symlink targets kept byte for byte, mode masked to 07777,
//     ids and device numbers within 32 bits, times in UTC. eStargz stores
//     times rounded to the second, so sub-second mtimes are lost there.
//   - The Chunks of a Layer tile the virtual stream [0, ContentSize) in
//     order, lie inside the blob's payload, and increase in blob offset
//     without overlapping.
//   - A [Layer] is immutable; DecodeChunk is safe for concurrent use.
//
// # Virtual offsets
//
// A lazy layer's file content is not addressed by tar offsets (the tar
// stream is never assembled) but by virtual ones: the position in the
// concatenation of every served regular file's content, in TOC order. A
// TypeReg entry's Offset is its start there, so a [Layer]'s Entries can
// fill an [index.Table] whose reader maps offsets to Chunks instead of
// Spans.
//
// # Landmarks
//
// eStargz builders mark the end of the files they prioritised with a
// ".prefetch.landmark" file at the root, or say there are none with
// ".no.prefetch.landmark". These (and the TOC's own "stargz.index.json")
// are not entries; [Layer.Landmark] and [Layer.PrefetchEnd] report them.
// zstd:chunked as containers/storage writes it has no landmarks, so there
// such names are ordinary files.
//
// # What it must not do
//
// No HTTP, no FUSE, no caching, no package-level state beyond pools of
// decompressors. It imports index for the entry types and nothing of fetch
// or fs.
package toc
