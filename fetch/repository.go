package fetch

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// ParseRepository parses a repository of a registry, `[registry/]repository`
// with Docker's defaults (docker.io, library/), and no tag or digest: the
// form of an index repository ("registry.example/ocifs-indexes"). As with
// [ParseReference], a registry on a loopback address is marked for plain
// HTTP. An OCI layout is refused: an index repository is a registry's.
func ParseRepository(s string) (Reference, error) {
	return parseRepository(s, false)
}

func parseRepository(s string, insecure bool) (Reference, error) {
	if strings.HasPrefix(s, layoutPrefix) {
		return Reference{}, fmt.Errorf("parse repository %q: an OCI layout; want REGISTRY/REPO", s)
	}
	if strings.Contains(s, "@") {
		return Reference{}, fmt.Errorf("parse repository %q: a digest; want REGISTRY/REPO, without tag or digest", s)
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(s, opts...)
	if err != nil {
		return Reference{}, fmt.Errorf("parse repository %q: %w (want REGISTRY/REPO, without tag or digest)", s, err)
	}
	if !insecure && isLoopback(repo.RegistryStr()) {
		if repo, err = name.NewRepository(s, name.Insecure); err != nil {
			return Reference{}, fmt.Errorf("parse repository %q: %w", s, err)
		}
	}
	return Reference{Registry: repo.RegistryStr(), Repository: repo.RepositoryStr(), repo: repo}, nil
}

// InRepository returns the image as another repository ("HOST/REPO") holds
// what refers to it: the same manifest, config and digests, whose
// [Image.Referrers], [Image.FetchReferrer], [Image.FetchBlob],
// [Image.OpenBlob] and [Image.PushReferrer] go to repo instead of the
// image's own repository. repo is reached as an image there would be:
// through the client's mirror configuration (hosts directory,
// registries.conf) and with the keychain's credentials for its registry.
// It reads nothing, and the image's manifest need not be in repo: this is
// how indexes of an image one cannot push to are stored and found (an
// index repository), keyed by the image's manifest digest. Everything read
// there is verified as from the image's own repository: a referrer must
// name this image's manifest as its subject, a blob must match its digest.
func (im *Image) InRepository(repo string) (*Image, error) {
	ref, err := parseRepository(repo, im.c.insecure)
	if err != nil {
		return nil, err
	}
	s, err := im.c.chainFor(ref)
	if err != nil {
		return nil, err
	}
	there := *im
	there.src = s
	return &there, nil
}
