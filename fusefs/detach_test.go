package fusefs_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/fusefs"
)

// TestDetach hydrates an upper under changes that leave whiteouts, overlays
// and new files, then detaches it: the directory must show exactly the
// mount's view (without backup_manifest), owned as asked, with nothing of
// the upper's bookkeeping. Detach of a mounted or incompletely hydrated
// upper is refused and changes nothing; a detach stopped after each of its
// steps leaves an upper that mount refuses and detach completes.
func TestDetach(t *testing.T) {
	requireFUSE(t)
	c := cowChain(t)
	p := openPoint(t, c.Dirs())
	m := pointModel(t, p)
	var unlink cowScenario
	for _, sc := range cowScenarios() {
		if sc.name == "unlink" {
			unlink = sc
		}
	}
	upper := filepath.Join(t.TempDir(), "upper")
	opts := fusefs.Options{UID: testUID, GID: testGID, Hydrate: true}
	mt := mountCoW(t, "", p, upper, opts)
	unlink.run(t, mt.dir, m)
	mustWriteAt(t, filepath.Join(mt.dir, "base/5/16384"), 3*bs+5, []byte("changed"))
	m.writeAt(t, "base/5/16384", 3*bs+5, []byte("changed"))
	waitHydrated(t, mt)

	// Refused while mounted.
	before := upperSnapshot(t, upper)
	if err := fusefs.Detach(upper, fusefs.DetachOptions{UID: testUID, GID: testGID}); err == nil || !strings.Contains(err.Error(), "live mount") {
		t.Errorf("detach of a mounted upper: %v", err)
	}
	mt.unmount(t)
	checkSame(t, "a refused detach of a mounted upper", before, upperSnapshot(t, upper))

	// Refused while incomplete.
	partial := filepath.Join(t.TempDir(), "partial")
	mt2 := mountCoW(t, "", p, partial, fusefs.Options{UID: testUID, GID: testGID})
	mustWriteAt(t, filepath.Join(mt2.dir, "base/5/16385"), 0, []byte("x"))
	mt2.unmount(t)
	beforePartial := upperSnapshot(t, partial)
	if err := fusefs.Detach(partial, fusefs.DetachOptions{UID: -1, GID: -1}); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("detach of an incomplete upper: %v", err)
	}
	checkSame(t, "a refused detach of an incomplete upper", beforePartial, upperSnapshot(t, partial))

	delete(m, "backup_manifest")
	for _, step := range []string{"", "marked", "cleaned", "moving", "moved", "removed"} {
		t.Run("crash-after-"+step, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "u")
			if out, err := exec.Command("cp", "-a", upper, dir).CombinedOutput(); err != nil {
				t.Fatalf("cp -a: %v %s", err, out)
			}
			o := fusefs.DetachOptions{UID: testUID, GID: testGID}
			if step != "" {
				crashed := func() (crashed bool) {
					defer func() { crashed = recover() == step }()
					o.AfterStep = func(s string) {
						if s == step {
							panic(s)
						}
					}
					fusefs.Detach(dir, o)
					return false
				}()
				if !crashed {
					t.Fatalf("detach never reached step %s", step)
				}
				if _, err := fusefs.MountCoW(t.TempDir(), p, dir, opts); err == nil || !strings.Contains(err.Error(), "being detached") {
					t.Fatalf("mount of an upper detached up to %s: %v", step, err)
				}
				o.AfterStep = nil
			}
			if err := fusefs.Detach(dir, o); err != nil {
				t.Fatalf("detach: %v", err)
			}
			checkView(t, dir, m)
			for rel, v := range upperSnapshot(t, dir) {
				if strings.Contains(v, "user.combinefs.") {
					t.Errorf("detached %s keeps an xattr: %s", rel, v[:10])
				}
			}
		})
	}
}

// upperSnapshot is every entry of an upper directory with its contents and
// xattrs.
func upperSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			v += " " + string(data)
		}
		for _, x := range []string{xattrOrigin, xattrLimit, xattrOpaque} {
			if s, ok := getXattr(p, x); ok {
				v += " " + x + "=" + s
			}
		}
		out[rel] = v
		return nil
	})
	return out
}

func checkSame(t *testing.T, what string, a, b map[string]string) {
	t.Helper()
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s changed %s", what, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s added %s", what, k)
		}
	}
}
