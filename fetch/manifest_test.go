package fetch

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

var (
	ociManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + hexA + `","size":10},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + hexB + `","size":20}]}`
	dockerManifest = `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",` +
		`"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:` + hexA + `","size":10},` +
		`"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:` + hexB + `","size":20}]}`
	noTypeManifest = `{"schemaVersion":2,"config":{"digest":"sha256:` + hexA + `","size":10},"layers":[]}`
	ociIndex       = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + hexA + `","size":10,"platform":{"os":"linux","architecture":"amd64"}},` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + hexB + `","size":10,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}`
	config = `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + hexA + `"]}}`
)

func TestParseManifest(t *testing.T) {
	for _, tc := range []struct {
		name, mediaType, body string
		wantType              string
		wantErr               string // "" for success
	}{
		{"oci", ocispec.MediaTypeImageManifest, ociManifest, ocispec.MediaTypeImageManifest, ""},
		{"docker", mediaTypeDockerManifest, dockerManifest, mediaTypeDockerManifest, ""},
		{"generic header, body says docker", "application/json", dockerManifest, mediaTypeDockerManifest, ""},
		{"header with parameters", ocispec.MediaTypeImageManifest + "; charset=utf-8", ociManifest, ocispec.MediaTypeImageManifest, ""},
		{"no media type anywhere", "", noTypeManifest, ocispec.MediaTypeImageManifest, ""},
		{"header and body disagree", mediaTypeDockerManifest, ociManifest, "", "declares mediaType"},
		{"index", ocispec.MediaTypeImageIndex, ociIndex, "", "is an image index"},
		{"schema 1", "", `{"schemaVersion":1,"fsLayers":[]}`, "", "schema 1"},
		{"unknown", "application/x-thing", `{}`, "", `"application/x-thing"`},
		{"not json", ocispec.MediaTypeImageManifest, `{"schemaVersion":`, "", "invalid input"},
		{"bad layer digest", ocispec.MediaTypeImageManifest, strings.Replace(ociManifest, "sha256:"+hexB, "sha256:xyz", 1), "", "layer 0"},
		{"negative size", ocispec.MediaTypeImageManifest, strings.Replace(ociManifest, `"size":20`, `"size":-1`, 1), "", "negative size"},
		{"schemaVersion 3", ocispec.MediaTypeImageManifest, strings.Replace(ociManifest, `"schemaVersion":2`, `"schemaVersion":3`, 1), "", "schemaVersion"},
		{"oversized", ocispec.MediaTypeImageManifest, ociManifest[:len(ociManifest)-1] + strings.Repeat(" ", maxManifestSize) + "}", "", "larger than 4 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest(tc.mediaType, []byte(tc.body))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseManifest() err = %v, want ErrFormat saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseManifest() err = %v", err)
			}
			if m.MediaType != tc.wantType {
				t.Errorf("ParseManifest().MediaType = %q, want %q", m.MediaType, tc.wantType)
			}
		})
	}
}

