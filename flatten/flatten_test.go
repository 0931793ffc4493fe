package flatten_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// TestFlattenPoints flattens every point of the rich chain and compares the
// output with the model, file by file and byte by byte, with the manifest.
func TestFlattenPoints(t *testing.T) {
	m := richChain(t)
	configs := []struct {
		name string
		opts flatten.Options
	}{
		// pg_combinebackup's defaults: whole files take their checksum from
		// the input manifests.
		{"default", flatten.Options{ManifestChecksums: format.ChecksumCRC32C, NoSync: true}},
		// Every whole file hashed while copied (O_DIRECT output).
		{"sha256-fsync", flatten.Options{ManifestChecksums: format.ChecksumSHA256, SyncMethod: "fsync", Jobs: 3}},
		{"no-checksums-syncfs-1-job", flatten.Options{ManifestChecksums: format.ChecksumNone, SyncMethod: "syncfs", Jobs: 1}},
	}
	for k := range m.backups {
		for _, cfg := range configs {
			if k < 3 && cfg.name != "default" {
				continue // the other configurations only at the last point, to keep it quick
			}
			t.Run(fmt.Sprintf("point-%d/%s", k, cfg.name), func(t *testing.T) {
				p, opts, c := setup(t, m, k, cfg.opts)
				res := run(t, p, opts)
				c.verify(t)
				if want := wantResult(c.files); res != want {
					t.Errorf("Result %+v, want %+v", res, want)
				}
			})
		}
	}
}

// TestCopyMethods writes the last point with every copy method that works
// here, each with checksums taken from the manifests, computed, or none
// (which take different paths through the copy code).
func TestCopyMethods(t *testing.T) {
	m := richChain(t)
	for _, method := range []flatten.CopyMethod{flatten.Copy, flatten.CopyFileRange, flatten.Link} {
		for _, sums := range []format.ChecksumType{format.ChecksumCRC32C, format.ChecksumSHA512, format.ChecksumNone} {
			t.Run(method.String()+"/"+sums.String(), func(t *testing.T) {
				var logs []string
				var mu sync.Mutex
				p, opts, c := setup(t, m, 3, flatten.Options{CopyMethod: method, ManifestChecksums: sums, NoSync: true,
					Log: func(l flatten.Level, msg string) {
						mu.Lock()
						defer mu.Unlock()
						if l == flatten.Warning {
							logs = append(logs, msg)
						}
					}})
				res := run(t, p, opts)
				c.verify(t)
				if want := wantResult(c.files); res != want {
					t.Errorf("Result %+v, want %+v", res, want)
				}
				warned := slices.ContainsFunc(logs, func(s string) bool { return strings.Contains(s, "--link mode was used") })
				if warned != (method == flatten.Link) {
					t.Errorf("warnings %q", logs)
				}
			})
		}
	}
}

// cloneSupported probes FICLONE in dir.
func cloneSupported(t *testing.T, dir string) error {
	src, err := os.Create(filepath.Join(dir, "probe-src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	src.Write(make([]byte, 4096))
	dst, err := os.Create(filepath.Join(dir, "probe-dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
}

// TestClone: where the file system has no reflinks (ext4), --clone fails as
// pg_combinebackup's does, with strerror's wording, and leaves nothing;
// elsewhere it writes the same bytes.
func TestClone(t *testing.T) {
	m := richChain(t)
	p, opts, c := setup(t, m, 3, flatten.Options{CopyMethod: flatten.Clone, ManifestChecksums: format.ChecksumCRC32C, NoSync: true})
	probe := cloneSupported(t, filepath.Dir(opts.Output))
	_, err := flatten.Run(context.Background(), p, opts)
	if probe == nil {
		if err != nil {
			t.Fatalf("clone works here but Run failed: %v", err)
		}
		c.verify(t)
		return
	}
	t.Logf("FICLONE here: %v; Run: %v", probe, err)
	if err == nil {
		t.Fatalf("Run with --clone succeeded where FICLONE fails (%v)", probe)
	}
	errno := probe.(unix.Errno).Error()
	wantMsg := strings.ToUpper(errno[:1]) + errno[1:] // strerror: "Operation not supported"
	if !strings.Contains(err.Error(), "error while cloning file") || !strings.HasSuffix(err.Error(), ": "+wantMsg) {
		t.Errorf("error %q, want pg_combinebackup's \"error while cloning file ...: %s\"", err, wantMsg)
	}
	if !errors.Is(err, probe) {
		t.Errorf("error %v does not wrap %v", err, probe)
	}
	mustNotExist(t, opts.Output)
	mustNotExist(t, opts.Mappings[0].New)
}

// TestModes: group access on the final backup gives 0750 directories and
// 0640 files, as pg_combinebackup does.
func TestModes(t *testing.T) {
	m := richChain(t)
	if err := os.Chmod(m.c.Backups[2].Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	p, opts, c := setup(t, m, 2, flatten.Options{ManifestChecksums: format.ChecksumCRC32C, NoSync: true})
	c.dirMode, c.fileMode = 0o750, 0o640
	run(t, p, opts)
	c.verify(t)
}

// snapshot records every file under root (size and bytes), to show that a
// run did not touch its inputs.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if d.Type().IsRegular() {
			out[p] = string(checksum(format.ChecksumSHA256, mustRead(t, p)))
		} else {
			out[p] = d.Type().String()
		}
		return nil
	})
	return out
}

func sameSnapshot(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed %s", what, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s created %s", what, p)
		}
	}
}

