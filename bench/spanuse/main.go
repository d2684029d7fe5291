// Command spanuse prices a recorded start-up offline: given a profile
// (`ocifs profile show --json IMAGE`, ranges of the layers' tars) and the
// registry storage holding the layers, it builds each gzip layer's ocifs
// index and prints, in compressed bytes, what the profile's reads fetch:
//
//   - whole spans (what a mount fetches today), and the windows of those
//     spans (fetched from the index blob);
//   - span prefixes from the span start to just past the last byte read
//     (what prefix digests would allow at best), and the same rounded up to
//     checkpoints every K compressed bytes, when a later read needs more of
//     a span: fetching only the rest of it, fetching the longer prefix
//     again from the span start, or fetching the whole span;
//   - the exact compressed extent of the bytes read;
//   - with -images (bench/.cache/images), the chunks and TOCs the eStargz
//     image of the same tars needs for the same files;
//   - simulated span placements ("SIM"): a span every S of tar and also at
//     the data start of every file of at least F bytes, priced as whole
//     spans and as prefixes, plus about 12.7 KB of window per span read.
//     The simulation puts span starts exactly where it wants them; real
//     spans start at deflate block ends, a few tens of KiB later.
//
// Example, after a bench run left its registry storage in bench/.cache:
//
//	ocifs profile record IMAGE -- /usr/bin/python3 -c 'import json'
//	ocifs profile show --json IMAGE > p.json
//	go run ./bench/spanuse -profile p.json -images bench/.cache/images \
//		-blobs bench/.cache/registry/docker/registry/v2/blobs
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"sort"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"

	"github.com/ocifs/ocifs/index"
)

type profile struct {
	Layers []struct {
		Digest string `json:"digest"`
	} `json:"layers"`
	Ranges []struct {
		Layer int   `json:"layer"`
		Off   int64 `json:"off"`
		Len   int64 `json:"len"`
	} `json:"ranges"`
}

