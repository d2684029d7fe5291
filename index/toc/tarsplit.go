package toc

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/index"
)

// This file reads the tar-split data containers/storage stores in a
// zstd:chunked layer after its TOC, to give the TOC's entries their exact
// names.
//
// A TOC is JSON, and JSON strings are Unicode: the writers (Go's
// encoding/json in skopeo, podman, buildah) put U+FFFD in place of every
// byte of a name that is not UTF-8, so "caf\xe9.txt" reads back as
// "caf\ufffd.txt", and two names can become one. The tar-split keeps the
// tar's own header bytes (vbatts/tar-split's storage JSON: "segment"
// records carry raw tar bytes, headers and padding, in base64; "file"
// records name each entry, in name_raw when it is not UTF-8), so it has the
// names byte for byte. Its digest is in the TOC (tarSplitDigest), which
// the manifest binds: the names it gives are as trusted as the TOC.

// tarSplitRecord is one record of tar-split's storage JSON
// (tar/storage.Entry): Type 1 is a file, whose content is not here; Type 2
// a segment of raw tar bytes.
type tarSplitRecord struct {
	Type    int    `json:"type"`
	Name    string `json:"name"`
	NameRaw []byte `json:"name_raw"`
	Size    int64  `json:"size"`
	Payload []byte `json:"payload"`
}

const (
	tarSplitFile    = 1
	tarSplitSegment = 2
)

// ApplyTarSplit verifies the tar-split data of l's layer against
// l.TarSplitDigest, parses its tar headers by the rules of [index.Build],
// matches them in order with l's entries, and returns a copy of l whose
// entry names, link targets and xattr names are the tar-split's, byte for
// byte. raw is the blob bytes [loc.TarSplitOffset,
// loc.TarSplitOffset+loc.TarSplitSize).
//
// Entries must agree in everything else (type, mode, owner, size, device,
// mtime as [SameModTime] allows), and a name may differ only as the JSON
// writer's U+FFFD replacement makes it differ. A tar-split that does not
// match its digest is a [*DigestError]; one that cannot be parsed, or does
// not describe the same entries as the TOC, is an [index.ErrFormat] error:
// the TOC and the tar it comes with disagree, and the TOC cannot be used
// to serve the layer.
func ApplyTarSplit(l *Layer, loc Location, raw []byte, opts Options) (*Layer, error) {
	opts = opts.withDefaults()
	if l.TarSplitDigest == "" {
		return nil, errors.New("applying a tar-split: the TOC names none")
	}
	ts, err := DecodeTarSplit(loc, raw, l.TarSplitDigest, opts)
	if err != nil {
		return nil, err
	}
	if len(ts) != len(l.Entries) {
		return nil, formatErrorf("the tar-split has %d entries, the TOC %d", len(ts), len(l.Entries))
	}
	out := *l
	out.Entries = make([]index.Entry, len(l.Entries))
	for i, e := range l.Entries {
		if err := sameButNames(e, ts[i], l.Layout); err != nil {
			return nil, formatErrorf("entry %d: the TOC and the tar-split disagree: %v", i, err)
		}
		e.Name, e.Linkname, e.Xattrs = ts[i].Name, ts[i].Linkname, ts[i].Xattrs
		out.Entries[i] = e
	}
	return &out, nil
}