// TestOutputNotEmpty: a non-empty output or tablespace directory is
// refused before anything is written, and left as it was.
func TestOutputNotEmpty(t *testing.T) {
	m := richChain(t)
	t.Run("output", func(t *testing.T) {
		p, opts, _ := setup(t, m, 3, flatten.Options{ManifestChecksums: format.ChecksumCRC32C})
		os.MkdirAll(opts.Output, 0o755)
		os.WriteFile(filepath.Join(opts.Output, "keep"), []byte("mine"), 0o644)
		before := snapshot(t, filepath.Dir(opts.Output))
		_, err := flatten.Run(context.Background(), p, opts)
		if err == nil || err.Error() != fmt.Sprintf("directory %q exists but is not empty", opts.Output) {
			t.Fatalf("Run: %v", err)
		}
		sameSnapshot(t, "refused run", before, snapshot(t, filepath.Dir(opts.Output)))
		mustNotExist(t, opts.Mappings[0].New)
	})
	t.Run("output is a file", func(t *testing.T) {
		p, opts, _ := setup(t, m, 3, flatten.Options{ManifestChecksums: format.ChecksumCRC32C})
		os.WriteFile(opts.Output, []byte("mine"), 0o644)
		_, err := flatten.Run(context.Background(), p, opts)
		if err == nil || err.Error() != fmt.Sprintf("could not access directory %q: Not a directory", opts.Output) {
			t.Fatalf("Run: %v", err)
		}
		if data, err := os.ReadFile(opts.Output); err != nil || string(data) != "mine" {
			t.Errorf("the file in the way was touched: %q, %v", data, err)
		}
	})
	t.Run("tablespace", func(t *testing.T) {
		p, opts, _ := setup(t, m, 3, flatten.Options{ManifestChecksums: format.ChecksumCRC32C})
		ts := opts.Mappings[0].New
		os.MkdirAll(ts, 0o755)
		os.WriteFile(filepath.Join(ts, "keep"), []byte("mine"), 0o644)
		before := snapshot(t, filepath.Dir(ts))
		_, err := flatten.Run(context.Background(), p, opts)
		if err == nil || err.Error() != fmt.Sprintf("directory %q exists but is not empty", ts) {
			t.Fatalf("Run: %v", err)
		}
		sameSnapshot(t, "refused run", before, snapshot(t, filepath.Dir(ts)))
		mustNotExist(t, opts.Output) // created before the tablespace was checked: removed
	})
}

