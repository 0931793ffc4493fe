package resolvertest_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// TestChainFiles checks that the files resolvertest writes parse with the
// format package and are consistent across the chain.
func TestChainFiles(t *testing.T) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	full.File("base/5/16384", resolvertest.FillBlock("full", 0))
	ts := full.Tablespace(16385, false)
	full.File(ts+"/PG_17_202406281/5/16390", resolvertest.FillBlock("ts", 0))
	inc := c.Incremental()
	inc.Incremental("base/5/16384", 2, resolvertest.Block{Num: 1, Data: resolvertest.FillBlock("inc", 1)})
	inc.Tablespace(16386, true)
	inc.File("pg_tblspc/16386/PG_17_202406281/5/INCREMENTAL.7", resolvertest.IncrementalFile(0))
	inc.Major = 18
	inc.DataChecksums = false
	dirs := c.Dirs()
	if len(dirs) != 2 || dirs[0] != full.Dir || dirs[1] != inc.Dir {
		t.Fatalf("Dirs() = %v", dirs)
	}

	read := func(dir, rel string) []byte {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	var labels []*format.BackupLabel
	for i, b := range c.Backups {
		major, err := format.ParsePGVersion(read(b.Dir, "PG_VERSION"), "PG_VERSION")
		if err != nil || major != b.Major {
			t.Errorf("%s: PG_VERSION %d, %v", b.Name, major, err)
		}
		cf, err := format.ParseControlFile(read(b.Dir, "global/pg_control"), "pg_control")
		if err != nil {
			t.Fatalf("%s: %v", b.Name, err)
		}
		if cf.SystemIdentifier != resolvertest.DefaultSystemIdentifier || cf.Major() != b.Major || (cf.DataChecksumVersion != 0) != b.DataChecksums {
			t.Errorf("%s: control %+v", b.Name, cf)
		}
		l, err := format.ParseBackupLabel(read(b.Dir, "backup_label"), "backup_label")
		if err != nil {
			t.Fatalf("%s: %v", b.Name, err)
		}
		if *l != b.Label || l.Incremental != (i > 0) {
			t.Errorf("%s: label %+v, want %+v", b.Name, *l, b.Label)
		}
		labels = append(labels, l)
		m, err := format.ParseManifest(read(b.Dir, "backup_manifest"), "backup_manifest")
		if err != nil {
			t.Fatalf("%s: %v", b.Name, err)
		}
		if m.Version != 2 || m.SystemIdentifier != cf.SystemIdentifier || m.Files[0].Path != "backup_label" {
			t.Errorf("%s: manifest %+v", b.Name, m)
		}
		for _, f := range m.Files {
			data := read(b.Dir, f.Path)
			h := format.ChecksumCRC32C.New()
			h.Write(data)
			if int64(len(data)) != f.Size || !bytes.Equal(h.Sum(nil), f.Checksum) {
				t.Errorf("%s: manifest entry %s does not match the file", b.Name, f.Path)
			}
		}
		if _, ok := m.Lookup("backup_manifest"); ok {
			t.Errorf("%s: manifest lists itself", b.Name)
		}
	}
	if labels[1].PrevLSN != labels[0].StartLSN || labels[1].PrevTLI != labels[0].StartTLI || labels[1].StartLSN <= labels[0].StartLSN {
		t.Errorf("labels do not chain: %+v, %+v", labels[0], labels[1])
	}
	m, _ := format.ParseManifest(read(full.Dir, "backup_manifest"), "m")
	if _, ok := m.Lookup("pg_tblspc/16385/PG_17_202406281/5/16390"); !ok {
		t.Errorf("symlinked tablespace file not in the manifest")
	}
	m, _ = format.ParseManifest(read(inc.Dir, "backup_manifest"), "m")
	if _, ok := m.Lookup("base/5/INCREMENTAL.16384"); !ok {
		t.Errorf("INCREMENTAL file not in the manifest under its own name")
	}
	if target, err := os.Readlink(filepath.Join(full.Dir, "pg_tblspc/16385")); err != nil || target != full.TablespaceTarget(16385) {
		t.Errorf("tablespace symlink %q, %v", target, err)
	}
	inc2, err := format.ParseIncremental(bytes.NewReader(read(inc.Dir, "base/5/INCREMENTAL.16384")), 16384, "x")
	if err != nil || inc2.TruncationBlockLength != 2 || len(inc2.Blocks) != 1 {
		t.Errorf("INCREMENTAL file: %+v, %v", inc2, err)
	}
}

func TestBreakingOptions(t *testing.T) {
	c := resolvertest.NewChain(t)
	b := c.Full()
	b.ManifestVersion = 1
	b.SystemIdentifier = 99
	b.Finish()
	m, err := format.ParseManifest(mustRead(t, b.Dir, "backup_manifest"), "m")
	if err != nil || m.Version != 1 || m.HasSystemIdentifier {
		t.Errorf("version 1 manifest: %+v, %v", m, err)
	}
	b.ManifestVersion = 2
	b.ManifestSystemIdentifier = 5
	b.EditLabel = func([]byte) []byte { return nil }
	b.Finish()
	m, err = format.ParseManifest(mustRead(t, b.Dir, "backup_manifest"), "m")
	if err != nil || m.SystemIdentifier != 5 {
		t.Errorf("manifest system identifier: %+v, %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir, "backup_label")); !os.IsNotExist(err) {
		t.Errorf("EditLabel returning nil should remove the label: %v", err)
	}
	b.NoManifest = true
	b.Finish()
	if _, err := os.Stat(filepath.Join(b.Dir, "backup_manifest")); !os.IsNotExist(err) {
		t.Errorf("NoManifest: %v", err)
	}
	// Resum makes an edited manifest valid again.
	b.NoManifest = false
	b.EditManifest = func(m []byte) []byte {
		return resolvertest.Resum(bytes.Replace(m, []byte(`"Size": 3,`), []byte(`"Size": 4,`), 1))
	}
	b.Finish()
	if _, err := format.ParseManifest(mustRead(t, b.Dir, "backup_manifest"), "m"); err != nil {
		t.Errorf("Resum: %v", err)
	}
}

func mustRead(t *testing.T, dir, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	return data
}