// DecodeTarSplit verifies raw, the compressed tar-split data at loc,
// against want, decompresses and parses it, and returns the entries its
// tar headers make under the rules of [index.Build], in tar order (a
// TypeReg entry's Offset is 0). Every cap of opts applies: the compressed
// and uncompressed size (MaxTarSplitSize), the entry count, name and xattr
// sizes, and one record's size. Errors caused by the bytes wrap
// [index.ErrFormat]; it never panics.
func DecodeTarSplit(loc Location, raw []byte, want digest.Digest, opts Options) ([]index.Entry, error) {
	opts = opts.withDefaults()
	if int64(len(raw)) > opts.MaxTarSplitSize {
		return nil, formatErrorf("tar-split is %d bytes compressed, more than %d; set Options.MaxTarSplitSize to raise the cap", len(raw), opts.MaxTarSplitSize)
	}
	if want.Validate() != nil {
		return nil, fmt.Errorf("decoding a tar-split: no digest to check it against (%q)", shortName(want.String()))
	}
	if got := want.Algorithm().FromBytes(raw); got != want {
		return nil, &DigestError{What: "tar-split", Off: loc.TarSplitOffset, Want: want, Got: got}
	}
	// Writers stream the tar-split with windows of a few MiB; capReader
	// bounds the output, the window cap what one frame may make the
	// decoder allocate.
	dec, err := zstd.NewReader(bytes.NewReader(raw),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(uint64(min(max(opts.MaxTarSplitSize, 1<<20), 64<<20))))
	if err != nil {
		return nil, fmt.Errorf("creating zstd decoder: %w", err)
	}
	defer dec.Close()
	capped := &capReader{r: dec, left: opts.MaxTarSplitSize}
	counted := &countReader{r: capped}
	p := newTarSplitParser(opts)
	if err := p.parse(counted); err != nil {
		if capped.exceeded {
			return nil, formatErrorf("tar-split exceeds %d bytes uncompressed; set Options.MaxTarSplitSize to raise the cap", opts.MaxTarSplitSize)
		}
		if errors.Is(err, index.ErrFormat) {
			return nil, err
		}
		return nil, formatErrorf("tar-split: %v", err)
	}
	if loc.TarSplitJSONSize != 0 && counted.n != loc.TarSplitJSONSize {
		return nil, formatErrorf("tar-split is %d bytes uncompressed, the layer says %d", counted.n, loc.TarSplitJSONSize)
	}
	return p.entries, nil
}

// tarSplitParser walks the records of a tar-split: each tar header is a
// segment (the previous entry's padding, then the header's blocks, PAX and
// GNU extensions included) followed by the file record naming it; after the
// end-of-archive blocks come only segments of padding.
type tarSplitParser struct {
	opts      Options
	iopts     index.Options
	maxRecord int // bytes of one JSON record
	records   int
	maxRecs   int

	entries []index.Entry
	payload []byte      // the last segment's bytes, reused for the next
	pending *tar.Header // the header whose file record comes next
	pad     int64       // padding the next segment starts with
	ended   bool        // the end-of-archive blocks have been read
}

func newTarSplitParser(opts Options) *tarSplitParser {
	// A header segment holds at most a block of padding, a PAX header (a
	// path and a link path, the xattrs, a few other records) and GNU long
	// names; tar-split cuts trailing padding into records of 1 MiB. In
	// base64 inside JSON that is 4/3 as much, plus the name of a file
	// record.
	payload := max(opts.MaxXattrBytes+4*opts.MaxNameLen+64<<10, 1<<20+4<<10)
	return &tarSplitParser{
		opts:      opts,
		iopts:     index.Options{MaxEntries: opts.MaxEntries, MaxNameLen: opts.MaxNameLen, MaxXattrBytes: opts.MaxXattrBytes},
		maxRecord: payload/3*4 + 8*opts.MaxNameLen + 4<<10,
		maxRecs:   4*opts.MaxEntries + 1024,
	}
}

// parse reads newline-delimited records from r, as tar-split's JSON packer
// writes them.
func (p *tarSplitParser) parse(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	for {
		var err error
		line, err = readLine(br, line[:0], p.maxRecord)
		if err == io.EOF && len(line) == 0 {
			break
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			if err == io.EOF {
				break
			}
			continue
		}
		if p.records++; p.records > p.maxRecs {
			return formatErrorf("tar-split has more than %d records; set Options.MaxEntries to raise the cap", p.maxRecs)
		}
		var rec tarSplitRecord
		if payload, ok := segmentRecord(line, p.payload[:0]); ok {
			rec = tarSplitRecord{Type: tarSplitSegment, Payload: payload}
			p.payload = payload // nothing kept refers to it: reuse it
		} else if jerr := json.Unmarshal(line, &rec); jerr != nil {
			return formatErrorf("tar-split record %d: %v", p.records, jerr)
		}
		if perr := p.record(&rec); perr != nil {
			return perr
		}
		if err == io.EOF {
			break
		}
	}
	if p.pending != nil {
		return formatErrorf("tar-split ends before the file record of %q", shortName(p.pending.Name))
	}
	return nil
}

