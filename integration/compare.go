package integration

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TreeDiff compares two directory trees (host paths) entry by entry: the
// same names, kinds, permission bits, symlink targets (after mapLink) and
// byte-identical regular files. Names in skip are not compared. It returns
// "" when they are equal, else the differences (at most 20).
func TreeDiff(want, got string, mapLink func(string) string, skip ...string) string {
	var diffs []string
	add := func(format string, args ...any) {
		if len(diffs) < 20 {
			diffs = append(diffs, fmt.Sprintf(format, args...))
		}
	}
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}
	list := func(root string) map[string]fs.FileInfo {
		out := map[string]fs.FileInfo{}
		filepath.Walk(root, func(p string, info fs.FileInfo, err error) error {
			if err != nil {
				add("walk %s: %v", p, err)
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			if rel != "." && !skipped[rel] {
				out[rel] = info
			}
			return nil
		})
		return out
	}
	w, g := list(want), list(got)
	var names []string
	for n := range w {
		names = append(names, n)
	}
	for n := range g {
		if _, ok := w[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		wi, inW := w[n]
		gi, inG := g[n]
		switch {
		case !inG:
			add("%s: missing", n)
			continue
		case !inW:
			add("%s: unexpected", n)
			continue
		case wi.Mode().Type() != gi.Mode().Type():
			add("%s: type %v, want %v", n, gi.Mode().Type(), wi.Mode().Type())
			continue
		case wi.Mode().Perm() != gi.Mode().Perm() && wi.Mode()&fs.ModeSymlink == 0:
			add("%s: mode %v, want %v", n, gi.Mode().Perm(), wi.Mode().Perm())
		}
		switch {
		case wi.Mode()&fs.ModeSymlink != 0:
			wt, _ := os.Readlink(filepath.Join(want, n))
			gt, _ := os.Readlink(filepath.Join(got, n))
			if mapLink != nil {
				wt = mapLink(wt)
			}
			if wt != gt {
				add("%s: symlink to %q, want %q", n, gt, wt)
			}
		case wi.Mode().IsRegular():
			if wi.Size() != gi.Size() {
				add("%s: size %d, want %d", n, gi.Size(), wi.Size())
			} else if off, err := firstDifference(filepath.Join(want, n), filepath.Join(got, n)); err != nil {
				add("%s: %v", n, err)
			} else if off >= 0 {
				add("%s: differs at byte %d (block %d)", n, off, off/8192)
			}
		}
	}
	return strings.Join(diffs, "\n")
}

// firstDifference returns the offset of the first differing byte, or -1.
func firstDifference(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			for i := 0; i < min(na, nb); i++ {
				if ba[i] != bb[i] {
					return off + int64(i), nil
				}
			}
			return off + int64(min(na, nb)), nil
		}
		if ea != nil {
			return -1, nil
		}
		off += int64(na)
	}
}

var lastModified = regexp.MustCompile(`"Last-Modified": "[^"]*"`)

// ManifestDiff compares two backup_manifest files ignoring what legitimately
// differs between two runs: Last-Modified times and hence the
// Manifest-Checksum. Every other byte must match, in order.
func ManifestDiff(want, got string) string {
	w, err1 := os.ReadFile(want)
	g, err2 := os.ReadFile(got)
	if err1 != nil || err2 != nil {
		return fmt.Sprintf("read manifests: %v %v", err1, err2)
	}
	norm := func(b []byte) []string {
		b = lastModified.ReplaceAll(b, []byte(`"Last-Modified": "*"`))
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, `"Manifest-Checksum": `) {
				lines[i] = `"Manifest-Checksum": *`
			}
		}
		return lines
	}
	wl, gl := norm(w), norm(g)
	for i := 0; i < max(len(wl), len(gl)); i++ {
		var a, b string
		if i < len(wl) {
			a = wl[i]
		}
		if i < len(gl) {
			b = gl[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\n got: %s\nwant: %s", i+1, b, a)
		}
	}
	return ""
}

// mustNotExist fails when path (host) exists.
func mustNotExist(t testing.TB, path, why string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("%s exists after %s", path, why)
	}
}
