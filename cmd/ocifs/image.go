package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/pflag"

	"github.com/ocifs/ocifs/fs"
	"github.com/ocifs/ocifs/index"
)

// resolveImage resolves ref with a fresh client. The caller closes the image.
func resolveImage(ctx context.Context, e *env, ref string) (*fs.Image, error) {
	return resolveImageWith(ctx, e, ref, nil)
}

// resolveImageWith is resolveImage with options adjusted by set.
func resolveImageWith(ctx context.Context, e *env, ref string, set func(*fs.Options)) (*fs.Image, error) {
	c, err := newClient(e)
	if err != nil {
		return nil, err
	}
	opts := fs.Options{Logger: e.log, InsecureLazy: e.g.insecureLazy, IndexRepos: e.g.indexRepos}
	if set != nil {
		set(&opts)
	}
	return fs.Resolve(ctx, c, ref, opts)
}

// loadImage resolves ref and loads its merged tree.
func loadImage(ctx context.Context, e *env, ref string) (*fs.Image, error) {
	im, err := resolveImage(ctx, e, ref)
	if err != nil {
		return nil, err
	}
	if err := im.Load(ctx); err != nil {
		im.Close()
		return nil, fmt.Errorf("load %s: %w", im.Ref(), err)
	}
	return im, nil
}

// inspectOutput is `ocifs inspect --json`.
type inspectOutput struct {
	Reference         string         `json:"reference"`
	ManifestDigest    digest.Digest  `json:"manifest_digest"`
	ManifestMediaType string         `json:"manifest_media_type"`
	IndexDigest       digest.Digest  `json:"index_digest,omitempty"`
	Platform          string         `json:"platform"`
	ConfigDigest      digest.Digest  `json:"config_digest"`
	Created           *time.Time     `json:"created,omitempty"`
	Entrypoint        []string       `json:"entrypoint"`
	Cmd               []string       `json:"cmd"`
	EnvCount          int            `json:"env_count"`
	Layers            []inspectLayer `json:"layers"`
}

