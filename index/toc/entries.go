package toc

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"path"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocifs/ocifs/index"
)

// The eStargz landmark files: a regular file at the root whose position says
// how far to prefetch. They are markers, not files of the tree.
const (
	prefetchLandmark   = ".prefetch.landmark"
	noPrefetchLandmark = ".no.prefetch.landmark"
)

// The whiteout conventions of the OCI image-spec, as index applies them.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// jsonEntry is one TOC entry as eStargz and containers/storage write it.
// The two share these field names; each writes some the other does not
// (innerOffset; endOffset, chunkType), and fields neither needs here
// (userName, accesstime, ...) are ignored.
type jsonEntry struct {
	Name        string            `json:"name"`
	Type        string            `json:"type"`
	Size        int64             `json:"size"`
	ModTime     string            `json:"modtime"`
	LinkName    string            `json:"linkName"`
	Mode        int64             `json:"mode"`
	UID         int64             `json:"uid"`
	GID         int64             `json:"gid"`
	DevMajor    int64             `json:"devMajor"`
	DevMinor    int64             `json:"devMinor"`
	Xattrs      map[string][]byte `json:"xattrs"` // base64 values in JSON
	Digest      string            `json:"digest"`
	Offset      int64             `json:"offset"`
	EndOffset   int64             `json:"endOffset"`
	InnerOffset int64             `json:"innerOffset"`
	ChunkOffset int64             `json:"chunkOffset"`
	ChunkSize   int64             `json:"chunkSize"`
	ChunkDigest string            `json:"chunkDigest"`
}

// parseJSON reads the TOC JSON object from r one entry at a time, so that
// memory follows the entry count (capped), not the JSON size.
func (p *parser) parseJSON(r io.Reader) error {
	dec := json.NewDecoder(r)
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	var sawVersion, sawEntries bool
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return jsonError(err)
		}
		key, _ := tok.(string)
		switch key {
		case "version":
			var v int
			if err := dec.Decode(&v); err != nil {
				return jsonError(err)
			}
			if v != 1 {
				return formatErrorf("TOC version %d, want 1", v)
			}
			sawVersion = true
		case "tarSplitDigest":
			var v string
			if err := dec.Decode(&v); err != nil {
				return jsonError(err)
			}
			if v != "" {
				d, err := parseDigest(v)
				if err != nil {
					return formatErrorf("TOC tarSplitDigest: %v", err)
				}
				p.tarSplitDigest = d
			}
		case "entries":
			if sawEntries {
				return formatErrorf("TOC has two entry lists")
			}
			sawEntries = true
			if err := p.parseEntries(dec); err != nil {
				return err
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return jsonError(err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			return formatErrorf("TOC JSON: data after the object")
		}
		return jsonError(err)
	}
	if !sawVersion {
		return formatErrorf("TOC has no version")
	}
	return nil
}

func (p *parser) parseEntries(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return jsonError(err)
	}
	if tok == nil {
		return nil // "entries": null
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return formatErrorf("TOC entries are not a list")
	}
	for dec.More() {
		if p.count >= p.opts.MaxEntries {
			return formatErrorf("TOC has more than %d entries; set Options.MaxEntries to raise the cap", p.opts.MaxEntries)
		}
		p.count++
		var je jsonEntry
		if err := dec.Decode(&je); err != nil {
			return jsonError(err)
		}
		if err := p.add(&je); err != nil {
			return err
		}
	}
	return expectDelim(dec, ']')
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return jsonError(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return formatErrorf("TOC JSON: got %v, want %q", tok, want)
	}
	return nil
}

// jsonError wraps a JSON syntax or type error as invalid input; read errors
// (the cap, decompression) pass through for tocReadError to classify.
func jsonError(err error) error {
	switch err.(type) {
	case *json.SyntaxError, *json.UnmarshalTypeError:
		return formatErrorf("TOC JSON: %v", err)
	}
	if err == io.EOF {
		return formatErrorf("TOC JSON: truncated")
	}
	return err
}

