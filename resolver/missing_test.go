package resolver_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// TestNewTreeMissingFile: a file the final backup's manifest lists but that
// is not in the backup refuses the chain, naming the file, whatever kind of
// file it is and wherever it is; a file missing from an older backup, or
// from a final backup without a manifest, is not this check's business.
func TestNewTreeMissingFile(t *testing.T) {
	build := func(t *testing.T) (*resolvertest.Chain, *resolvertest.Backup) {
		c := resolvertest.NewChain(t)
		full := c.Full()
		full.File("base/5/16384", resolvertest.FillBlock("full", 0))
		full.File("base/5/PG_VERSION", []byte("17\n"))
		ts := full.Tablespace(16390, false)
		full.File(ts+"/PG_17_202406281/5/16400", resolvertest.FillBlock("ts", 0))
		full.Finish()
		inc := c.Incremental()
		inc.Incremental("base/5/16384", 1)
		inc.File("base/5/PG_VERSION", []byte("17\n"))
		ts = inc.Tablespace(16390, false)
		inc.Incremental(ts+"/PG_17_202406281/5/16400", 1)
		return c, inc
	}
	c, _ := build(t)
	if _, err := pointOf(c.Dirs()); err != nil {
		t.Fatalf("complete chain: %v", err)
	}
	for _, rel := range []string{
		resolvertest.IncrementalPath("base/5/16384"),
		"base/5/PG_VERSION",
		resolvertest.IncrementalPath("pg_tblspc/16390/PG_17_202406281/5/16400"),
	} {
		t.Run(strings.ReplaceAll(rel, "/", "_"), func(t *testing.T) {
			c, inc := build(t)
			dirs := c.Dirs()
			inc.Remove(rel)
			_, err := pointOf(dirs)
			var ce *resolver.ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("chain without %s: %v, want a ChainError", rel, err)
			}
			full := filepath.Join(inc.Dir, rel)
			if ce.Backup != inc.Dir || !strings.Contains(err.Error(), full) || !strings.Contains(err.Error(), "backup_manifest") {
				t.Errorf("Error() = %q, want it to name %s and the manifest", err, full)
			}
			if want := fmt.Sprintf("%q is present in the manifest but not on disk", full); resolver.PgMessage(err) != want {
				t.Errorf("PgMessage = %q, want %q", resolver.PgMessage(err), want)
			}
		})
	}
	t.Run("older backup", func(t *testing.T) {
		c, _ := build(t)
		b := c.Incremental()
		b.Finish()
		// The middle backup lacks a file its manifest lists; the final
		// one does not: pg_combinebackup reads what it needs, and that
		// file is found missing (or not needed) when it is read.
		dirs := c.Dirs()
		if err := os.Remove(filepath.Join(dirs[1], "base/5/PG_VERSION")); err != nil {
			t.Fatal(err)
		}
		if _, err := pointOf(dirs); err != nil {
			t.Errorf("a file missing from an older backup: %v", err)
		}
	})
	t.Run("no manifest", func(t *testing.T) {
		c, inc := build(t)
		inc.NoManifest = true
		dirs := c.Dirs()
		inc.Remove("base/5/PG_VERSION")
		if _, err := pointOf(dirs); err != nil {
			t.Errorf("final backup without a manifest: %v", err)
		}
	})
}

func pointOf(dirs []string) (*resolver.Tree, error) {
	chain, err := resolver.OpenChain(dirs, resolver.ChainOptions{})
	if err != nil {
		return nil, err
	}
	return resolver.NewTree(chain)
}
