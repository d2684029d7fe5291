// Package index turns the bytes of an image layer into the layer's entry
// table and random-access map, and encodes them for the local index cache.
//
// # What it owns
//
// Parsing layer bytes: choosing a decompressor from the layer media type
// ([Decompress], [MediaTypeCompression]), reading the uncompressed tar stream
// into a [Table] of [Entry] values with the data offset of every regular file
// ([Build]), and the binary encoding of a table ([Table.MarshalBinary],
// [Unmarshal], [Open]), and random access into gzip and plain-tar layers
// ([BuildLayer], [Table.SpanFor], [DecodeSpan]). A typical use, once the
// blob's digest has been checked:
//
//	tarStream, err := index.Decompress(desc.MediaType, blob)
//	if err != nil { ... }
//	defer tarStream.Close()
//	t, err := index.Build(tarStream, index.Options{Logger: log})
//	if err != nil { ... }
//	t.Digest, t.Size = desc.Digest, desc.Size
//	if t.DiffID != diffIDFromConfig { ... } // the layer is not what the config says
//
// # Invariants
//
//   - Nothing here panics on hostile input. Every error caused by the bytes of
//     a layer or an index wraps [ErrFormat] and reads "invalid input: ...";
//     errors from the reader underneath are passed on unchanged.
//   - Everything outside bytes may claim is capped before it is allocated:
//     entry count, name and xattr sizes, decompressed size, zstd window
//     ([Options] documents the caps and their defaults).
//   - Entry names are clean and relative to the layer root ("" is the root);
//     a ".." can never climb out of it, because a name is resolved as if it
//     started at "/": "a/../../b" becomes "b".
//   - A [Table] is immutable once returned, so readers share it without
//     locks; [Table.Window] and [DecodeSpan] are safe for concurrent use.
//
// # Random access
//
// [BuildLayer] reads a whole blob once and cuts its uncompressed stream into
// spans of about Options.SpanSize bytes ([DefaultSpanSize], 1 MiB). Each
// [Span] can be decoded alone from the blob bytes [C, CEnd) (plus, for gzip,
// its window of the 32 KiB of output before it), and carries the sha256 of
// those bytes. A reader of tar bytes [off, off+n):
//
//	for off < end {
//		i := t.SpanFor(off)
//		sp := t.Spans[i]
//		b := fetch(sp.C, sp.CEnd)                 // check digest.FromBytes(b) == sp.Digest first
//		data, err := index.DecodeSpan(t, i, b)    // exactly [sp.U, t.SpanEnd(i))
//		...
//		off = t.SpanEnd(i)
//	}
//
// Verifying the span digest is the caller's job, and the only check that
// catches every damaged byte. Gzip spans start at deflate block ends found
// with klauspost/compress's inflate checkpoints; each is kept only once
// resuming from it reproduced the output that followed (see gzip.go for
// the offset drift this guards against). A span may cross gzip member
// boundaries; a member start becomes a span start (with an empty window)
// only when a span is due, so streams of many tiny members stay small.
// Plain tar spans are SpanSize slices of the blob. Zstd layers have no
// spans yet.
//
// # Entries
//
// One [Entry] per tar entry with file meaning, in tar order; paths may repeat
// and the union decides (the later one wins). PAX and GNU extension headers
// (long names, long link targets, large ids, sub-second times, xattrs) are
// folded into the entry they describe. Whiteouts are recognised by base
// name: ".wh..wh..opq" becomes a [TypeOpaque] entry naming its directory, and
// ".wh.NAME" a [TypeWhiteout] entry naming the deleted path. Other names
// starting with ".wh..wh." are aufs bookkeeping (".wh..wh.plnk",
// ".wh..wh.aufs"), skipped with anything under them; hard links into the aufs
// ".wh..wh.plnk" directory are therefore left unresolved. PAX global headers
// and GNU volume labels are skipped; a contiguous file ('7') is read as a
// regular file, as POSIX allows. A sparse file in one of GNU tar's PAX
// formats (0.0, 0.1, 1.0) gets its [SparseMap]: Size is its logical size
// and Offset where its data segments start, packed (sparse.go says how each
// format stores the map, and how Build finds it without archive/tar's
// help). Old-GNU sparse entries ('S'), multi-volume continuations,
// unknown type flags, and owner ids or device numbers that do not fit Linux's
// 32 bits are refused with an error naming the entry. Xattrs come from PAX
// "SCHILY.xattr.NAME" records (raw values) and libarchive's
// "LIBARCHIVE.xattr.NAME" ones (percent-encoded name, base64 value); SCHILY
// wins when both name an attribute.
//
// # Table encoding
//
// [Table.MarshalBinary] writes, and [Unmarshal] and [Open] read, version 1
// (tables without Compression, SpanSize or Spans, as [Build] makes),
// version 2 (everything else) or version 3 (a table with a sparse file,
// with or without spans; only such tables need it, so the others stay
// readable by builds that know versions 1 and 2):
//
//	magic      "OCIFSIDX"
//	version    uint16, big-endian: 1, 2 or 3
//	headLen    uint64, big-endian, versions 2 and 3: bytes of the head below
//	digest     string: the layer blob digest, "" when not yet set
//	diffID     string
//	size       uvarint: compressed blob size
//	tarSize    uvarint: uncompressed stream size
//	count      uvarint: number of entries
//	entries    count times:
//	  prefix   uvarint: bytes shared with the previous entry's name
//	  suffix   string: the rest of the name
//	  type     byte: the Type value
//	  mode     uvarint (<= 07777)
//	  uid, gid uvarint each (< 2^32)
//	  mtime    varint: unix seconds minus the previous entry's (0 for the first),
//	           then uvarint nanoseconds (< 10^9)
//	  TypeReg:             uvarint size, then varint offset minus the previous
//	                       regular file's end (offset + the bytes it stores),
//	                       then, version 3 only, uvarint 0 for a file stored
//	                       whole or 1 + the count of its sparse segments,
//	                       each a uvarint offset minus the end of the one
//	                       before (0 for the first) and a uvarint length
//	  TypeSymlink, TypeHardlink: string link target
//	  TypeChar, TypeBlock: uvarint major, uvarint minor
//	  xattrs   uvarint count, then count pairs of string name, string value,
//	           names in strictly increasing byte order
//	sections   until the checksum: uvarint tag, string body
//	checksum   32 bytes: sha256 of everything before it
//	windows    versions 2 and 3: the stored windows, back to back
//
// Version 2 has exactly one section with tag 1, the spans; version 3 has it
// when the table has Compression, SpanSize or Spans:
//
//	compression string: "gzip", "none" or "zstd"
//	spanSize    uvarint
//	count       uvarint: number of spans (0 for zstd)
//	spans       count times: uvarint U minus the previous U, uvarint C minus
//	            the previous C, uvarint CEnd minus C, byte Bits, 32 bytes of
//	            sha256 Digest, uvarint stored window length n, and when n > 0
//	            uvarint window length and 32 bytes sha256 of the stored window
//
// A stored window is the window deflated (raw flate, no header), at most
// 33 KiB, and inflates to its length (at most 32 KiB, and at most U). The
// windows come last and are covered by their own digests, not by the
// checksum, so [Open] reads the head alone and [Table.Window] reads one
// window when asked. [HeadLen] gives the head's length, and
// [Table.WindowLocation] where each window lies and its sha256: a reader
// that has checked the head (against a digest published beside the index)
// can fetch each window alone, when its span is read. The windows' lengths must add up to the rest of the
// file exactly.
//
// A string is a uvarint byte length and the bytes; a varint is zig-zag
// encoded as in encoding/binary. Every varint is minimally encoded and the
// name prefix is the longest shared one, so the encoding is canonical: equal
// tables give equal bytes, and a table read back encodes to the bytes it was
// read from, less any sections it skipped. Times are decoded in UTC, and
// empty xattr maps and entry lists as nil; [Build] produces them the same
// way, so a built table round-trips to a reflect.DeepEqual one.
//
// The sections leave room to extend the format without breaking readers.
// A reader skips a section whose tag it does not know if the tag is even,
// and refuses the index if it is odd: odd tags mark sections that change
// what the rest means (version 1 readers would refuse tag 1). An
// incompatible change bumps the version, which older readers refuse with a
// message asking for the index to be rebuilt.
//
// # Errors shared with fetch and fs
//
// index and fetch do not import each other, yet both report bad outside
// bytes and digest mismatches, and fs and cmd branch on those without caring
// which package found them. So [ErrFormat] ("invalid input") and [ErrDigest]
// ("digest mismatch") are kinds, not identities: fetch and fs declare their
// own, and each sentinel has an exported ErrorKind() string method and an Is
// method matching any error that reports the same kind. errors.Is(err,
// index.ErrFormat) holds for an error wrapping fetch.ErrFormat or
// fs.ErrFormat, and the other way round. index/toc reuses these two
// sentinels; its DigestError wraps both, as fetch's and fs's do. Each
// package builds only its own error types.
//
// # What it must not do
//
// No HTTP, no FUSE, no caching policy, no package-level state (beyond a
// sync.Pool of inflaters): input arrives
// as an [io.Reader] or a byte slice, configuration as [Options], logs go to
// Options.Logger. It imports neither fetch nor fs.
package index
