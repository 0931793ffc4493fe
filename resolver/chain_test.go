package resolver_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

func TestOpenChainOK(t *testing.T) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	inc1 := c.Incremental()
	inc2 := c.Incremental()
	chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{RequireV2Manifests: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(chain.Backups) != 3 || chain.Final().Dir != inc2.Dir || chain.Major != 17 || chain.SystemIdentifier != resolvertest.DefaultSystemIdentifier || len(chain.Warnings) != 0 {
		t.Errorf("chain %+v", chain)
	}
	for i, b := range []*resolvertest.Backup{full, inc1, inc2} {
		got := chain.Backups[i]
		if got.Dir != b.Dir || got.Major != 17 || *got.Label != b.Label || got.Manifest == nil || got.Control.SystemIdentifier != resolvertest.DefaultSystemIdentifier {
			t.Errorf("backup %d: %+v", i, got)
		}
		label, _ := os.ReadFile(filepath.Join(b.Dir, "backup_label"))
		if !bytes.Equal(got.LabelBytes, label) {
			t.Errorf("backup %d: LabelBytes differ from the file", i)
		}
	}

	// A lone full backup is a chain; so is PostgreSQL 18.
	c = resolvertest.NewChain(t)
	c.Major = 18
	c.Full()
	chain, err = resolver.OpenChain(c.Dirs(), resolver.ChainOptions{RequireV2Manifests: true})
	if err != nil || chain.Major != 18 || chain.Final().Control.Version != 1800 {
		t.Errorf("lone PG18 full backup: %+v, %v", chain, err)
	}
}

// chainCase describes a chain pg_combinebackup refuses.
type chainCase struct {
	name string
	// build makes the chain and returns the directories to pass (oldest
	// first) and the directory at fault.
	build   func(t *testing.T, c *resolvertest.Chain) (dirs []string, culprit string)
	opts    resolver.ChainOptions
	pg      string // pg_combinebackup's message, exactly (%[1]s: the culprit)
	errWant string // a piece of Error(), besides the culprit (%[1]s: the culprit)
	bug     string // a known difference from pg_combinebackup, reported as a bug
}

// withDir fills in %[1]s, if the template has it.
func withDir(tmpl, dir string) string {
	if !strings.Contains(tmpl, "%[1]s") {
		return tmpl
	}
	return fmt.Sprintf(tmpl, dir)
}

const bugManifestPath = "resolver.wrapFormat keeps format.Error.Msg (which starts with the manifest's path) as the PgMessage, " +
	"but pg_combinebackup reports manifest problems through report_manifest_error (load_manifest.c) with no path"

func threeBackups(c *resolvertest.Chain) (full, inc1, inc2 *resolvertest.Backup) {
	return c.Full(), c.Incremental(), c.Incremental()
}

