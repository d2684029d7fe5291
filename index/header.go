package index

import (
	"archive/tar"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"
)

// The whiteout conventions of the OCI image-spec (layer.md, "Whiteouts"),
// inherited from aufs.
const (
	whiteoutPrefix     = ".wh."
	whiteoutMetaPrefix = ".wh..wh."
	whiteoutOpaque     = ".wh..wh..opq"
)

// PAX record prefixes that carry extended attributes: the star/GNU tar
// convention, raw bytes; and libarchive's, a percent-encoded name with a
// base64 value.
const (
	paxSchilyXattr     = "SCHILY.xattr."
	paxLibarchiveXattr = "LIBARCHIVE.xattr."
	paxGNUSparse       = "GNU.sparse."
)

// GNU tar type flags archive/tar passes through without a constant.
const (
	typeGNUDumpDir    = 'D' // a directory followed by a listing of its contents
	typeGNUMultiVol   = 'M' // the continuation of a file from a previous volume
	typeGNUVolumeName = 'V' // the archive's volume label
)

// entry converts one tar header into an Entry. keep is false for headers with
// no file meaning (PAX global headers, volume labels, aufs metadata).
func (b *builder) entry(hdr *tar.Header, off int64) (e Entry, keep bool, err error) {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return Entry{}, false, entryErrorf(hdr.Name, "old GNU sparse entries (type S) are not supported")
	}
	// The map is read for every sparse header, kept or not: it says where
	// the entry's data ends (sparse.go).
	sparse, err := b.sparse(hdr, off)
	if err != nil {
		return Entry{}, false, err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont:
		// POSIX lets readers without contiguous-file support treat a
		// contiguous file as a regular one, as GNU tar does.
		e.Type = TypeReg
	case tar.TypeDir, typeGNUDumpDir:
		e.Type = TypeDir
	case tar.TypeSymlink:
		e.Type = TypeSymlink
	case tar.TypeLink:
		e.Type = TypeHardlink
	case tar.TypeChar:
		e.Type = TypeChar
	case tar.TypeBlock:
		e.Type = TypeBlock
	case tar.TypeFifo:
		e.Type = TypeFifo
	case tar.TypeXGlobalHeader:
		b.skip(hdr, "PAX global header")
		return Entry{}, false, nil
	case typeGNUVolumeName:
		b.skip(hdr, "GNU volume label")
		return Entry{}, false, nil
	case typeGNUMultiVol:
		return Entry{}, false, entryErrorf(hdr.Name, "multi-volume archives are not supported")
	default:
		return Entry{}, false, entryErrorf(hdr.Name, "unknown type flag %q", hdr.Typeflag)
	}

	name, err := b.cleanName(hdr.Name, hdr.Name, "name")
	if err != nil {
		return Entry{}, false, err
	}
	if IsAufsMeta(name) {
		b.skip(hdr, "aufs metadata")
		return Entry{}, false, nil
	}

	e.Name = name
	e.Mode = uint32(hdr.Mode & 07777)
	e.ModTime = normalizeTime(hdr.ModTime)
	if e.UID, err = checkID(hdr, "uid", int64(hdr.Uid)); err != nil {
		return Entry{}, false, err
	}
	if e.GID, err = checkID(hdr, "gid", int64(hdr.Gid)); err != nil {
		return Entry{}, false, err
	}
	if e.Xattrs, err = b.xattrs(hdr); err != nil {
		return Entry{}, false, err
	}

	// A whiteout is recognised by name whatever its type flag says; it
	// keeps no size, link or device.
	if dir, base := path.Split(name); strings.HasPrefix(base, whiteoutPrefix) {
		dir = strings.TrimSuffix(dir, "/")
		if base == whiteoutOpaque {
			e.Type, e.Name = TypeOpaque, dir
			return e, true, nil
		}
		target := base[len(whiteoutPrefix):]
		if target == "" || target == "." || target == ".." {
			return Entry{}, false, entryErrorf(hdr.Name, "whiteout names no file")
		}
		e.Type, e.Name = TypeWhiteout, path.Join(dir, target)
		return e, true, nil
	}

	if e.Name == "" && e.Type != TypeDir {
		return Entry{}, false, entryErrorf(hdr.Name, "a %s cannot be the layer root", e.Type)
	}
	if sparse != nil && e.Type != TypeReg {
		return Entry{}, false, entryErrorf(hdr.Name, "GNU sparse records on a %s", e.Type)
	}
	switch e.Type {
	case TypeReg:
		e.Size, e.Offset, e.Sparse = hdr.Size, off, sparse
	case TypeSymlink:
		if strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return Entry{}, false, entryErrorf(hdr.Name, "link target contains a NUL byte")
		}
		if len(hdr.Linkname) > b.opts.MaxNameLen {
			return Entry{}, false, entryErrorf(hdr.Name, "link target is %d bytes, more than %d; set Options.MaxNameLen to raise the cap",
				len(hdr.Linkname), b.opts.MaxNameLen)
		}
		e.Linkname = hdr.Linkname
	case TypeHardlink:
		if e.Linkname, err = b.cleanName(hdr.Name, hdr.Linkname, "link target"); err != nil {
			return Entry{}, false, err
		}
		if e.Linkname == "" {
			return Entry{}, false, entryErrorf(hdr.Name, "hard link with no target")
		}
	case TypeChar, TypeBlock:
		if e.Devmajor, err = checkID(hdr, "device major", hdr.Devmajor); err != nil {
			return Entry{}, false, err
		}
		if e.Devminor, err = checkID(hdr, "device minor", hdr.Devminor); err != nil {
			return Entry{}, false, err
		}
	}
	return e, true, nil
}

