package fstest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// getManifest fetches repo:ref and returns the body and the registry's digest.
func getManifest(t *testing.T, host, repo, ref string, accept ...string) ([]byte, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+host+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join(accept, ", "))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s: %s", repo, ref, resp.Status, body)
	}
	return body, resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Content-Type")
}

func TestPush(t *testing.T) {
	host := StartRegistry(t)
	tests := []struct {
		name   string
		layers []Layer
		opts   Options
	}{
		{"oci gzip", Corners(), Options{}},
		{"oci mixed", MixedCorners(), Options{}},
		{"docker", CornersWith(Gzip), Options{Docker: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im := mustBuild(t, tt.layers, tt.opts)
			repo := "test/" + strings.ReplaceAll(tt.name, " ", "-")
			if err := im.Push(t.Context(), host, repo, "v1"); err != nil {
				t.Fatalf("Push: %v", err)
			}
			// Again: every blob is there now, so only HEADs and the manifest go out.
			if err := im.Push(t.Context(), host, repo, "v2"); err != nil {
				t.Fatalf("Push again: %v", err)
			}
			for _, tag := range []string{"v1", "v2"} {
				body, dgst, ctype := getManifest(t, host, repo, tag, im.ManifestDesc.MediaType)
				if got := digest.FromBytes(body); got != im.ManifestDesc.Digest || dgst != im.ManifestDesc.Digest.String() {
					t.Errorf("manifest %s: body digest %s, header %s, want %s", tag, got, dgst, im.ManifestDesc.Digest)
				}
				if ctype != im.ManifestDesc.MediaType {
					t.Errorf("manifest %s: content type %q, want %q", tag, ctype, im.ManifestDesc.MediaType)
				}
			}
			for _, desc := range im.LayerDescs {
				resp, err := http.Get("http://" + host + "/v2/" + repo + "/blobs/" + desc.Digest.String())
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || digest.FromBytes(b) != desc.Digest {
					t.Errorf("blob %s: read %d bytes (%v), want its content", desc.Digest, len(b), err)
				}
			}
		})
	}
}

func TestPushBlobDir(t *testing.T) {
	host := StartRegistry(t)
	im := mustBuild(t, Random(4, 80), Options{BlobDir: t.TempDir()})
	if err := im.Push(t.Context(), host, "blobdir", ""); err != nil {
		t.Fatalf("Push: %v", err)
	}
	body, _, _ := getManifest(t, host, "blobdir", im.ManifestDesc.Digest.String(), ocispec.MediaTypeImageManifest)
	if !bytes.Equal(body, im.Manifest) {
		t.Errorf("manifest by digest differs from pushed one")
	}
}

func TestPushIndex(t *testing.T) {
	host := StartRegistry(t)
	ix, err := BuildIndex(map[string]*Image{
		"linux/amd64": mustBuild(t, Random(1, 20), Options{Platform: "linux/amd64"}),
		"linux/arm64": mustBuild(t, Random(2, 20), Options{Platform: "linux/arm64"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.Push(t.Context(), host, "multi", "latest"); err != nil {
		t.Fatalf("Push index: %v", err)
	}
	body, dgst, _ := getManifest(t, host, "multi", "latest", ocispec.MediaTypeImageIndex)
	if dgst != ix.Desc.Digest.String() || !bytes.Equal(body, ix.Manifest) {
		t.Errorf("index by tag: digest %s, want %s", dgst, ix.Desc.Digest)
	}
	for _, im := range ix.Images {
		getManifest(t, host, "multi", im.ManifestDesc.Digest.String(), ocispec.MediaTypeImageManifest)
	}
}

func TestPushErrors(t *testing.T) {
	host := StartRegistry(t)
	im := mustBuild(t, Random(1, 5), Options{})
	if err := im.Push(t.Context(), host, "Bad_Repo_Name", "x"); err == nil {
		t.Errorf("Push to an invalid repository name succeeded, want error")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := im.Push(ctx, host, "ok", "x"); err == nil {
		t.Errorf("Push with a cancelled context succeeded, want error")
	}
}

func TestRunRegistry(t *testing.T) {
	if _, err := os.Stat(RegistryBinary); err != nil {
		skipOrFail(t, "docker-registry not installed (apt-get install docker-registry)")
	}
	dir := t.TempDir()
	host, stop, err := RunRegistry(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + host + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ = %s, want 200", resp.Status)
	}
	if err := stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if err := stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
	if _, err := http.Get("http://" + host + "/v2/"); err == nil {
		t.Errorf("registry still answers after stop")
	}
	if _, err := os.Stat(filepath.Join(dir, "registry.log")); err != nil {
		t.Errorf("no registry log: %v", err)
	}
}