// TestSourceFailures damages a source after the point is built, so that
// Run meets it mid-run: it must fail naming the file, and remove what it
// wrote (or empty a directory it was given), never touching the inputs.
func TestSourceFailures(t *testing.T) {
	truncate := func(size int64) func(string) error {
		return func(p string) error { return os.Truncate(p, size) }
	}
	toDir := func(p string) error {
		if err := os.Remove(p); err != nil {
			return err
		}
		return os.Mkdir(p, 0o700)
	}
	incPath := resolvertest.IncrementalPath
	crc := flatten.Options{ManifestChecksums: format.ChecksumCRC32C}
	sha := flatten.Options{ManifestChecksums: format.ChecksumSHA256}
	tests := []struct {
		name    string
		point   int
		backup  int    // whose file
		rel     string // path in that backup
		damage  func(string) error
		opts    flatten.Options
		existed bool // output is an existing empty directory
		// chainErr: the resolver's error, naming the backup and the path
		// in it rather than the damaged file.
		chainErr bool
	}{
		{name: "final INCREMENTAL loses its blocks", point: 3, backup: 3, rel: incPath("base/5/1000"), damage: truncate(blk), opts: crc},
		// Fails after the first 1 MiB chunk went to the writer goroutine.
		{name: "final INCREMENTAL of a big file cut short", point: 1, backup: 1, rel: incPath("base/5/3000"), damage: truncate(100 * blk),
			opts: flatten.Options{CopyMethod: flatten.CopyFileRange}},
		{name: "same, copy", point: 1, backup: 1, rel: incPath("base/5/3000"), damage: truncate(100 * blk), opts: sha},
		{name: "older INCREMENTAL cut short", point: 3, backup: 2, rel: incPath("base/5/1000"), damage: truncate(blk), opts: crc},
		{name: "older INCREMENTAL replaced by a directory", point: 3, backup: 1, rel: incPath("base/5/1000"), damage: toDir, opts: crc},
		{name: "older full copy removed", point: 3, backup: 0, rel: "base/5/1002", damage: os.Remove, opts: crc, chainErr: true},
		{name: "older tablespace file removed", point: 3, backup: 0, rel: tsFile, damage: os.Remove, opts: crc, chainErr: true},
		{name: "whole file cut short, checksum from the manifest", point: 3, backup: 3, rel: "global/pg_internal.init", damage: truncate(1000), opts: crc},
		{name: "whole file cut short, checksum computed", point: 3, backup: 3, rel: "global/pg_internal.init", damage: truncate(1000), opts: sha},
		{name: "whole file cut short, copy_file_range", point: 3, backup: 3, rel: "global/pg_internal.init", damage: truncate(1000),
			opts: flatten.Options{CopyMethod: flatten.CopyFileRange, ManifestChecksums: format.ChecksumSHA256}},
		{name: "whole file replaced by a directory", point: 3, backup: 3, rel: "base/5/pg_filenode.map", damage: toDir, opts: sha},
		{name: "whole file replaced by a directory, copy_file_range", point: 3, backup: 3, rel: "base/5/pg_filenode.map", damage: toDir,
			opts: flatten.Options{CopyMethod: flatten.CopyFileRange}},
		{name: "final INCREMENTAL replaced by a directory", point: 3, backup: 3, rel: incPath("base/5/1000"), damage: toDir, existed: true, opts: crc},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := richChain(t)
			opts := tt.opts
			opts.Jobs = 4
			p, opts, _ := setup(t, m, tt.point, opts)
			culprit := filepath.Join(m.c.Backups[tt.backup].Dir, tt.rel)
			if err := tt.damage(culprit); err != nil {
				t.Fatal(err)
			}
			if tt.existed {
				os.Mkdir(opts.Output, 0o700)
			}
			before := snapshot(t, m.c.Root)
			_, err := flatten.Run(context.Background(), p, opts)
			if err == nil {
				t.Fatalf("Run succeeded with %s damaged", culprit)
			}
			t.Logf("Run: %v", err)
			names := []string{culprit}
			if tt.chainErr {
				names = []string{m.c.Backups[tt.backup].Dir, tt.rel}
			}
			for _, n := range names {
				if !strings.Contains(err.Error(), n) {
					t.Errorf("error %q does not name %s", err, n)
				}
			}
			if tt.existed {
				if ents, err := os.ReadDir(opts.Output); err != nil || len(ents) != 0 {
					t.Errorf("given output directory: %v, %d entries left", err, len(ents))
				}
			} else {
				mustNotExist(t, opts.Output)
			}
			mustNotExist(t, opts.Mappings[0].New)
			sameSnapshot(t, "failed run", before, snapshot(t, m.c.Root))
		})
	}
}