// cleanName cleans a name or hard link target of the entry called entryName
// (see [CleanName]).
func (b *builder) cleanName(entryName, name, what string) (string, error) {
	cleaned, err := CleanName(name, b.opts.MaxNameLen)
	if err != nil {
		return "", entryErrorf(entryName, "%s %v", what, err)
	}
	return cleaned, nil
}

// CleanName cleans a name or hard link target read from a layer (a tar
// header, a TOC) the way every table holds it: relative to the layer root,
// no leading "./" or "/", no trailing "/", and no ".." element, resolved as
// if the name started at "/" so it can never escape: "a/../../b" becomes
// "b". The root itself becomes "". A name with a NUL byte, or longer than
// maxLen bytes once cleaned, is an error (the caller names the entry).
func CleanName(name string, maxLen int) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("contains a NUL byte")
	}
	cleaned := path.Clean("/" + name)[1:]
	if len(cleaned) > maxLen {
		return "", fmt.Errorf("is %d bytes, more than %d; set Options.MaxNameLen to raise the cap", len(cleaned), maxLen)
	}
	return cleaned, nil
}

// IsAufsMeta reports whether a cleaned name is aufs bookkeeping: a base name
// starting with ".wh..wh." other than the opaque marker (".wh..wh.plnk",
// ".wh..wh.aufs"), or anything below such a directory at the root, as Docker
// skips it. Hard links into ".wh..wh.plnk" are not resolved.
func IsAufsMeta(name string) bool {
	first, _, _ := strings.Cut(name, "/")
	if strings.HasPrefix(first, whiteoutMetaPrefix) && first != whiteoutOpaque {
		return true
	}
	base := path.Base(name)
	return strings.HasPrefix(base, whiteoutMetaPrefix) && base != whiteoutOpaque
}

// hasSparseRecords reports whether PAX records include any GNU.sparse one.
func hasSparseRecords(recs map[string]string) bool {
	for k := range recs {
		if strings.HasPrefix(k, paxGNUSparse) {
			return true
		}
	}
	return false
}

// checkID checks an owner or device number: Linux stores them in 32 bits.
func checkID(hdr *tar.Header, what string, v int64) (int64, error) {
	if v < 0 || v > math.MaxUint32 {
		return 0, entryErrorf(hdr.Name, "%s %d out of range", what, v)
	}
	return v, nil
}

// normalizeTime drops any monotonic reading and location so that equal
// instants compare equal with reflect.DeepEqual, here and after decoding.
func normalizeTime(t time.Time) time.Time {
	return time.Unix(t.Unix(), int64(t.Nanosecond())).UTC()
}

// xattrs collects the extended attributes of hdr from its PAX records, or nil
// when it has none. SCHILY.xattr.NAME holds the raw value; LIBARCHIVE.xattr.
// holds a percent-encoded NAME and a base64 value. When both name the same
// attribute the SCHILY record wins.
func (b *builder) xattrs(hdr *tar.Header) (map[string]string, error) {
	var schily, libarchive []string
	for k := range hdr.PAXRecords {
		switch {
		case strings.HasPrefix(k, paxSchilyXattr):
			schily = append(schily, k)
		case strings.HasPrefix(k, paxLibarchiveXattr):
			libarchive = append(libarchive, k)
		}
	}
	if len(schily) == 0 && len(libarchive) == 0 {
		return nil, nil
	}
	sort.Strings(libarchive) // deterministic error messages
	sort.Strings(schily)
	x := make(map[string]string, len(schily)+len(libarchive))
	for _, k := range libarchive {
		name, err := url.PathUnescape(k[len(paxLibarchiveXattr):])
		if err != nil {
			return nil, entryErrorf(hdr.Name, "xattr record %q: bad percent-encoding", k)
		}
		v := strings.TrimRight(hdr.PAXRecords[k], "=")
		value, err := base64.RawStdEncoding.DecodeString(v)
		if err != nil {
			return nil, entryErrorf(hdr.Name, "xattr record %q: bad base64 value", k)
		}
		x[name] = string(value)
	}
	for _, k := range schily {
		x[k[len(paxSchilyXattr):]] = hdr.PAXRecords[k]
	}
	total := 0
	for name, value := range x {
		if name == "" || strings.IndexByte(name, 0) >= 0 {
			return nil, entryErrorf(hdr.Name, "xattr name %q is empty or contains a NUL byte", name)
		}
		total += len(name) + len(value)
	}
	if total > b.opts.MaxXattrBytes {
		return nil, entryErrorf(hdr.Name, "xattrs take %d bytes, more than %d; set Options.MaxXattrBytes to raise the cap",
			total, b.opts.MaxXattrBytes)
	}
	return x, nil
}

