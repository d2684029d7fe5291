package fetch

import (
	"encoding/json"
	"fmt"
	"mime"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Manifest media types that Resolve accepts or names in errors.
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerSchema1      = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerSchema1Sig   = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
)

// maxManifestSize caps manifests, image indexes and configs.
const maxManifestSize = 4 << 20

// maxIndexDepth caps how many nested image indexes Resolve follows.
const maxIndexDepth = 4

func isManifestType(mt string) bool {
	return mt == ocispec.MediaTypeImageManifest || mt == mediaTypeDockerManifest
}

func isIndexType(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == mediaTypeDockerManifestList
}

// isGenericType reports whether a Content-Type says nothing about which
// manifest format the body is.
func isGenericType(mt string) bool {
	switch mt {
	case "", "application/json", "text/plain", "application/octet-stream", "binary/octet-stream":
		return true
	}
	return false
}

// checkSize rejects documents over maxManifestSize.
func checkSize(what string, n int) error {
	if n > maxManifestSize {
		return formatError("%s is larger than 4 MiB", what)
	}
	return nil
}

// sniff is the part of a manifest-like document used to tell its kind.
type sniff struct {
	SchemaVersion *int            `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     json.RawMessage `json:"manifests"`
	Layers        json.RawMessage `json:"layers"`
	Config        json.RawMessage `json:"config"`
	FSLayers      json.RawMessage `json:"fsLayers"`
}

// DetectMediaType returns the manifest media type of b given the
// Content-Type it came with. A specific Content-Type is kept (parameters
// stripped) and must agree with the body's own mediaType field when that is
// present; a generic one ("", application/json, …) is replaced by the body's
// mediaType field or, failing that, guessed from its fields.
func DetectMediaType(contentType string, b []byte) (string, error) {
	mt := contentType
	if parsed, _, err := mime.ParseMediaType(contentType); err == nil {
		mt = parsed
	}
	if err := checkSize("manifest", len(b)); err != nil {
		return "", err
	}
	var s sniff
	if err := json.Unmarshal(b, &s); err != nil {
		return "", formatError("manifest: %v", err)
	}
	if !isGenericType(mt) {
		if s.MediaType != "" && s.MediaType != mt {
			return "", formatError("manifest served as %q declares mediaType %q", mt, s.MediaType)
		}
		return mt, nil
	}
	switch {
	case s.MediaType != "":
		return s.MediaType, nil
	case s.SchemaVersion != nil && *s.SchemaVersion == 1, len(s.FSLayers) > 0:
		return mediaTypeDockerSchema1, nil
	case len(s.Manifests) > 0:
		return ocispec.MediaTypeImageIndex, nil
	case len(s.Config) > 0 || len(s.Layers) > 0:
		return ocispec.MediaTypeImageManifest, nil
	}
	return "", formatError("manifest has no mediaType and is neither an image manifest nor an index")
}

// unsupportedType is the error for a manifest media type Resolve cannot use.
func unsupportedType(mt string) error {
	switch mt {
	case mediaTypeDockerSchema1, mediaTypeDockerSchema1Sig:
		return formatError("manifest media type %q (Docker schema 1) is not supported; push the image again with a current client to get schema 2 or OCI", mt)
	}
	return formatError("unknown manifest media type %q (want an OCI or Docker schema 2 manifest or index)", mt)
}

// checkDescriptor validates a descriptor's digest and size.
func checkDescriptor(what string, d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return formatError("%s: digest %q: %v", what, d.Digest, err)
	}
	if d.Size < 0 {
		return formatError("%s %s: negative size %d", what, d.Digest, d.Size)
	}
	return nil
}

// ParseManifest parses an OCI image manifest or a Docker schema 2 manifest
// (media types are kept as given). mediaType may be a Content-Type; a
// generic one is resolved from the body (see [DetectMediaType]). Indexes,
// schema 1 and unknown types are rejected with an ErrFormat error naming
// the type. The config and layer descriptors are validated.
func ParseManifest(mediaType string, b []byte) (ocispec.Manifest, error) {
	mt, err := DetectMediaType(mediaType, b)
	if err != nil {
		return ocispec.Manifest{}, err
	}
	if !isManifestType(mt) {
		if isIndexType(mt) {
			return ocispec.Manifest{}, formatError("manifest: media type %q is an image index, not a manifest", mt)
		}
		return ocispec.Manifest{}, unsupportedType(mt)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return ocispec.Manifest{}, formatError("manifest: %v", err)
	}
	if m.SchemaVersion != 2 {
		return ocispec.Manifest{}, formatError("manifest: schemaVersion %d, want 2", m.SchemaVersion)
	}
	if m.MediaType == "" {
		m.MediaType = mt
	}
	if err := checkDescriptor("manifest: config", m.Config); err != nil {
		return ocispec.Manifest{}, err
	}
	for i, l := range m.Layers {
		if err := checkDescriptor(fmt.Sprintf("manifest: layer %d", i), l); err != nil {
			return ocispec.Manifest{}, err
		}
	}
	return m, nil
}

// ParseIndex parses an OCI image index or a Docker manifest list and
// validates its manifest descriptors.
func ParseIndex(b []byte) (ocispec.Index, error) {
	if err := checkSize("image index", len(b)); err != nil {
		return ocispec.Index{}, err
	}
	var ix ocispec.Index
	if err := json.Unmarshal(b, &ix); err != nil {
		return ocispec.Index{}, formatError("image index: %v", err)
	}
	if ix.SchemaVersion != 2 {
		return ocispec.Index{}, formatError("image index: schemaVersion %d, want 2", ix.SchemaVersion)
	}
	if ix.MediaType != "" && !isIndexType(ix.MediaType) {
		return ocispec.Index{}, formatError("image index: mediaType %q is not an index", ix.MediaType)
	}
	for i, d := range ix.Manifests {
		if err := checkDescriptor(fmt.Sprintf("image index: manifest %d", i), d); err != nil {
			return ocispec.Index{}, err
		}
	}
	return ix, nil
}

// ParseConfig parses an image config and validates its rootfs: type
// "layers" and well-formed diff_ids.
func ParseConfig(b []byte) (ocispec.Image, error) {
	if err := checkSize("config", len(b)); err != nil {
		return ocispec.Image{}, err
	}
	var img ocispec.Image
	if err := json.Unmarshal(b, &img); err != nil {
		return ocispec.Image{}, formatError("config: %v", err)
	}
	if img.RootFS.Type != "layers" {
		return ocispec.Image{}, formatError("config: rootfs.type %q, want \"layers\"", img.RootFS.Type)
	}
	for i, d := range img.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return ocispec.Image{}, formatError("config: diff_ids[%d] %q: %v", i, d, err)
		}
	}
	return img, nil
}

// Platform is an os/arch[/variant] triple used to narrow an image index.
type Platform struct {
	OS, Architecture, Variant string
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform parses "os/arch[/variant]"; "" means this machine.
func ParsePlatform(s string) (Platform, error) {
	if s == "" {
		return hostPlatform(), nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], e.g. linux/arm64 or linux/arm/v7", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// hostPlatform is the platform this binary runs on; for arm the variant
// comes from the GOARM the binary was built with.
func hostPlatform() Platform {
	p := Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm" {
		p.Variant = "v7"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "GOARM" && s.Value != "" {
					v, _, _ := strings.Cut(s.Value, ",")
					p.Variant = "v" + v
				}
			}
		}
	}
	return p
}

// matches reports whether an index entry's platform satisfies p. An empty
// wanted variant accepts any; arm64's variant "" and "v8" are the same.
func (p Platform) matches(q *ocispec.Platform) bool {
	if q == nil || q.OS != p.OS || q.Architecture != p.Architecture {
		return false
	}
	if p.Variant == "" {
		return true
	}
	norm := func(arch, v string) string {
		if arch == "arm64" && v == "" {
			return "v8"
		}
		return v
	}
	return norm(p.Architecture, p.Variant) == norm(q.Architecture, q.Variant)
}

// selectPlatform picks the first manifest of ix that matches p. ok is false
// when none does; available then lists the platforms the index offers.
func selectPlatform(ix ocispec.Index, p Platform) (desc ocispec.Descriptor, ok bool, available []string) {
	for _, d := range ix.Manifests {
		if d.Platform == nil {
			continue
		}
		if p.matches(d.Platform) && (isManifestType(d.MediaType) || isIndexType(d.MediaType) || d.MediaType == "") {
			return d, true, nil
		}
		if d.Platform.OS == "unknown" {
			continue // attestations and other artifacts, not images
		}
		s := Platform{OS: d.Platform.OS, Architecture: d.Platform.Architecture, Variant: d.Platform.Variant}.String()
		if !slices.Contains(available, s) {
			available = append(available, s)
		}
	}
	return ocispec.Descriptor{}, false, available
}

// checkLayers checks that config and manifest agree on the layer count.
func checkLayers(m ocispec.Manifest, cfg ocispec.Image) error {
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return formatError("config lists %d diff_ids but the manifest has %d layers", len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	return nil
}

// verifyBytes checks b against want, returning a *DigestError on mismatch.
func verifyBytes(what string, want digest.Digest, b []byte) error {
	if err := want.Validate(); err != nil {
		return formatError("%s: digest %q: %v", what, want, err)
	}
	got := want.Algorithm().FromBytes(b)
	if got != want {
		return &DigestError{What: what, Want: want, Got: got}
	}
	return nil
}