// TestCancel: a cancelled context stops the run with ctx.Err() and nothing
// left behind, whether cancelled before or during the writing.
func TestCancel(t *testing.T) {
	m := richChain(t)
	for _, mid := range []bool{false, true} {
		for _, existed := range []bool{false, true} {
			t.Run(fmt.Sprintf("mid=%v/existing=%v", mid, existed), func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				calls := 0
				var mu sync.Mutex
				opts := flatten.Options{ManifestChecksums: format.ChecksumCRC32C, Jobs: 1}
				if mid {
					opts.Progress = func(done, total int64) {
						mu.Lock()
						defer mu.Unlock()
						if calls++; calls == 2 {
							cancel()
						}
					}
				} else {
					cancel()
				}
				p, opts, _ := setup(t, m, 3, opts)
				if existed {
					os.Mkdir(opts.Output, 0o700)
				}
				_, err := flatten.Run(ctx, p, opts)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Run: %v, want context.Canceled", err)
				}
				if mid && calls < 2 {
					t.Fatalf("cancelled after %d files", calls)
				}
				if existed {
					if ents, err := os.ReadDir(opts.Output); err != nil || len(ents) != 0 {
						t.Errorf("given output directory: %v, %d entries left", err, len(ents))
					}
				} else {
					mustNotExist(t, opts.Output)
				}
				mustNotExist(t, opts.Mappings[0].New)
			})
		}
	}
}

// TestProgress: one call per file, with the bytes written so far and the
// total; with one job the values rise to the total.
func TestProgress(t *testing.T) {
	m := richChain(t)
	want := m.want(3)
	var total int64
	var sizes []int64
	for _, w := range want {
		total += int64(len(w.data))
		sizes = append(sizes, int64(len(w.data)))
	}
	for _, jobs := range []int{1, 8} {
		t.Run(fmt.Sprintf("jobs=%d", jobs), func(t *testing.T) {
			var mu sync.Mutex
			var got []int64
			p, opts, c := setup(t, m, 3, flatten.Options{ManifestChecksums: format.ChecksumCRC32C, NoSync: true, Jobs: jobs,
				Progress: func(done, tot int64) {
					mu.Lock()
					defer mu.Unlock()
					if tot != total {
						t.Errorf("Progress total %d, want %d", tot, total)
					}
					got = append(got, done)
				}})
			run(t, p, opts)
			c.verify(t)
			if len(got) != len(want) {
				t.Fatalf("%d Progress calls for %d files", len(got), len(want))
			}
			if jobs == 1 {
				if !slices.IsSorted(got) || got[len(got)-1] != total {
					t.Errorf("Progress with one job not rising to %d: %v", total, got)
				}
			}
			// Whatever the order of the calls, each value is what the atomic
			// counter said after adding one file: sorted, they step by the
			// file sizes, up to the total.
			s := slices.Clone(got)
			slices.Sort(s)
			var steps []int64
			prev := int64(0)
			for _, v := range s {
				steps = append(steps, v-prev)
				prev = v
			}
			slices.Sort(steps)
			slices.Sort(sizes)
			if !slices.Equal(steps, sizes) || prev != total {
				t.Errorf("Progress values %v step by %v, want the file sizes %v up to %d", got, steps, sizes, total)
			}
		})
	}
}

// TestDryRun writes nothing, not even the tablespace directory, and
// reports what it would write.
func TestDryRun(t *testing.T) {
	m := richChain(t)
	var logs []string
	var mu sync.Mutex // Log may be called by the writers
	p, opts, c := setup(t, m, 3, flatten.Options{DryRun: true, ManifestChecksums: format.ChecksumCRC32C,
		Log: func(_ flatten.Level, msg string) {
			mu.Lock()
			defer mu.Unlock()
			logs = append(logs, msg)
		}})
	res := run(t, p, opts)
	mustNotExist(t, opts.Output)
	mustNotExist(t, opts.Mappings[0].New)
	if want := wantResult(c.files); res != want {
		t.Errorf("Result %+v, want %+v", res, want)
	}
	if !slices.Contains(logs, fmt.Sprintf("would create directory %q", opts.Output)) {
		t.Errorf("logs %q", logs)
	}
}

// TestManifestOptions: --no-manifest writes none (and needs none from the
// final backup); without it a final backup lacking a manifest is refused
// before anything is created.
func TestManifestOptions(t *testing.T) {
	m := richChain(t)
	m.c.Backups[2].NoManifest = true
	m.c.Dirs()

	p, opts, c := setup(t, m, 3, flatten.Options{NoManifest: true, ManifestChecksums: format.ChecksumSHA256, NoSync: true})
	run(t, p, opts)
	c.verify(t) // no backup_manifest

	p, opts, _ = setup(t, m, 2, flatten.Options{ManifestChecksums: format.ChecksumCRC32C})
	_, err := flatten.Run(context.Background(), p, opts)
	if err == nil || err.Error() != "cannot generate a manifest because no manifest is available for the final input backup" {
		t.Errorf("Run without a final manifest: %v", err)
	}
	mustNotExist(t, opts.Output)

	// An older backup without a manifest only costs the reuse of its
	// checksums.
	p, opts, c = setup(t, m, 3, flatten.Options{ManifestChecksums: format.ChecksumCRC32C, NoSync: true})
	run(t, p, opts)
	c.verify(t)
}