type inspectLayer struct {
	Index     int           `json:"index"`
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"media_type"`
	Size      int64         `json:"size"`
	DiffID    digest.Digest `json:"diff_id"`
	Mode      string        `json:"mode"`
	Why       string        `json:"why"`
}

func inspectFlags(set *pflag.FlagSet) runFunc {
	asJSON := set.Bool("json", false, "print one JSON object")
	return func(ctx context.Context, e *env, args []string) error {
		im, err := resolveImage(ctx, e, args[0])
		if err != nil {
			return err
		}
		defer im.Close()
		out := describe(im)
		if *asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		}
		return printInspect(e.stdout, out)
	}
}

func describe(im *fs.Image) *inspectOutput {
	fi := im.Fetched()
	cfg := fi.Config
	plat := cfg.OS + "/" + cfg.Architecture
	if cfg.Variant != "" {
		plat += "/" + cfg.Variant
	}
	out := &inspectOutput{
		Reference:         im.Ref(),
		ManifestDigest:    fi.ManifestDigest,
		ManifestMediaType: fi.ManifestMediaType,
		IndexDigest:       fi.IndexDigest,
		Platform:          plat,
		ConfigDigest:      fi.ConfigDigest,
		Created:           cfg.Created,
		Entrypoint:        cfg.Config.Entrypoint,
		Cmd:               cfg.Config.Cmd,
		EnvCount:          len(cfg.Config.Env),
		Layers:            []inspectLayer{},
	}
	for i, l := range im.Layers() {
		out.Layers = append(out.Layers, inspectLayer{
			Index: i, Digest: l.Digest, MediaType: l.MediaType, Size: l.Size,
			DiffID: l.DiffID, Mode: l.Mode, Why: l.Why,
		})
	}
	return out
}

func printInspect(w io.Writer, o *inspectOutput) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "reference\t%s\n", o.Reference)
	fmt.Fprintf(tw, "manifest\t%s\n", o.ManifestDigest)
	fmt.Fprintf(tw, "media type\t%s\n", o.ManifestMediaType)
	if o.IndexDigest != "" {
		fmt.Fprintf(tw, "index\t%s\n", o.IndexDigest)
	}
	fmt.Fprintf(tw, "platform\t%s\n", o.Platform)
	fmt.Fprintf(tw, "config\t%s\n", o.ConfigDigest)
	if o.Created != nil {
		fmt.Fprintf(tw, "created\t%s\n", o.Created.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "entrypoint\t%s\n", quoteArgs(o.Entrypoint))
	fmt.Fprintf(tw, "cmd\t%s\n", quoteArgs(o.Cmd))
	if o.EnvCount == 1 {
		fmt.Fprintf(tw, "env\t1 variable\n")
	} else {
		fmt.Fprintf(tw, "env\t%d variables\n", o.EnvCount)
	}
	fmt.Fprintf(tw, "layers\t%d\n", len(o.Layers))
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, l := range o.Layers {
		fmt.Fprintf(w, "\nlayer %d\n", l.Index)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  digest\t%s\n", l.Digest)
		fmt.Fprintf(tw, "  media type\t%s\n", l.MediaType)
		fmt.Fprintf(tw, "  size\t%s (%d bytes)\n", humanBytes(l.Size), l.Size)
		fmt.Fprintf(tw, "  diff_id\t%s\n", l.DiffID)
		fmt.Fprintf(tw, "  mode\t%s: %s\n", l.Mode, l.Why)
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func quoteArgs(args []string) string {
	if len(args) == 0 {
		return "-"
	}
	b, _ := json.Marshal(args)
	return string(b)
}

func lsFlags(set *pflag.FlagSet) runFunc {
	long := set.BoolP("long", "l", false, "long listing: mode, owner, size, mtime, name, -> target")
	return func(ctx context.Context, e *env, args []string) error {
		p := "/"
		if len(args) > 1 {
			p = args[1]
		}
		im, err := loadImage(ctx, e, args[0])
		if err != nil {
			return err
		}
		defer im.Close()
		// Like ls: a symlink named on the command line is listed itself in
		// long mode, and followed otherwise (or when it ends in "/").
		follow := !*long || strings.HasSuffix(p, "/")
		n, err := im.Tree().Resolve(p, follow)
		if err != nil {
			return fmt.Errorf("%w in %s", err, im.Ref())
		}
		if !n.IsDir() {
			return listEntries(e.stdout, []string{p}, []*fs.Node{n}, *long)
		}
		names := n.Names()
		nodes := make([]*fs.Node, len(names))
		for i, name := range names {
			nodes[i] = n.Child(name)
		}
		return listEntries(e.stdout, names, nodes, *long)
	}
}

func listEntries(w io.Writer, names []string, nodes []*fs.Node, long bool) error {
	if !long {
		for _, name := range names {
			if _, err := fmt.Fprintln(w, name); err != nil {
				return err
			}
		}
		return nil
	}
	type row struct{ mode, nlink, uid, gid, size, mtime, name string }
	rows := make([]row, len(nodes))
	var wn, wu, wg, ws int
	for i, n := range nodes {
		r := row{mode: modeString(n), nlink: fmt.Sprint(n.Nlink), uid: fmt.Sprint(n.UID), gid: fmt.Sprint(n.GID),
			size: fmt.Sprint(n.Size), mtime: n.ModTime.UTC().Format("2006-01-02 15:04"), name: names[i]}
		switch n.Type {
		case index.TypeChar, index.TypeBlock:
			r.size = fmt.Sprintf("%d, %d", n.Devmajor, n.Devminor)
		case index.TypeDir:
			r.size = "4096"
		case index.TypeSymlink:
			r.name += " -> " + n.Linkname
		}
		wn, wu, wg, ws = max(wn, len(r.nlink)), max(wu, len(r.uid)), max(wg, len(r.gid)), max(ws, len(r.size))
		rows[i] = r
	}
	bw := bufio.NewWriter(w)
	for _, r := range rows {
		fmt.Fprintf(bw, "%s %*s %*s %*s %*s %s %s\n", r.mode, wn, r.nlink, wu, r.uid, wg, r.gid, ws, r.size, r.mtime, r.name)
	}
	return bw.Flush()
}

// modeString renders a node's type and mode as ls -l does: "drwxr-xr-x",
// "-rwsr-xr-x", "drwxrwxrwt".
func modeString(n *fs.Node) string {
	var b [10]byte
	switch n.Type {
	case index.TypeDir:
		b[0] = 'd'
	case index.TypeSymlink:
		b[0] = 'l'
	case index.TypeChar:
		b[0] = 'c'
	case index.TypeBlock:
		b[0] = 'b'
	case index.TypeFifo:
		b[0] = 'p'
	default:
		b[0] = '-'
	}
	const rwx = "rwxrwxrwx"
	for i := 0; i < 9; i++ {
		if n.Mode&(1<<(8-i)) != 0 {
			b[i+1] = rwx[i]
		} else {
			b[i+1] = '-'
		}
	}
	special := func(bit uint32, pos int, set, unset byte) {
		if n.Mode&bit == 0 {
			return
		}
		if b[pos] == 'x' {
			b[pos] = set
		} else {
			b[pos] = unset
		}
	}
	special(0o4000, 3, 's', 'S')
	special(0o2000, 6, 's', 'S')
	special(0o1000, 9, 't', 'T')
	return string(b[:])
}

func catFlags(set *pflag.FlagSet) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		im, err := loadImage(ctx, e, args[0])
		if err != nil {
			return err
		}
		defer im.Close()
		p := args[1]
		n, err := im.Tree().Resolve(p, true)
		if err != nil {
			return fmt.Errorf("%w in %s", err, im.Ref())
		}
		switch n.Type {
		case index.TypeReg:
		case index.TypeDir:
			return fmt.Errorf("%s: is a directory in %s", p, im.Ref())
		default:
			return fmt.Errorf("%s: not a regular file (%s) in %s", p, n.Type, im.Ref())
		}
		if _, err := io.Copy(e.stdout, im.Open(ctx, n)); err != nil {
			return fmt.Errorf("cat %s: %w", path.Join("/", p), err)
		}
		return nil
	}
}

func pullFlags(set *pflag.FlagSet) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		start := time.Now()
		im, err := resolveImage(ctx, e, args[0])
		if err != nil {
			return err
		}
		defer im.Close()
		if err := pullWithProgress(ctx, e, im, args[1]); err != nil {
			return err
		}
		c := countTree(im.Tree())
		fmt.Fprintf(e.stderr, "pulled %s into %s: %d files, %d directories, %d symlinks, %s (%d bytes) in %s\n",
			im.Ref(), args[1], c.files, c.dirs, c.symlinks, humanBytes(c.bytes), c.bytes,
			time.Since(start).Round(time.Millisecond))
		return nil
	}
}

type treeCount struct {
	files, dirs, symlinks int
	bytes                 int64
}

// countTree counts the tree's inodes by type; a hardlinked file counts once.
func countTree(t *fs.Tree) treeCount {
	var c treeCount
	seen := map[*fs.Node]bool{}
	_ = t.Walk(func(_ string, n *fs.Node) error {
		if seen[n] {
			return nil
		}
		seen[n] = true
		switch n.Type {
		case index.TypeDir:
			c.dirs++
		case index.TypeSymlink:
			c.symlinks++
		case index.TypeReg:
			c.files++
			c.bytes += n.Size
		default:
			c.files++
		}
		return nil
	})
	return c
}