// segmentRecord decodes line the fast way when it is a segment record
// exactly as tar-split's JSON packer writes one,
// {"type":2,"payload":"BASE64","position":N}, and reports whether it was:
// most of a tar-split is these, and encoding/json takes several times
// longer over their base64. Anything else is left to encoding/json.
func segmentRecord(line, buf []byte) ([]byte, bool) {
	const head, mid = `{"type":2,"payload":"`, `","position":`
	rest, ok := bytes.CutPrefix(line, []byte(head))
	if !ok {
		return nil, false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return nil, false
	}
	b64, tail := rest[:end], rest[end:]
	tail, ok = bytes.CutPrefix(tail, []byte(mid))
	if !ok || len(tail) < 2 || tail[len(tail)-1] != '}' {
		return nil, false
	}
	for _, c := range tail[:len(tail)-1] {
		if c < '0' || c > '9' {
			return nil, false
		}
	}
	// The base64 decoder skips '\r' and '\n', which encoding/json refuses
	// in a string: anything but the alphabet goes the slow way.
	for _, c := range b64 {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=') {
			return nil, false
		}
	}
	payload := slices.Grow(buf, base64.StdEncoding.DecodedLen(len(b64)))[:base64.StdEncoding.DecodedLen(len(b64))]
	n, err := base64.StdEncoding.Decode(payload, b64)
	if err != nil {
		return nil, false
	}
	return payload[:n], true
}

// readLine appends to buf the next line of br, without its newline, and
// fails once it exceeds max bytes. At the end of the input it returns what
// is left with io.EOF.
func readLine(br *bufio.Reader, buf []byte, max int) ([]byte, error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > max {
			return nil, formatErrorf("tar-split record longer than %d bytes", max)
		}
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return buf, err
		}
	}
}

// record takes one record.
func (p *tarSplitParser) record(rec *tarSplitRecord) error {
	switch rec.Type {
	case tarSplitSegment:
		return p.segment(rec.Payload)
	case tarSplitFile:
		name := rec.Name
		if len(rec.NameRaw) > 0 {
			name = string(rec.NameRaw)
		}
		h := p.pending
		if h == nil {
			return formatErrorf("tar-split file record %q follows no header", shortName(name))
		}
		if name != h.Name || rec.Size != h.Size {
			return formatErrorf("tar-split file record %q (%d bytes) does not match its header %q (%d bytes)",
				shortName(name), rec.Size, shortName(h.Name), h.Size)
		}
		p.pending = nil
		if !headerOnly(h.Typeflag) && h.Size > 0 {
			if p.pad != 0 {
				return formatErrorf("tar-split header %q has data both in its segment and after it", shortName(name))
			}
			p.pad = (blockSize - h.Size%blockSize) % blockSize
		}
		return nil
	}
	return formatErrorf("tar-split record %d has type %d", p.records, rec.Type)
}

// blockSize is the tar block size.
const blockSize = 512

// headerOnly reports whether archive/tar reads no data after a header of
// type flag t, whatever its size says.
func headerOnly(t byte) bool {
	switch t {
	case tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
		return true
	}
	return false
}

// segment takes the raw tar bytes of a segment record: the padding of the
// entry before, then one header (or the end-of-archive blocks).
func (p *tarSplitParser) segment(b []byte) error {
	if p.ended {
		return nil // padding after the end of the archive
	}
	if p.pending != nil {
		return formatErrorf("tar-split segment where the file record of %q belongs", shortName(p.pending.Name))
	}
	if int64(len(b)) < p.pad {
		return formatErrorf("tar-split segment of %d bytes, shorter than the %d bytes of padding before it", len(b), p.pad)
	}
	b, p.pad = b[p.pad:], 0
	if len(b) == 0 {
		return nil
	}
	br := bytes.NewReader(b)
	hdr, err := tar.NewReader(br).Next()
	if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
		err = nil // names are cleaned by index's rules
	}
	if err == io.EOF {
		p.ended = true
		return nil
	}
	if err != nil {
		return formatErrorf("tar-split header %d: %v", len(p.entries)+1, err)
	}
	if br.Len() != 0 {
		return formatErrorf("tar-split segment of %q holds %d bytes after its header", shortName(hdr.Name), br.Len())
	}
	// A PAX global header's data is in its segment, read by archive/tar
	// with the header; the padding after it begins the next segment.
	if r := int64(len(b)) % blockSize; r != 0 {
		p.pad = blockSize - r
	}
	e, keep, err := index.EntryOf(hdr, p.iopts)
	if err != nil {
		return err
	}
	if keep {
		if len(p.entries) >= p.opts.MaxEntries {
			return formatErrorf("tar-split has more than %d entries; set Options.MaxEntries to raise the cap", p.opts.MaxEntries)
		}
		p.entries = append(p.entries, e)
	}
	p.pending = hdr
	return nil
}