// TestManifestMissingEntry: a whole file the input manifest does not list
// gets pg_combinebackup's warning and a checksum computed from its bytes.
func TestManifestMissingEntry(t *testing.T) {
	m := richChain(t)
	drop := func(path string) func([]byte) []byte {
		return func(mf []byte) []byte {
			var out [][]byte
			for _, l := range bytes.SplitAfter(mf, []byte("\n")) {
				if !bytes.Contains(l, []byte(`"Path": "`+path+`"`)) {
					out = append(out, l)
				}
			}
			return resolvertest.Resum(bytes.Join(out, nil))
		}
	}
	full, final := m.c.Backups[0], m.c.Backups[3]
	full.EditManifest = drop("base/5/1002") // copied whole from the full
	final.EditManifest = drop("base/5/pg_filenode.map")
	m.c.Dirs()
	var mu sync.Mutex
	var warnings []string
	p, opts, c := setup(t, m, 3, flatten.Options{ManifestChecksums: format.ChecksumCRC32C, NoSync: true,
		Log: func(l flatten.Level, msg string) {
			mu.Lock()
			defer mu.Unlock()
			if l == flatten.Warning {
				warnings = append(warnings, msg)
			}
		}})
	run(t, p, opts)
	c.verify(t)
	slices.Sort(warnings)
	want := []string{
		fmt.Sprintf("%q contains no entry for %q", filepath.Join(full.Dir, "backup_manifest"), "base/5/1002"),
		fmt.Sprintf("manifest file %q contains no entry for file %q", filepath.Join(final.Dir, "backup_manifest"), "base/5/pg_filenode.map"),
	}
	if !slices.Equal(warnings, want) {
		t.Errorf("warnings %q, want %q", warnings, want)
	}
}

// TestTablespaceMappings: the mapping is required for a symlinked
// tablespace, two tablespaces may not share a directory, and an existing
// empty target is used.
func TestTablespaceMappings(t *testing.T) {
	m := newModel(t)
	full := m.full()
	full.Tablespace(16385, false)
	full.Tablespace(16387, false)
	m.whole("pg_tblspc/16385/PG_17_202406281/5/1", blocks("a", 1))
	m.whole("pg_tblspc/16387/PG_17_202406281/5/2", blocks("b", 1))
	m.whole("base/5/3", blocks("c", 1))
	m.c.Dirs()
	b := m.c.Backups[0]
	out := filepath.Join(t.TempDir(), "out")
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")

	mapA := flatten.Mapping{Old: b.TablespaceTarget(16385), New: dirA}
	mapB := flatten.Mapping{Old: b.TablespaceTarget(16387), New: dirB}
	for _, tt := range []struct {
		name     string
		mappings []flatten.Mapping
		errs     []string // either, as the order of pg_tblspc decides
	}{
		{"missing", []flatten.Mapping{mapA}, []string{fmt.Sprintf("tablespace at %q has no tablespace mapping", b.TablespaceTarget(16387))}},
		{"unrelated", []flatten.Mapping{{Old: "/nowhere", New: dirB}, mapA}, []string{fmt.Sprintf("tablespace at %q has no tablespace mapping", b.TablespaceTarget(16387))}},
		{"shared", []flatten.Mapping{mapA, {Old: mapB.Old, New: dirA}}, []string{
			fmt.Sprintf("tablespaces with OIDs 16385 and 16387 both point at directory %q", dirA),
			fmt.Sprintf("tablespaces with OIDs 16387 and 16385 both point at directory %q", dirA)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := flatten.Run(context.Background(), m.point(0), flatten.Options{Output: out, Mappings: tt.mappings, ManifestChecksums: format.ChecksumCRC32C})
			if err == nil || !slices.Contains(tt.errs, err.Error()) {
				t.Errorf("Run: %v, want one of %q", err, tt.errs)
			}
			mustNotExist(t, out)
			mustNotExist(t, dirA)
			mustNotExist(t, dirB)
		})
	}

	t.Run("ok", func(t *testing.T) {
		os.Mkdir(dirB, 0o700) // an existing empty target is used
		opts := flatten.Options{Output: out, Mappings: []flatten.Mapping{mapB, mapA}, ManifestChecksums: format.ChecksumCRC32C, NoSync: true}
		run(t, m.point(0), opts)
		check{out: out, files: m.want(0), label: wantLabel(t, b), opts: opts, dirMode: 0o700, fileMode: 0o600,
			tsLinks:  map[string]string{"pg_tblspc/16385": dirA, "pg_tblspc/16387": dirB},
			walRange: format.WALRange{TLI: 1, Start: b.Label.StartLSN, End: b.Label.StartLSN + 0x100}}.verify(t)
	})
}

