package main

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// module is the import path every package of ours starts with.
const module = "github.com/ocifs/ocifs"

// TestImportDirection keeps the direction of imports STYLE.md asks for,
// from the packages' real import lists (go list -deps, test files not
// included): cmd → fs → {fetch, index}; fetch and index independent; bench
// reached only by its own commands and by `ocifs bench`; test-support
// packages (…test) reached by no product package; and no package of ours,
// the ocifs binary included, linking package testing.
func TestImportDirection(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the go command is not on PATH (CI=true, so this is a failure): %v", err)
		}
		t.Skipf("the go command is not on PATH: %v", err)
	}
	cmd := exec.CommandContext(t.Context(), goBin, "list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", module+"/...")
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, stderr.Bytes())
	}
	graph := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		graph[f[0]] = f[1:]
	}
	for _, want := range []string{"cmd/ocifs", "fs", "fetch", "index", "bench"} {
		if _, ok := graph[module+"/"+want]; !ok {
			t.Fatalf("go list did not list %s/%s; the check would pass vacuously", module, want)
		}
	}
	for _, v := range importViolations(graph) {
		t.Error(v)
	}
}

// TestImportDirectionCatchesWrongEdges feeds importViolations a graph with
// one wrong edge of each kind: every one must be reported.
func TestImportDirectionCatchesWrongEdges(t *testing.T) {
	good := map[string][]string{
		"cmd/ocifs":           {"fs", "fetch", "index", "bench", "fs/mountinfo", "os"},
		"fs":                  {"fetch", "index", "index/toc", "fs/mountinfo", "errors"},
		"fs/mountinfo":        {"os"},
		"fs/fstest":           {"net/http"},
		"fetch":               {"net/http"},
		"index":               {"io"},
		"index/toc":           {"index"},
		"bench":               {"fs/fstest", "fs/mountinfo"},
		"bench/run":           {"bench"},
		"fs/store/podmantest": {"fs/fstest"},
		"os":                  {"errors"},
		"errors":              nil,
		"io":                  {"errors"},
		"net/http":            {"io"},
		"testing":             {"io"},
	}
	if v := importViolations(withModule(good)); len(v) != 0 {
		t.Fatalf("a graph that keeps the rules gives %q", v)
	}
	for _, tc := range []struct{ from, to string }{
		{"fetch", "index"},
		{"index", "fetch"},
		{"fetch", "fs"},
		{"index/toc", "fs"},
		{"fs", "cmd/ocifs"},
		{"fs", "bench"},
		{"fs", "fs/fstest"},
		{"index", "fs/fstest"},
		{"cmd/ocifs", "fs/fstest"},
		{"fs/fstest", "fs"},
		{"fs/mountinfo", "fetch"},
		{"fs/store/podmantest", "bench"},
		{"fs", "testing"},
		{"os", "testing"}, // reached, not imported: every package of ours links it
	} {
		t.Run(tc.from+" imports "+tc.to, func(t *testing.T) {
			g := map[string][]string{}
			for k, v := range good {
				g[k] = slices.Clone(v)
			}
			g[tc.from] = append(g[tc.from], tc.to)
			if v := importViolations(withModule(g)); len(v) == 0 {
				t.Errorf("importViolations found nothing wrong with %s → %s", tc.from, tc.to)
			}
		})
	}
}

// withModule prefixes the module path to the names of g that are ours
// (those with a "/" or named fs, fetch, index or bench).
func withModule(g map[string][]string) map[string][]string {
	ours := func(p string) string {
		switch {
		case strings.HasPrefix(p, "net/"), p == "os", p == "io", p == "errors", p == "testing":
			return p
		}
		return module + "/" + p
	}
	out := map[string][]string{}
	for k, v := range g {
		var imps []string
		for _, i := range v {
			imps = append(imps, ours(i))
		}
		out[ours(k)] = imps
	}
	return out
}

// importViolations checks a graph of import path → imports (as go list
// -deps prints it) against the rules, and says what each wrong edge breaks.
func importViolations(graph map[string][]string) []string {
	rel := func(p string) (string, bool) {
		if p == module {
			return "", true
		}
		r, ok := strings.CutPrefix(p, module+"/")
		return r, ok
	}
	under := func(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	// A test-support package, as net/http/httptest: fs/fstest, critest, podmantest.
	testSupport := func(p string) bool { return strings.HasSuffix(p, "test") }
	var out []string
	bad := func(from, to, rule string) {
		out = append(out, from+" imports "+to+": "+rule)
	}
	var pkgs []string
	for p := range graph {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, p := range pkgs {
		from, ours := rel(p)
		if !ours {
			continue
		}
		for _, imp := range graph[p] {
			to, ours := rel(imp)
			if imp == "testing" {
				bad(from, imp, "no package but a _test.go file imports testing (take a TB interface of your own, as fs/fstest does)")
			}
			if !ours {
				continue
			}
			switch {
			case under(from, "fetch") && !under(to, "fetch"):
				bad(from, to, "fetch imports no other ocifs package (it meets index only in fs)")
			case under(from, "index") && !under(to, "index"):
				bad(from, to, "index imports no other ocifs package (it meets fetch only in fs)")
			case (from == "fs/fstest" || from == "fs/mountinfo") && to != from:
				bad(from, to, from+" imports no other ocifs package")
			case under(to, "cmd"):
				bad(from, to, "nothing imports cmd")
			case under(to, "bench") && !under(from, "bench") && from != "cmd/ocifs":
				bad(from, to, "nothing imports bench but its own commands and `ocifs bench` (cmd/ocifs/bench.go)")
			case under(from, "fs") && !testSupport(from) && (under(to, "bench") || testSupport(to)):
				bad(from, to, "fs imports neither bench nor test-support packages")
			case testSupport(to) && !testSupport(from) && !under(from, "bench"):
				bad(from, to, "test-support packages are for tests, the benchmark and each other")
			}
		}
	}
	// testing reached through any chain, std packages included: the ocifs
	// binary must not link it.
	reaches := map[string]bool{}
	var visit func(p string) bool
	visit = func(p string) bool {
		if r, ok := reaches[p]; ok {
			return r
		}
		reaches[p] = false // cuts cycles; go list has none
		r := p == "testing"
		for _, imp := range graph[p] {
			r = visit(imp) || r
		}
		reaches[p] = r
		return r
	}
	for _, p := range pkgs {
		if from, ours := rel(p); ours && visit(p) && !slices.Contains(graph[p], "testing") {
			out = append(out, from+" links package testing through its imports (go list -deps "+p+")")
		}
	}
	return out
}