// checkEntry reports the first way e breaks the Entry invariants, for an
// entry of a table whose uncompressed stream is tarSize bytes. Build only
// makes entries that pass; Unmarshal and MarshalBinary check with it.
func checkEntry(e *Entry, tarSize int64) error {
	if e.Type < TypeReg || e.Type > TypeOpaque {
		return fmt.Errorf("unknown type %d", e.Type)
	}
	if !isCleanName(e.Name) {
		return fmt.Errorf("name %q is not clean", e.Name)
	}
	if e.Name == "" && e.Type != TypeDir && e.Type != TypeOpaque {
		return fmt.Errorf("a %s has an empty name", e.Type)
	}
	if e.Mode&^07777 != 0 {
		return fmt.Errorf("mode %#o has bits outside 07777", e.Mode)
	}
	if e.UID < 0 || e.UID > math.MaxUint32 || e.GID < 0 || e.GID > math.MaxUint32 {
		return fmt.Errorf("uid %d or gid %d out of range", e.UID, e.GID)
	}
	if e.Type == TypeReg {
		if e.Size < 0 {
			return fmt.Errorf("negative size %d", e.Size)
		}
		if e.Sparse != nil {
			if err := checkSparse(e.Sparse, e.Size); err != nil {
				return err
			}
		}
		if data := e.DataSize(); e.Offset < 0 || data > tarSize || e.Offset > tarSize-data {
			return fmt.Errorf("content %d+%d lies outside the %d-byte stream", e.Offset, data, tarSize)
		}
	} else if e.Size != 0 || e.Offset != 0 || e.Sparse != nil {
		return fmt.Errorf("a %s has size %d, offset %d or a sparse map", e.Type, e.Size, e.Offset)
	}
	switch e.Type {
	case TypeHardlink:
		if e.Linkname == "" || !isCleanName(e.Linkname) {
			return fmt.Errorf("hard link target %q is not a clean name", e.Linkname)
		}
	case TypeSymlink:
		if strings.IndexByte(e.Linkname, 0) >= 0 {
			return fmt.Errorf("symlink target %q contains a NUL byte", e.Linkname)
		}
	default:
		if e.Linkname != "" {
			return fmt.Errorf("a %s has link target %q", e.Type, e.Linkname)
		}
	}
	if e.Type == TypeChar || e.Type == TypeBlock {
		if e.Devmajor < 0 || e.Devmajor > math.MaxUint32 || e.Devminor < 0 || e.Devminor > math.MaxUint32 {
			return fmt.Errorf("device %d,%d out of range", e.Devmajor, e.Devminor)
		}
	} else if e.Devmajor != 0 || e.Devminor != 0 {
		return fmt.Errorf("a %s has device numbers %d,%d", e.Type, e.Devmajor, e.Devminor)
	}
	for name := range e.Xattrs {
		if name == "" || strings.IndexByte(name, 0) >= 0 {
			return fmt.Errorf("xattr name %q is empty or contains a NUL byte", name)
		}
	}
	return nil
}

// checkSparse reports the first way m breaks the [SparseMap] invariants
// for a file of size bytes.
func checkSparse(m *SparseMap, size int64) error {
	var end, data int64
	for i, sg := range m.Segments {
		switch {
		case sg.Len <= 0 || sg.Off < end || sg.Len > size || sg.Off > size-sg.Len:
			return fmt.Errorf("sparse segment %d (%d+%d) is empty, out of order or outside the %d-byte file", i, sg.Off, sg.Len, size)
		case sg.Data != data:
			return fmt.Errorf("sparse segment %d: data at %d, want %d", i, sg.Data, data)
		}
		end, data = sg.Off+sg.Len, data+sg.Len
	}
	return nil
}

// isCleanName reports whether name is in the form cleanName produces: ""
// for the root, or slash-separated elements that are neither empty, "." nor
// "..", with no NUL byte.
func isCleanName(name string) bool {
	elem := 0 // start of the current element
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '/' {
			if name[i] == 0 {
				return false
			}
			continue
		}
		switch name[elem:i] {
		case "":
			return name == ""
		case ".", "..":
			return false
		}
		elem = i + 1
	}
	return true
}