func TestParseMapping(t *testing.T) {
	for _, tt := range []struct {
		arg      string
		old, new string
		err      string
	}{
		{arg: "/a=/b", old: "/a", new: "/b"},
		{arg: "/a/./x//=/b/c/../d/", old: "/a/x", new: "/b/d"}, // canonicalized
		{arg: `/a\=b=/c`, old: "/a=b", new: "/c"},              // \= is a literal =
		{arg: `/a=/b\=`, old: "/a", new: "/b="},
		{arg: `/a\b=/c`, old: `/a\b`, new: "/c"},                                                        // a backslash not before = stays
		{arg: `/a\\=/b`, err: `invalid tablespace mapping format "/a\\\\=/b", must be "OLDDIR=NEWDIR"`}, // the second \ escapes =
		{arg: "/a", err: `invalid tablespace mapping format "/a", must be "OLDDIR=NEWDIR"`},
		{arg: "=/b", err: `invalid tablespace mapping format "=/b", must be "OLDDIR=NEWDIR"`},
		{arg: "/a=", err: `invalid tablespace mapping format "/a=", must be "OLDDIR=NEWDIR"`},
		{arg: "", err: `invalid tablespace mapping format "", must be "OLDDIR=NEWDIR"`},
		{arg: "/a=/b=/c", err: `multiple "=" signs in tablespace mapping`},
		{arg: "a=/b", err: "old directory is not an absolute path in tablespace mapping: a"},
		{arg: "/a=b", err: "old directory is not an absolute path in tablespace mapping: b"}, // sic, as pg_combinebackup
	} {
		got, err := flatten.ParseMapping(tt.arg)
		switch {
		case tt.err != "":
			if err == nil || err.Error() != tt.err {
				t.Errorf("ParseMapping(%q) = %+v, %v; want error %q", tt.arg, got, err, tt.err)
			}
		case err != nil || got != (flatten.Mapping{Old: tt.old, New: tt.new}):
			t.Errorf("ParseMapping(%q) = %+v, %v; want {%s %s}", tt.arg, got, err, tt.old, tt.new)
		}
	}
}

// TestParseMappingRepeatedEquals: pg_combinebackup's add_tablespace_mapping
// refuses a second "=" only once the new directory has begun
// (tsmap->new_dir[0] != '\0'), so it reads "/a==/b" as /a -> /b; so do we.
func TestParseMappingRepeatedEquals(t *testing.T) {
	for _, arg := range []string{"/a==/b", "/a===/b"} {
		got, err := flatten.ParseMapping(arg)
		if err != nil || got != (flatten.Mapping{Old: "/a", New: "/b"}) {
			t.Errorf("ParseMapping(%q) = %+v, %v; pg_combinebackup maps /a to /b", arg, got, err)
		}
	}
}

// TestParseMappingLongName: pg_combinebackup refuses a directory name of
// MAXPGPATH (1024) bytes or more on either side.
func TestParseMappingLongName(t *testing.T) {
	long := "/" + strings.Repeat("d", 1023) // 1024 bytes
	for _, arg := range []string{long + "=/b", "/a=" + long + "x"} {
		if _, err := flatten.ParseMapping(arg); err == nil || err.Error() != "directory name too long" {
			t.Errorf("ParseMapping(%d bytes): %v, want directory name too long", len(arg), err)
		}
	}
	if _, err := flatten.ParseMapping("/a=" + long[:1023]); err != nil {
		t.Errorf("ParseMapping of a 1023-byte new directory: %v", err)
	}
}
