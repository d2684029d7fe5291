package fetch

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// writeLayout writes imgs into a fresh OCI layout, tagging image i with
// tags[i] ("" for none), and returns the directory.
func writeLayout(t *testing.T, imgs []v1.Image, tags []string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "a:b", "layout") // a ':' before the last '/' is part of the path
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for i, img := range imgs {
		var opts []layout.Option
		if tags[i] != "" {
			opts = append(opts, layout.WithAnnotations(map[string]string{ocispec.AnnotationRefName: tags[i]}))
		}
		if err := p.AppendImage(img, opts...); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLayout(t *testing.T) {
	blob := randomBytes(t, 7000)
	a := testImage(t, types.OCIManifestSchema1, blob)
	b := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100), randomBytes(t, 200))
	aDigest, _ := a.Digest()
	bDigest, _ := b.Digest()
	two := writeLayout(t, []v1.Image{a, b}, []string{"latest", "v2"})
	one := writeLayout(t, []v1.Image{b}, []string{""})

	for _, tc := range []struct {
		ref, want string
	}{
		{"oci:" + two, aDigest.String()},
		{"oci:" + two + ":latest", aDigest.String()},
		{"oci:" + two + ":v2", bDigest.String()},
		{"oci:" + two + "@" + bDigest.String(), bDigest.String()},
		{"oci:" + one, bDigest.String()},
	} {
		c, _ := testClient(t, Options{})
		im, err := c.Resolve(t.Context(), tc.ref)
		if err != nil {
			t.Fatalf("Resolve(%q): %v", tc.ref, err)
		}
		if im.ManifestDigest.String() != tc.want {
			t.Errorf("Resolve(%q) = %s, want %s", tc.ref, im.ManifestDigest, tc.want)
		}
		if !strings.HasPrefix(im.Ref, "oci:/") {
			t.Errorf("Resolve(%q).Ref = %q, want an absolute oci: reference", tc.ref, im.Ref)
		}
	}

	c, _ := testClient(t, Options{})
	im, err := c.Resolve(t.Context(), "oci:"+two)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, im, im.Layers()[0])
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("OpenBlob from layout = %d bytes, %v", len(got), err)
	}

	// Tamper with the layer blob on disk: the read must fail.
	desc := im.Layers()[0]
	path := filepath.Join(two, "blobs", "sha256", desc.Digest.Encoded())
	bad := bytes.Clone(blob)
	bad[10] ^= 1
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = readAll(t, im, desc)
	var de *DigestError
	if !errors.As(err, &de) {
		t.Errorf("OpenBlob of a tampered layout blob: err = %v, want *DigestError", err)
	}
}

func TestLayoutErrors(t *testing.T) {
	a := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100))
	b := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100))
	tagged := writeLayout(t, []v1.Image{a, b}, []string{"one", "two"})
	untagged := writeLayout(t, []v1.Image{a, b}, []string{"", ""})
	tampered := writeLayout(t, []v1.Image{a}, []string{"latest"})
	ad, _ := a.Digest()
	raw, _ := a.RawManifest()
	raw = bytes.Replace(raw, []byte(`"schemaVersion":2`), []byte(`"schemaVersion": 2`), 1)
	if err := os.WriteFile(filepath.Join(tampered, "blobs", "sha256", ad.Hex), raw, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, ref string
		want      error
		says      string
	}{
		{"missing tag", "oci:" + tagged + ":three", ErrNotFound, "tags in index.json: one, two"},
		{"no tag, two manifests", "oci:" + tagged, ErrNotFound, ":latest"},
		{"untagged", "oci:" + untagged + ":x", ErrNotFound, "untagged"},
		{"not a layout", "oci:" + t.TempDir(), ErrNotFound, "index.json"},
		{"tampered manifest", "oci:" + tampered, ErrFormat, "digest mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := testClient(t, Options{})
			_, err := c.Resolve(t.Context(), tc.ref)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("Resolve(%q): err = %v, want %v saying %q", tc.ref, err, tc.want, tc.says)
			}
		})
	}
}

func TestLayoutIndex(t *testing.T) {
	amd := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100))
	arm := testImage(t, types.OCIManifestSchema1, randomBytes(t, 100))
	ix := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}}},
	)
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendIndex(ix, layout.WithAnnotations(map[string]string{ocispec.AnnotationRefName: "multi"})); err != nil {
		t.Fatal(err)
	}
	armDigest, _ := arm.Digest()
	ixDigest, _ := ix.Digest()
	c, _ := testClient(t, Options{Platform: "linux/arm/v7"})
	im, err := c.Resolve(t.Context(), "oci:"+dir+":multi")
	if err != nil {
		t.Fatal(err)
	}
	if im.ManifestDigest.String() != armDigest.String() || im.IndexDigest.String() != ixDigest.String() {
		t.Errorf("Resolve = %s from %s, want %s from %s", im.ManifestDigest, im.IndexDigest, armDigest, ixDigest)
	}
	c, _ = testClient(t, Options{Platform: "linux/arm/v6"})
	if _, err := c.Resolve(t.Context(), "oci:"+dir+":multi"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "linux/arm/v7") {
		t.Errorf("Resolve for linux/arm/v6: err = %v, want ErrNotFound listing linux/arm/v7", err)
	}
}