// entry converts the metadata of a non-chunk TOC entry into an index.Entry
// by the rules index applies to tar headers. keep is false for entries
// with no place in the tree (aufs metadata).
func (p *parser) entry(je *jsonEntry) (e index.Entry, keep bool, err error) {
	switch je.Type {
	case "reg":
		e.Type = index.TypeReg
	case "dir":
		e.Type = index.TypeDir
	case "symlink":
		e.Type = index.TypeSymlink
	case "hardlink":
		e.Type = index.TypeHardlink
	case "char":
		e.Type = index.TypeChar
	case "block":
		e.Type = index.TypeBlock
	case "fifo":
		e.Type = index.TypeFifo
	default:
		return e, false, entryErrorf(je.Name, "unknown type %q", shortName(je.Type))
	}
	name, err := p.cleanName(je.Name, je.Name, "name")
	if err != nil {
		return e, false, err
	}
	if index.IsAufsMeta(name) {
		return e, false, nil
	}
	e.Name = name
	e.Mode = uint32(je.Mode & 07777)
	if je.Mode < 0 {
		return e, false, entryErrorf(je.Name, "mode %d is negative", je.Mode)
	}
	if e.ModTime, err = parseModTime(je.ModTime); err != nil {
		return e, false, entryErrorf(je.Name, "%v", err)
	}
	if e.UID, err = checkID(je.Name, "uid", je.UID); err != nil {
		return e, false, err
	}
	if e.GID, err = checkID(je.Name, "gid", je.GID); err != nil {
		return e, false, err
	}
	if e.Xattrs, err = p.xattrs(je); err != nil {
		return e, false, err
	}

	// A whiteout is recognised by name whatever its type says; it keeps no
	// size, link or device.
	if dir, base := path.Split(name); strings.HasPrefix(base, whiteoutPrefix) {
		dir = strings.TrimSuffix(dir, "/")
		if base == whiteoutOpaque {
			e.Type, e.Name = index.TypeOpaque, dir
			return e, true, nil
		}
		target := base[len(whiteoutPrefix):]
		if target == "" || target == "." || target == ".." {
			return e, false, entryErrorf(je.Name, "whiteout names no file")
		}
		e.Type, e.Name = index.TypeWhiteout, path.Join(dir, target)
		return e, true, nil
	}

	if e.Name == "" && e.Type != index.TypeDir {
		return e, false, entryErrorf(je.Name, "a %s cannot be the layer root", e.Type)
	}
	switch e.Type {
	case index.TypeReg:
		e.Size = je.Size // Offset is set once the chunks check out
	case index.TypeSymlink:
		if strings.IndexByte(je.LinkName, 0) >= 0 {
			return e, false, entryErrorf(je.Name, "link target contains a NUL byte")
		}
		if len(je.LinkName) > p.opts.MaxNameLen {
			return e, false, entryErrorf(je.Name, "link target is %d bytes, more than %d; set Options.MaxNameLen to raise the cap",
				len(je.LinkName), p.opts.MaxNameLen)
		}
		e.Linkname = je.LinkName
	case index.TypeHardlink:
		if e.Linkname, err = p.cleanName(je.Name, je.LinkName, "link target"); err != nil {
			return e, false, err
		}
		if e.Linkname == "" {
			return e, false, entryErrorf(je.Name, "hard link with no target")
		}
	case index.TypeChar, index.TypeBlock:
		if e.Devmajor, err = checkID(je.Name, "device major", je.DevMajor); err != nil {
			return e, false, err
		}
		if e.Devminor, err = checkID(je.Name, "device minor", je.DevMinor); err != nil {
			return e, false, err
		}
	}
	return e, true, nil
}

// cleanName cleans a name or hard link target as index does for tar entries
// (index.CleanName).
func (p *parser) cleanName(entryName, name, what string) (string, error) {
	cleaned, err := index.CleanName(name, p.opts.MaxNameLen)
	if err != nil {
		return "", entryErrorf(entryName, "%s %v", what, err)
	}
	return cleaned, nil
}

// checkID checks an owner or device number: Linux stores them in 32 bits.
func checkID(name, what string, v int64) (int64, error) {
	if v < 0 || v > math.MaxUint32 {
		return 0, entryErrorf(name, "%s %d out of range", what, v)
	}
	return v, nil
}

// parseModTime reads an RFC 3339 time (eStargz writes whole seconds,
// containers/storage nanoseconds). eStargz leaves the field out for the
// Unix epoch, so an empty one means the epoch. The result is normalised as
// index normalises tar times: UTC, no monotonic reading.
func parseModTime(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("modtime %q is not RFC 3339", shortName(s))
	}
	return time.Unix(t.Unix(), int64(t.Nanosecond())).UTC(), nil
}

// xattrs checks an entry's extended attributes; nil when it has none.
func (p *parser) xattrs(je *jsonEntry) (map[string]string, error) {
	if len(je.Xattrs) == 0 {
		return nil, nil
	}
	x := make(map[string]string, len(je.Xattrs))
	total := 0
	for name, value := range je.Xattrs {
		if name == "" || strings.IndexByte(name, 0) >= 0 {
			return nil, entryErrorf(je.Name, "xattr name %q is empty or contains a NUL byte", shortName(name))
		}
		total += len(name) + len(value)
		x[name] = string(value)
	}
	if total > p.opts.MaxXattrBytes {
		return nil, entryErrorf(je.Name, "xattrs take %d bytes, more than %d; set Options.MaxXattrBytes to raise the cap",
			total, p.opts.MaxXattrBytes)
	}
	return x, nil
}

// entryErrorf returns an index.ErrFormat error about the TOC entry name.
func entryErrorf(name, format string, args ...any) error {
	return fmt.Errorf("%w: TOC entry %q: "+format, append([]any{index.ErrFormat, shortName(name)}, args...)...)
}

// chunkDigest parses the digest of a chunk or file from the TOC; "" stays "".
func chunkDigest(name, s string) (digest.Digest, error) {
	if s == "" {
		return "", nil
	}
	d, err := parseDigest(s)
	if err != nil {
		return "", entryErrorf(name, "%v", err)
	}
	return d, nil
}