func TestOpenChainErrors(t *testing.T) {
	tests := []chainCase{
		{name: "reordered: full not first",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, inc1, inc2 := threeBackups(c)
				c.Dirs()
				return []string{inc1.Dir, full.Dir, inc2.Dir}, full.Dir
			},
			pg: `backup at "%[1]s" is a full backup, but only the first backup should be a full backup`, errWant: "full backup"},
		{name: "reordered: incrementals swapped",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, inc1, inc2 := threeBackups(c)
				c.Dirs()
				return []string{full.Dir, inc2.Dir, inc1.Dir}, inc2.Dir
			},
			pg: `backup at "%[1]s" starts at LSN 0/6000028, but expected 0/2000028`, errWant: "0/6000028"},
		{name: "missing middle backup",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, inc2 := threeBackups(c)
				c.Dirs()
				return []string{full.Dir, inc2.Dir}, full.Dir
			},
			pg: `backup at "%[1]s" starts at LSN 0/2000028, but expected 0/4000028`, errWant: "0/4000028"},
		{name: "backup of another cluster",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.SystemIdentifier = 42
				return c.Dirs(), full.Dir
			},
			pg: `%[1]s/global/pg_control: expected system identifier 7300000000000000001, but found 42`, errWant: "42"},
		{name: "another cluster in the middle",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.SystemIdentifier = 43
				return c.Dirs(), inc1.Dir
			},
			pg: `%[1]s/global/pg_control: expected system identifier 7300000000000000001, but found 43`, errWant: "43"},
		{name: "incremental first",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, inc2 := threeBackups(c)
				c.Dirs()
				return []string{inc1.Dir, inc2.Dir}, inc1.Dir
			},
			pg: `backup at "%[1]s" is an incremental backup, but the first backup should be a full backup`, errWant: "incremental"},
		{name: "lone incremental",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				c.Dirs()
				return []string{inc1.Dir}, inc1.Dir
			},
			pg: `backup at "%[1]s" is an incremental backup, but the first backup should be a full backup`},
		{name: "full in the middle",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				c.Full()
				full2 := c.Full()
				c.Incremental()
				return c.Dirs(), full2.Dir
			},
			pg: `backup at "%[1]s" is a full backup, but only the first backup should be a full backup`},
		{name: "timeline mismatch",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, inc2 := threeBackups(c)
				inc2.Label.PrevTLI = 2
				return c.Dirs(), inc1.Dir
			},
			pg: `backup at "%[1]s" starts on timeline 1, but expected 2`, errWant: "timeline"},
		{name: "LSN off by one",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.Label.StartLSN++
				return c.Dirs(), full.Dir
			},
			pg: `backup at "%[1]s" starts at LSN 0/2000029, but expected 0/2000028`},
		{name: "version 1 manifest",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.ManifestVersion = 1
				return c.Dirs(), inc1.Dir
			},
			opts: resolver.ChainOptions{RequireV2Manifests: true},
			pg:   `backup manifest version 1 does not support incremental backup`, errWant: "backup_manifest"},
		{name: "manifest system identifier",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.ManifestSystemIdentifier = 77
				return c.Dirs(), inc1.Dir
			},
			pg: `%[1]s/global/pg_control: manifest system identifier is 77, but control file has 7300000000000000001`},
		{name: "manifest system identifier of the final backup",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, _, inc2 := threeBackups(c)
				inc2.ManifestSystemIdentifier = 78
				return c.Dirs(), inc2.Dir
			},
			pg: `%[1]s/global/pg_control: manifest system identifier is 78, but control file has 7300000000000000001`},
		{name: "version 2 manifest without system identifier",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.EditManifest = func(m []byte) []byte {
					return resolvertest.Resum(bytes.Replace(m, []byte("\"System-Identifier\": 7300000000000000001,\n"), nil, 1))
				}
				return c.Dirs(), full.Dir
			},
			opts: resolver.ChainOptions{RequireV2Manifests: true},
			// load_manifest.c allocates the manifest zeroed and only the
			// System-Identifier callback sets it: a v2 manifest without the
			// field has identifier 0, which main() compares.
			pg:  `%[1]s/global/pg_control: manifest system identifier is 0, but control file has 7300000000000000001`,
			bug: "OpenChain skips the manifest/control comparison when a version 2 manifest has no System-Identifier (HasSystemIdentifier false); pg_combinebackup compares 0"},
		{name: "corrupt manifest",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.EditManifest = func(m []byte) []byte { return bytes.Replace(m, []byte(`"Size": `), []byte(`"Size": 1`), 1) }
				return c.Dirs(), inc1.Dir
			},
			pg: `manifest checksum mismatch`, errWant: "backup_manifest: manifest checksum mismatch", bug: bugManifestPath},
		{name: "unparsable manifest",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.EditManifest = func(m []byte) []byte {
					return resolvertest.Resum(bytes.Replace(m, []byte(`"Files"`), []byte(`"Filez"`), 1))
				}
				return c.Dirs(), full.Dir
			},
			pg: `could not parse backup manifest: unrecognized top-level field`, errWant: "unrecognized top-level field", bug: bugManifestPath},
		{name: "duplicate path in manifest",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, _, inc2 := threeBackups(c)
				inc2.EditManifest = func(m []byte) []byte {
					return resolvertest.Resum(bytes.Replace(m, []byte(`"Path": "PG_VERSION"`), []byte(`"Path": "backup_label"`), 1))
				}
				return c.Dirs(), inc2.Dir
			},
			pg: `duplicate path name in backup manifest: "backup_label"`, bug: bugManifestPath},
		{name: "corrupt pg_control",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.EditControl = func(b []byte) []byte { b[0x30] ^= 1; return b }
				return c.Dirs(), inc1.Dir
			},
			pg: `%[1]s/global/pg_control: CRC is incorrect`},
		{name: "short pg_control",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.EditControl = func(b []byte) []byte { return b[:100] }
				return c.Dirs(), full.Dir
			},
			pg: `could not read file "%[1]s/global/pg_control": read 100 of 8192`},
		{name: "missing pg_control",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.EditControl = func([]byte) []byte { return nil }
				return c.Dirs(), full.Dir
			},
			// get_controlfile_by_exact_path (src/common/controldata_utils.c)
			pg:  `could not open file "%[1]s/global/pg_control" for reading: No such file or directory`,
			bug: `resolver.PgMessage words a missing pg_control as any missing file; get_controlfile_by_exact_path says "could not open file \"%s\" for reading: %m"`},
		{name: "mixed majors",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.Major = 18
				return c.Dirs(), full.Dir
			},
			pg: `%[1]s/global/pg_control: unexpected control file version`, errWant: "18"},
		{name: "PG_VERSION says 17, pg_control is 18's",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.EditControl = func([]byte) []byte {
					return resolvertest.ControlFile(t, 18, resolvertest.DefaultSystemIdentifier, true)
				}
				return c.Dirs(), inc1.Dir
			},
			pg: `%[1]s/global/pg_control: unexpected control file version`},
		{name: "final backup of PostgreSQL 16",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, _, inc2 := threeBackups(c)
				inc2.EditPGVersion = func([]byte) []byte { return []byte("16\n") }
				return c.Dirs(), inc2.Dir
			},
			pg: `%[1]s/global/pg_control: unexpected control file version`},
		{name: "final PG_VERSION too old",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, _, inc2 := threeBackups(c)
				inc2.EditPGVersion = func([]byte) []byte { return []byte("9.6\n") }
				return c.Dirs(), inc2.Dir
			},
			pg: `%[1]s/PG_VERSION: server version too old`},
		{name: "final PG_VERSION unparsable",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, _, inc2 := threeBackups(c)
				inc2.EditPGVersion = func([]byte) []byte { return []byte("17") }
				return c.Dirs(), inc2.Dir
			},
			pg: `%[1]s/PG_VERSION: could not parse version number`},
		{name: "final PG_VERSION missing",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, _, inc2 := threeBackups(c)
				inc2.EditPGVersion = func([]byte) []byte { return nil }
				return c.Dirs(), inc2.Dir
			},
			pg: `could not open file "%[1]s/PG_VERSION": No such file or directory`},
		{name: "PG_VERSION too large",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, _, inc2 := threeBackups(c)
				inc2.EditPGVersion = func([]byte) []byte { return bytes.Repeat([]byte("1"), 129) }
				return c.Dirs(), inc2.Dir
			},
			pg: `file "%[1]s/PG_VERSION" is too large`},
		{name: "missing backup_label",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.EditLabel = func([]byte) []byte { return nil }
				return c.Dirs(), inc1.Dir
			},
			pg: `could not open file "%[1]s/backup_label": No such file or directory`},
		{name: "backup_label without START TIMELINE",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				full, _, _ := threeBackups(c)
				full.EditLabel = func(b []byte) []byte { return bytes.Replace(b, []byte("START TIMELINE"), []byte("START TIME LINE"), 1) }
				return c.Dirs(), full.Dir
			},
			pg: `%[1]s/backup_label: could not find START TIMELINE`},
		{name: "backup_label with half the INCREMENTAL lines",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.EditLabel = func(b []byte) []byte { return bytes.Replace(b, []byte("INCREMENTAL FROM TLI"), []byte("X"), 1) }
				return c.Dirs(), inc1.Dir
			},
			pg: `%[1]s/backup_label: INCREMENTAL FROM LSN requires INCREMENTAL FROM TLI`},
		{name: "backup_label too large",
			build: func(t *testing.T, c *resolvertest.Chain) ([]string, string) {
				_, inc1, _ := threeBackups(c)
				inc1.EditLabel = func(b []byte) []byte { return append(b, bytes.Repeat([]byte("#"), 11025)...) }
				return c.Dirs(), inc1.Dir
			},
			pg: `file "%[1]s/backup_label" is too large`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := resolvertest.NewChain(t)
			dirs, culprit := tt.build(t, c)
			chain, err := resolver.OpenChain(dirs, tt.opts)
			if err == nil && tt.bug != "" {
				t.Fatalf("BUG: %s: OpenChain succeeded, pg_combinebackup fails with %q", tt.bug, withDir(tt.pg, culprit))
			}
			if err == nil {
				t.Fatalf("OpenChain succeeded: %+v", chain)
			}
			var ce *resolver.ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("error %q (%T) is not a ChainError", err, err)
			}
			if ce.Backup != culprit {
				t.Errorf("ChainError.Backup = %q, want %q", ce.Backup, culprit)
			}
			if !strings.Contains(err.Error(), culprit) {
				t.Errorf("Error() = %q does not name %q", err, culprit)
			}
			if tt.errWant != "" && !strings.Contains(err.Error(), withDir(tt.errWant, culprit)) {
				t.Errorf("Error() = %q, want it to contain %q", err, withDir(tt.errWant, culprit))
			}
			want := withDir(tt.pg, culprit)
			if ce.PgMessage() != want {
				if tt.bug != "" {
					t.Errorf("BUG: %s:\nPgMessage() = %q\nwant          %q", tt.bug, ce.PgMessage(), want)
				} else {
					t.Errorf("PgMessage() = %q\nwant          %q", ce.PgMessage(), want)
				}
			}
			if got := resolver.PgMessage(err); got != ce.PgMessage() {
				t.Errorf("resolver.PgMessage = %q, ChainError.PgMessage = %q", got, ce.PgMessage())
			}
		})
	}
}

