// Package layering checks which of the module's packages each package may
// import, as depguard would: the read paths (mount, flatten, list, verify)
// must build without the replication client, and format stays pure.
package layering

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/combinefs/combinefs"

// allowed lists, for each package of the module, the module's packages it
// may import directly. A package missing here fails the test: add it with
// what it needs.
var allowed = map[string][]string{
	"format":                {},
	"format/waltest":        {"format"},
	"internal/dio":          {},
	"internal/safedir":      {},
	"internal/crashpoint":   {},
	"internal/layering":     {},
	"internal/mountctl":     {},
	"internal/s3test":       {},
	"cache":                 {"format", "internal/dio"},
	"resolver":              {"format"},
	"resolver/resolvertest": {"format", "resolver"},
	"verify":                {"format", "internal/dio"},
	"flatten":               {"format", "internal/crashpoint", "internal/dio", "resolver"},
	"cachedir":              {"internal/safedir", "resolver"},
	"fusefs":                {"cache", "cachedir", "flatten", "format", "internal/crashpoint", "internal/dio", "internal/safedir", "resolver"},
	"repo":                  {"format", "internal/crashpoint", "internal/dio", "resolver", "flatten", "verify"},
	"walarchive":            {"format", "repo"},
	"capture":               {"format", "internal/crashpoint", "internal/dio", "repo"},
	"cmd/combinefs":         {"*"},
	"bench":                 {"*"},
	"integration":           {"*"},
}

// readOnly are the packages a binary that only mounts, flattens, lists and
// verifies needs; none may depend, even indirectly, on these.
var (
	readOnly  = []string{"repo", "walarchive", "fusefs", "cachedir", "resolver", "flatten", "verify", "cache", "format"}
	forbidden = []string{module + "/capture", "github.com/jackc/"}
)

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T) map[string]*pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]*pkg{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")] = &p
	}
	return pkgs
}

func TestImports(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	for name, p := range pkgs {
		ok, known := allowed[name]
		if !known {
			t.Errorf("package %s is not in the layering table", name)
			continue
		}
		if slices.Contains(ok, "*") {
			continue
		}
		for _, imp := range p.Imports {
			rel, ours := strings.CutPrefix(imp, module+"/")
			if ours && !slices.Contains(ok, rel) {
				t.Errorf("%s imports %s, which it may not (allowed: %v)", name, rel, ok)
			}
		}
	}
}

// TestReadPathsWithoutCapture shows that mount and list work in a binary
// without capture: nothing the read paths depend on pulls in capture or the
// PostgreSQL driver.
func TestReadPathsWithoutCapture(t *testing.T) {
	pkgs := listPackages(t)
	for _, name := range readOnly {
		p := pkgs[name]
		if p == nil {
			t.Errorf("package %s not found", name)
			continue
		}
		for _, d := range p.Deps {
			for _, f := range forbidden {
				if strings.HasPrefix(d, f) {
					t.Errorf("%s depends on %s", name, d)
				}
			}
		}
	}
}

// TestCommandReadPaths: in cmd/combinefs only capture.go and archive.go
// (the WAL archiver) reach the replication client; the files of list,
// mount, flatten, verify and wal-get import repo instead.
func TestCommandReadPaths(t *testing.T) {
	files, err := filepath.Glob("../../cmd/combinefs/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no command files: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || filepath.Base(f) == "capture.go" || filepath.Base(f) == "archive.go" {
			continue
		}
		file, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range file.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); path == module+"/capture" {
				t.Errorf("%s imports capture", filepath.Base(f))
			}
		}
	}
}