func TestParseIndexAndPlatform(t *testing.T) {
	ix, err := ParseIndex([]byte(ociIndex))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		platform string
		want     string // hex of the chosen digest, "" for none
	}{
		{"linux/amd64", hexA},
		{"linux/arm64", hexB},
		{"linux/arm64/v8", hexB},
		{"linux/arm64/v9", ""},
		{"windows/amd64", ""},
	} {
		p, err := ParsePlatform(tc.platform)
		if err != nil {
			t.Fatal(err)
		}
		d, ok, avail := selectPlatform(ix, p)
		got := strings.TrimPrefix(d.Digest.String(), "sha256:")
		if ok != (tc.want != "") || got != tc.want {
			t.Errorf("selectPlatform(%s) = %q, %v, want %q", tc.platform, got, ok, tc.want)
		}
		if !ok && strings.Join(avail, ", ") != "linux/amd64, linux/arm64/v8" {
			t.Errorf("selectPlatform(%s) available = %v", tc.platform, avail)
		}
	}
	for _, bad := range []string{`{"schemaVersion":2,"manifests":[{"digest":"sha256:1","size":1}]}`, `[]`, `{"schemaVersion":1}`,
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`} {
		if _, err := ParseIndex([]byte(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("ParseIndex(%s) err = %v, want ErrFormat", bad, err)
		}
	}
}

func TestParsePlatform(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Platform
		ok   bool
	}{
		{"linux/amd64", Platform{"linux", "amd64", ""}, true},
		{"linux/arm/v7", Platform{"linux", "arm", "v7"}, true},
		{"linux", Platform{}, false},
		{"linux/", Platform{}, false},
		{"linux/arm/v7/x", Platform{}, false},
		{"linux/arm/", Platform{}, false},
	} {
		got, err := ParsePlatform(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParsePlatform(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	if p, err := ParsePlatform(""); err != nil || p.OS == "" || p.Architecture == "" {
		t.Errorf("ParsePlatform(\"\") = %v, %v; want this machine", p, err)
	}
}

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(config))
	if err != nil || len(cfg.RootFS.DiffIDs) != 1 || cfg.OS != "linux" {
		t.Fatalf("ParseConfig() = %+v, %v", cfg, err)
	}
	for _, bad := range []string{
		`{"rootfs":{"type":"other","diff_ids":[]}}`,
		`{"rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}`,
		`{"rootfs":`,
		`null`,
	} {
		if _, err := ParseConfig([]byte(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("ParseConfig(%s) err = %v, want ErrFormat", bad, err)
		}
	}
}

func TestParseReference(t *testing.T) {
	d := "sha256:" + hexA
	for _, tc := range []struct {
		in   string
		want Reference
	}{
		{"alpine", Reference{Registry: "index.docker.io", Repository: "library/alpine", Tag: "latest"}},
		{"ghcr.io/o/r:1.0", Reference{Registry: "ghcr.io", Repository: "o/r", Tag: "1.0"}},
		{"localhost:5000/r@" + d, Reference{Registry: "localhost:5000", Repository: "r", Digest: "sha256:" + hexA}},
		{"r:t@" + d, Reference{Registry: "index.docker.io", Repository: "library/r", Tag: "t", Digest: "sha256:" + hexA}},
		{"oci:/a/b", Reference{Layout: "/a/b"}},
		{"oci:/a/b:v1", Reference{Layout: "/a/b", Tag: "v1"}},
		{"oci:/a:b/c", Reference{Layout: "/a:b/c"}},
		{"oci:/a:b/c:d", Reference{Layout: "/a:b/c", Tag: "d"}},
		{"oci:/a/b@" + d, Reference{Layout: "/a/b", Digest: "sha256:" + hexA}},
	} {
		got, err := ParseReference(tc.in)
		if err != nil {
			t.Errorf("ParseReference(%q): %v", tc.in, err)
			continue
		}
		got.repo = tc.want.repo
		if got != tc.want {
			t.Errorf("ParseReference(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"", "UPPER/case", "oci:", "oci:/a/b:", "oci:/a@sha256:short", "r@sha256:zz", "a b"} {
		if _, err := ParseReference(bad); err == nil {
			t.Errorf("ParseReference(%q) succeeded", bad)
		}
	}
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"localhost:5000", true}, {"127.0.0.1:5000", true}, {"127.1.2.3", true}, {"[::1]:5000", true},
		{"localhost.example.com", false}, {"10.0.0.1:5000", false}, {"registry.example", false},
	} {
		if got := isLoopback(tc.host); got != tc.want {
			t.Errorf("isLoopback(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"3", 3 * time.Second, true},
		{"0", 0, true},
		{"3600", maxRetryAfter, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{now.Add(time.Hour).Format(http.TimeFormat), maxRetryAfter, true},
	} {
		got, ok := retryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	for attempt := 1; attempt < 40; attempt++ {
		if d := backoff(attempt); d < backoffBase/2 || d > backoffCap {
			t.Errorf("backoff(%d) = %v, outside [%v, %v]", attempt, d, backoffBase/2, backoffCap)
		}
	}
}

func TestRedactURL(t *testing.T) {
	u, _ := url.Parse("https://user:pw@storage.example/blob/x?X-Amz-Signature=s3cret&token=t#frag")
	got := redactURL(&http.Request{URL: u})
	if got != "https://storage.example/blob/x" {
		t.Errorf("redactURL = %q, want no user info, query or fragment", got)
	}
}

func TestDigestError(t *testing.T) {
	err := error(&DigestError{What: "blob sha256:" + hexA + " from r.example/app", Want: "sha256:" + hexA, Got: "sha256:" + hexB})
	want := "invalid input: blob sha256:" + hexA + " from r.example/app: digest mismatch: want sha256:" + hexA + ", got sha256:" + hexB
	if err.Error() != want || !errors.Is(err, ErrFormat) {
		t.Errorf("DigestError = %q (Is ErrFormat: %v), want %q", err, errors.Is(err, ErrFormat), want)
	}
}