// TestOpenChainManifestMessages: pg_combinebackup prints manifest
// problems through report_manifest_error with no file name
// (src/bin/pg_combinebackup/load_manifest.c); Error() still names it.
func TestOpenChainManifestMessages(t *testing.T) {
	c := resolvertest.NewChain(t)
	_, inc1, _ := threeBackups(c)
	inc1.EditManifest = func(m []byte) []byte { return m[:len(m)-1] }
	_, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
	if got, want := resolver.PgMessage(err), "could not parse backup manifest: last line not newline-terminated"; got != want {
		t.Errorf("BUG: %s:\nPgMessage = %q\nwant        %q", bugManifestPath, got, want)
	}
	if err == nil || !strings.Contains(err.Error(), inc1.Dir) {
		t.Errorf("Error() = %v, must name %q", err, inc1.Dir)
	}
}

func TestOpenChainWarnings(t *testing.T) {
	t.Run("missing manifest", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		full, inc1, _ := threeBackups(c)
		full.NoManifest = true
		inc1.NoManifest = true
		chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{RequireV2Manifests: true})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			fmt.Sprintf(`file "%s/backup_manifest" does not exist`, full.Dir),
			fmt.Sprintf(`file "%s/backup_manifest" does not exist`, inc1.Dir),
		}
		if strings.Join(chain.Warnings, "\n") != strings.Join(want, "\n") {
			t.Errorf("Warnings %q, want %q", chain.Warnings, want)
		}
		if chain.Backups[0].Manifest != nil || chain.Backups[1].Manifest != nil || chain.Backups[2].Manifest == nil {
			t.Errorf("manifests: %v %v %v", chain.Backups[0].Manifest, chain.Backups[1].Manifest, chain.Backups[2].Manifest)
		}
	})
	t.Run("final manifest missing", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		_, _, inc2 := threeBackups(c)
		inc2.NoManifest = true
		chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(chain.Warnings) != 1 || chain.Final().Manifest != nil {
			t.Errorf("Warnings %q", chain.Warnings)
		}
	})
	t.Run("version 1 manifest allowed", func(t *testing.T) {
		c := resolvertest.NewChain(t)
		full, _, _ := threeBackups(c)
		full.ManifestVersion = 1
		chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if chain.Backups[0].Manifest.Version != 1 || len(chain.Warnings) != 0 {
			t.Errorf("manifest %+v, warnings %q", chain.Backups[0].Manifest, chain.Warnings)
		}
	})
	hint := []string{"only some backups have checksums enabled", "hint: Disable, and optionally reenable, checksums on the output directory to avoid failures."}
	for _, tt := range []struct {
		name  string
		sums  []bool // data checksums per backup
		warns []string
	}{
		{"all on", []bool{true, true, true}, nil},
		{"all off", []bool{false, false, false}, nil},
		{"older off", []bool{false, true, true}, hint},
		{"middle off", []bool{true, false, true}, hint},
		{"final off", []bool{true, true, false}, nil}, // only checked when the final backup has them
	} {
		t.Run("checksums "+tt.name, func(t *testing.T) {
			c := resolvertest.NewChain(t)
			full, inc1, inc2 := threeBackups(c)
			for i, b := range []*resolvertest.Backup{full, inc1, inc2} {
				b.DataChecksums = tt.sums[i]
			}
			chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(chain.Warnings, "\n") != strings.Join(tt.warns, "\n") {
				t.Errorf("Warnings %q, want %q", chain.Warnings, tt.warns)
			}
		})
	}
}