// countReader counts the bytes the decompressor took.
type countReader struct {
	r *bufio.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// point: after consuming c compressed bytes, u uncompressed bytes were out.
type point struct{ c, u int64 }

func curve(path string) ([]point, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cr := &countReader{r: bufio.NewReaderSize(f, 1<<16)}
	zr, err := gzip.NewReader(cr)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 2048)
	var u int64
	pts := []point{{0, 0}}
	for {
		n, err := zr.Read(buf)
		u += int64(n)
		if n > 0 {
			pts = append(pts, point{cr.n, u})
		}
		if err == io.EOF {
			return pts, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// cFor returns the compressed bytes needed for output up to u.
func cFor(pts []point, u int64) int64 {
	i := sort.Search(len(pts), func(i int) bool { return pts[i].u >= u })
	if i == len(pts) {
		return pts[len(pts)-1].c
	}
	return pts[i].c
}

func main() {
	prof := flag.String("profile", "", "profile JSON")
	blobs := flag.String("blobs", "", "registry blobs dir (.../v2/blobs)")
	spanSize := flag.Int64("span", 1<<20, "span size")
	meta := flag.String("images", "", "bench/.cache/images, for the eStargz layers of the same tars")
	flag.Parse()
	b, err := os.ReadFile(*prof)
	check(err)
	var p profile
	if err := json.Unmarshal(b, &p); err != nil {
		check(err)
	}
	var grid [][3]int64
	for _, sz := range []int64{1 << 20, 2 << 20, 4 << 20} {
		for _, mf := range []int64{0, 64 << 10, 128 << 10, 256 << 10, 512 << 10} {
			grid = append(grid, [3]int64{sz, mf, 64 << 10})
		}
	}
	sims := map[[3]int64][][4]int64{}
	ks := []int64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10}
	var totEsg int64
	var totWhole, totIdeal, totUnc, totExact, totWin, totIndex, totTar, totHead int64
	totK := make([]int64, len(ks))
	totKRefetch := make([]int64, len(ks))
	totKOnce := make([]int64, len(ks))
	for li, l := range p.Layers {
		hex := l.Digest[len("sha256:"):]
		path := filepath.Join(*blobs, "sha256", hex[:2], hex, "data")
		f, err := os.Open(path)
		check(err)
		t, err := index.BuildLayer(f, "application/vnd.oci.image.layer.v1.tar+gzip", index.Options{SpanSize: *spanSize})
		f.Close()
		check(err)
		enc, err := t.MarshalBinary()
		check(err)
		st, err := index.Unmarshal(enc)
		check(err)
		head, _ := index.HeadLen(enc)
		totIndex += int64(len(enc))
		totTar += t.TarSize
		pts, err := curve(path)
		check(err)
		need := map[int]int64{} // span -> max uncompressed end needed
		onceWhole := make([]map[int]bool, len(ks))
		for k := range ks {
			onceWhole[k] = map[int]bool{}
		}
		levelK := make([]map[int]int64, len(ks))
		for k := range ks {
			levelK[k] = map[int]int64{}
		}
		var unc int64
		for _, r := range p.Ranges {
			if r.Layer != li {
				continue
			}
			unc += r.Len
			off, end := r.Off, r.Off+r.Len
			for i := t.SpanFor(off); i >= 0 && i < len(t.Spans) && t.Spans[i].U < end; i++ {
				e := min(end, t.SpanEnd(i))
				need[i] = max(need[i], e)
				sp := t.Spans[i]
				c := cFor(pts, e)
				if e == t.SpanEnd(i) {
					c = sp.CEnd
				}
				for k, K := range ks {
					// checkpoints every K compressed bytes from the span start
					got := sp.C + ((c-sp.C+K-1)/K)*K
					got = min(got, sp.CEnd)
					if got > levelK[k][i] {
						// prefix once, then the whole span
						if levelK[k][i] == 0 {
							totKOnce[k] += got - sp.C
						} else if onceWhole[k][i] == false {
							totKOnce[k] += sp.CEnd - sp.C
							onceWhole[k][i] = true
						}
						if levelK[k][i] == 0 {
							levelK[k][i] = sp.C
						}
						totKRefetch[k] += got - sp.C
						levelK[k][i] = got
					}
				}
			}
		}
		// exact: compressed extent of the union of ranges
		type rg struct{ off, end int64 }
		var rs []rg
		for _, r := range p.Ranges {
			if r.Layer == li {
				rs = append(rs, rg{r.Off, r.Off + r.Len})
			}
		}
		sort.Slice(rs, func(a, b int) bool { return rs[a].off < rs[b].off })
		var exact int64
		var cur rg
		for j, r := range rs {
			if j == 0 {
				cur = r
				continue
			}
			if r.off <= cur.end {
				cur.end = max(cur.end, r.end)
				continue
			}
			exact += cFor(pts, cur.end) - cFor(pts, cur.off)
			cur = r
		}
		exact += cFor(pts, cur.end) - cFor(pts, cur.off)
		// suffix: from the compressed offset of each span's first needed byte to span end
		first := map[int]int64{}
		for _, r := range rs {
			for i := t.SpanFor(r.off); i >= 0 && i < len(t.Spans) && t.Spans[i].U < r.end; i++ {
				s := max(r.off, t.Spans[i].U)
				if v, ok := first[i]; !ok || s < v {
					first[i] = s
				}
			}
		}
		var suffix, band int64
		for i, s := range first {
			suffix += t.Spans[i].CEnd - cFor(pts, s)
			e := need[i]
			c := cFor(pts, e)
			if e == t.SpanEnd(i) {
				c = t.Spans[i].CEnd
			}
			band += c - cFor(pts, s)
		}
		fmt.Printf("  exact compressed extent of the reads %d; from first needed byte to span end %d; first needed byte to last %d\n", exact, suffix, band)
		totExact += exact
		if *meta != "" {
			esg, toc := estargzBytes(*blobs, *meta, t, p, li)
			fmt.Printf("  estargz: chunks %d, toc+footer %d\n", esg, toc)
			totEsg += esg + toc
		}
		for _, c := range grid {
			w, pf, n, used := simulate(t, pts, p, li, c[0], c[1], c[2])
			sims[c] = append(sims[c], [4]int64{w, pf, int64(n), int64(used)})
			fmt.Printf("  sim span %d, file starts >= %d (gap %d): spans %d, read %d: whole %d, prefix %d\n", c[0]>>10, c[1]>>10, c[2]>>10, n, used, w, pf)
		}
		var win int64
		for i := range need {
			_, n, _ := st.WindowLocation(i)
			win += n
		}
		totWin += win
		totHead += head
		fmt.Printf("  windows of the spans read %d; index %d (head %d) for tar %d\n", win, len(enc), head, t.TarSize)
		var whole, ideal int64
		for i, e := range need {
			sp := t.Spans[i]
			whole += sp.CEnd - sp.C
			c := cFor(pts, e)
			if e == t.SpanEnd(i) {
				c = sp.CEnd
			}
			ideal += min(c, sp.CEnd) - sp.C
		}
		for k := range ks {
			var s int64
			for i, lv := range levelK[k] {
				s += lv - t.Spans[i].C
			}
			totK[k] += s
		}
		fmt.Printf("layer %d %s: blob %d, tar %d, spans %d; read %d uncompressed in %d spans: whole spans %d, prefix to last byte %d\n",
			li, l.Digest[:19], t.Size, t.TarSize, len(t.Spans), unc, len(need), whole, ideal)
		totWhole += whole
		totIdeal += ideal
		totUnc += unc
	}
	fmt.Printf("total: read %d uncompressed; whole spans %d; prefix to last byte %d; exact %d\n", totUnc, totWhole, totIdeal, totExact)
	for _, c := range grid {
		var w, pf, n, used int64
		for _, v := range sims[c] {
			w, pf, n, used = w+v[0], pf+v[1], n+v[2], used+v[3]
		}
		fmt.Printf("SIM span %4d KiB, spans also at files >= %3d KiB: spans %3d, read %3d, +windows %7d: whole %8d (total %8d), prefix %8d (total %8d)\n",
			c[0]>>10, c[1]>>10, n, used, used*12700, w, w+used*12700, pf, pf+used*12700)
	}
	fmt.Printf("estargz (chunks and TOCs of the layers read) %d\n", totEsg)
	fmt.Printf("windows of the spans read %d; index of the layers read %d (%.2f%% of their tar), head %d\n", totWin, totIndex, 100*float64(totIndex)/float64(totTar), totHead)
	for k, K := range ks {
		fmt.Printf("  checkpoints every %3d KiB: %d (extend: fetch the rest only), %d (refetch from span start), %d (a prefix, then the whole span)\n", K>>10, totK[k], totKRefetch[k], totKOnce[k])
	}
}

// estargzBytes maps the profile's ranges of layer li (tar offsets of t) to
// files, and those to the chunks of the eStargz layer of the same tar.
func estargzBytes(blobs, meta string, t *index.Table, p profile, li int) (chunks, toc int64) {
	var m struct {
		Desc struct {
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
		}
	}
	b, err := os.ReadFile(filepath.Join(meta, "layer-v1-estargz-"+t.DiffID.Encoded()+".json"))
	check(err)
	if err := json.Unmarshal(b, &m); err != nil {
		check(err)
	}
	hex := m.Desc.Digest[len("sha256:"):]
	f, err := os.Open(filepath.Join(blobs, "sha256", hex[:2], hex, "data"))
	check(err)
	defer f.Close()
	sr := io.NewSectionReader(f, 0, m.Desc.Size)
	r, err := estargz.Open(sr)
	check(err)
	tocOff, _, err := estargz.OpenFooter(sr)
	check(err)
	toc = m.Desc.Size - tocOff
	var regs []index.Entry
	for _, e := range t.Entries {
		if e.Type == index.TypeReg && e.Size > 0 {
			regs = append(regs, e)
		}
	}
	sort.Slice(regs, func(a, b int) bool { return regs[a].Offset < regs[b].Offset })
	seen := map[int64]bool{}
	for _, rg := range p.Ranges {
		if rg.Layer != li {
			continue
		}
		off, end := rg.Off, rg.Off+rg.Len
		for off < end {
			j := sort.Search(len(regs), func(j int) bool { return regs[j].Offset+regs[j].Size > off })
			if j == len(regs) || regs[j].Offset >= end {
				break
			}
			e := regs[j]
			lo, hi := max(off, e.Offset)-e.Offset, min(end, e.Offset+e.Size)-e.Offset
			for x := lo; x < hi; {
				ce, ok := r.ChunkEntryForOffset(e.Name, x)
				if !ok {
					log.Fatalf("eStargz layer %s has no chunk of %s at %d", m.Desc.Digest, e.Name, x)
				}
				if !seen[ce.Offset] {
					seen[ce.Offset] = true
					chunks += ce.NextOffset() - ce.Offset
				}
				x = ce.ChunkOffset + ce.ChunkSize
			}
			off = e.Offset + e.Size
		}
	}
	return chunks, toc
}

// simulate prices hypothetical span starts: every spanSize of tar since the
// last start, and the data start of every regular file of at least minFile
// bytes (when at least minGap past the last start). It returns the bytes a
// profile's reads fetch as whole spans and as span prefixes to the last
// byte read, and the span count (each span costs a window in the index).
func simulate(t *index.Table, pts []point, p profile, li int, spanSize, minFile, minGap int64) (whole, prefix int64, spans int, touched int) {
	var regs []int64
	for _, e := range t.Entries {
		if e.Type == index.TypeReg && e.Size >= minFile && minFile > 0 {
			regs = append(regs, e.Offset)
		}
	}
	sort.Slice(regs, func(a, b int) bool { return regs[a] < regs[b] })
	starts := []int64{0}
	last := int64(0)
	j := 0
	for {
		next := last + spanSize
		for j < len(regs) && regs[j] < last+minGap {
			j++
		}
		if j < len(regs) && regs[j] < next {
			next = regs[j]
		}
		if next >= t.TarSize {
			break
		}
		starts = append(starts, next)
		last = next
	}
	spanOf := func(u int64) int { return sort.Search(len(starts), func(i int) bool { return starts[i] > u }) - 1 }
	endOf := func(i int) int64 {
		if i+1 < len(starts) {
			return starts[i+1]
		}
		return t.TarSize
	}
	need := map[int]int64{}
	for _, r := range p.Ranges {
		if r.Layer != li {
			continue
		}
		off, end := r.Off, r.Off+r.Len
		for i := spanOf(off); i < len(starts) && starts[i] < end; i++ {
			need[i] = max(need[i], min(end, endOf(i)))
		}
	}
	for i, e := range need {
		c0 := cFor(pts, starts[i])
		whole += cFor(pts, endOf(i)) - c0
		prefix += cFor(pts, e) - c0
	}
	return whole, prefix, len(starts), len(need)
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