// sameButNames reports how a TOC entry differs from the tar entry at the
// same position, other than in what the TOC's JSON writer changed: names,
// link targets and xattr names may differ only by the U+FFFD that stands
// for bytes that are not UTF-8, and the virtual offset is the TOC's own.
func sameButNames(tocE, tarE index.Entry, layout Layout) error {
	switch {
	case tocE.Type != tarE.Type:
		return fmt.Errorf("%q is a %s in the TOC, a %s in the tar", shortName(tocE.Name), tocE.Type, tarE.Type)
	case tocE.Name != jsonString(tarE.Name):
		return fmt.Errorf("name %q in the TOC, %q in the tar", shortName(tocE.Name), shortName(tarE.Name))
	case tocE.Linkname != jsonString(tarE.Linkname):
		return fmt.Errorf("%q: link target %q in the TOC, %q in the tar", shortName(tocE.Name), shortName(tocE.Linkname), shortName(tarE.Linkname))
	case tocE.Mode != tarE.Mode || tocE.UID != tarE.UID || tocE.GID != tarE.GID || tocE.Size != tarE.Size ||
		tocE.Devmajor != tarE.Devmajor || tocE.Devminor != tarE.Devminor:
		return fmt.Errorf("%q: mode %o, uid %d, gid %d, %d bytes, device %d:%d in the TOC; %o, %d, %d, %d bytes, %d:%d in the tar",
			shortName(tocE.Name), tocE.Mode, tocE.UID, tocE.GID, tocE.Size, tocE.Devmajor, tocE.Devminor,
			tarE.Mode, tarE.UID, tarE.GID, tarE.Size, tarE.Devmajor, tarE.Devminor)
	case !SameModTime(tocE.ModTime, tarE.ModTime, layout):
		return fmt.Errorf("%q: mtime %s in the TOC, %s in the tar", shortName(tocE.Name),
			tocE.ModTime.Format(time.RFC3339Nano), tarE.ModTime.Format(time.RFC3339Nano))
	}
	coerced := make(map[string]string, len(tarE.Xattrs))
	for k, v := range tarE.Xattrs {
		coerced[jsonString(k)] = v
	}
	if len(coerced) != len(tarE.Xattrs) || !maps.Equal(coerced, tocE.Xattrs) {
		return fmt.Errorf("%q: %d xattrs in the TOC, %d in the tar, not the same", shortName(tocE.Name), len(tocE.Xattrs), len(tarE.Xattrs))
	}
	return nil
}

// jsonString returns s as a JSON writer keeps it: every byte that is not
// part of a UTF-8 sequence becomes U+FFFD, as encoding/json writes it.
func jsonString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// SameModTime reports whether a TOC's mtime stands for the tar's. eStargz
// keeps whole seconds, rounded (not truncated) by its writer: 08:07:08.72
// is 08:07:09 in the TOC. So does estargz's zstd writer, whose layers carry
// the same annotations as containers/storage's: a TOC time of whole seconds
// within a second of the tar's is that rounding, whatever the layout.
func SameModTime(tocTime, tarTime time.Time, layout Layout) bool {
	d := tocTime.Sub(tarTime).Abs()
	return d == 0 || ((layout.estargz() || tocTime.Nanosecond() == 0) && d < time.Second)
}

// InexactName returns the first name, link target or xattr name of the
// layer's entries that holds U+FFFD, and true; or "", false. A TOC holds
// U+FFFD where its writer met bytes that are not UTF-8 (or the tar had the
// character itself): such a TOC cannot tell which name the tar has, and
// without a tar-split ([ApplyTarSplit]) the layer's names cannot be served
// exactly from it.
func (l *Layer) InexactName() (string, bool) {
	const bad = string(utf8.RuneError)
	for _, e := range l.Entries {
		if strings.Contains(e.Name, bad) {
			return e.Name, true
		}
		if strings.Contains(e.Linkname, bad) {
			return e.Name + " -> " + e.Linkname, true
		}
		for k := range e.Xattrs {
			if strings.Contains(k, bad) {
				return e.Name + " xattr " + k, true
			}
		}
	}
	return "", false
}