func TestOpenChainNoDirs(t *testing.T) {
	if _, err := resolver.OpenChain(nil, resolver.ChainOptions{}); err == nil || err.Error() != "no input directories specified" {
		t.Errorf("OpenChain(nil) = %v", err)
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Join(dir, "nonexistent"), filepath.Join(dir, "file")} {
		os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
		_, err := resolver.OpenChain([]string{d}, resolver.ChainOptions{})
		var ce *resolver.ChainError
		if !errors.As(err, &ce) || ce.Backup != d || !strings.Contains(err.Error(), d) {
			t.Errorf("OpenChain(%s) = %v", d, err)
		}
	}
}

// TestOpenChainControlFields: the chain records what pg_control says.
func TestOpenChainControlFields(t *testing.T) {
	c := resolvertest.NewChain(t)
	c.SystemIdentifier = 12345
	full := c.Full()
	full.DataChecksums = false
	c.Incremental()
	chain, err := resolver.OpenChain(c.Dirs(), resolver.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if chain.SystemIdentifier != 12345 || chain.Backups[0].Control.DataChecksumVersion != 0 || chain.Backups[1].Control.DataChecksumVersion != 1 {
		t.Errorf("chain %+v", chain)
	}
	if chain.Backups[1].Manifest.SystemIdentifier != 12345 {
		t.Errorf("manifest sysid %d", chain.Backups[1].Manifest.SystemIdentifier)
	}
	var _ = format.ErrCorrupt
}
