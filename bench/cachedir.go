package main

import (
	"fmt"
	"path"
	"time"
)

// figCacheDir: sequential reads of every file of the point through a
// read-only mount with a --cache-dir that already holds the point's
// reconstructed files (filled once, untimed, by a first mount that read
// everything), against pg_combinebackup's output. Cold: a fresh mount on the
// filled directory and a dropped page cache for every run (the mount checks
// each reused file once, reading it, before serving it by passthrough).
// Warm: one such mount, each side read once before the timed runs.
func (b *bench) figCacheDir(t *benchTB) {
	ref := b.refPointDir(t)
	files := b.pointFiles
	dir := b.scratchDir(t, "cachedir")
	cdir := path.Join(b.e.PrivateDir(t), "cache") // the cache refuses a parent another user owns
	unit := "MiB/s"
	rate := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	mount := func(t *benchTB) *mnt {
		mp := path.Join(dir, fmt.Sprintf("mnt-%d", b.seq()))
		b.e.MkdirAll(t, mp)
		args := append([]string{"mount", "--daemon", "--log", mp + ".mount.log", "--cache-dir", cdir}, b.chain...)
		runCmd(t, b.cfs(true, append(args, mp)...))
		return b.attach(t, mp)
	}

	b.progressf(t, "filling the --cache-dir (untimed): a first read of the point through a mount")
	m := mount(t)
	readFiles(t, b.e.Host(m.dir), files)
	for deadline := time.Now().Add(10 * time.Minute); m.Stats(t).CacheDirPending > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the cache directory's fills still run after 10 minutes")
		}
	}
	filled := m.Stats(t).CacheDir
	m.umount(t)
	if filled.Files == 0 || filled.Rejected != 0 {
		t.Fatalf("the first mount left %d files in the cache directory (%d failed their check)", filled.Files, filled.Rejected)
	}
	note := fmt.Sprintf("cache directory: %d reconstructed files, %s", filled.Files, human(filled.Bytes))

	native := &variant{timed: func(t *benchTB, run int) sample {
		n, d := readFiles(t, b.e.Host(ref), files)
		return sample{v: rate(n, d)}
	}}
	ours := &variant{
		setup: func(t *benchTB, run int) { m = mount(t) },
		timed: func(t *benchTB, run int) sample {
			n, d := readFiles(t, b.e.Host(m.dir), files)
			st := m.Stats(t)
			return sample{v: rate(n, d), parts: map[string]float64{
				"cache_dir_opens": float64(st.CacheDirOpens), "reconstructed_opens": float64(st.ReconOpens),
				"bytes_from_backups_MiB": float64(st.SourceBytes) / (1 << 20)}}
		},
		teardown: func(t *benchTB, run int) { m.umount(t) },
	}
	b.progressf(t, "cold read of a point already in the --cache-dir: fresh mount vs pg_combinebackup output")
	cold, _ := b.compare(t, figSpec{id: "cachedir-cold", name: "sequential read with a filled --cache-dir, cold (throughput)", unit: unit, higher: true, cold: true,
		target: "at least 0.7x native (ratio >= 0.7)", targetMet: ratioAtLeast(0.7)}, ours, native, nil)
	cold.OursLabel = "read every file through a fresh read-only mount with --cache-dir holding the point"
	cold.RefLabel = "the same files of pg_combinebackup's output"
	if cold.Error == "" {
		cold.Note = fmt.Sprintf("%s; per run (median): %.0f opens from the cache directory, %.0f reconstructed opens, %.0f MiB read from the backups",
			note, cold.Parts["ours.cache_dir_opens"], cold.Parts["ours.reconstructed_opens"], cold.Parts["ours.bytes_from_backups_MiB"])
	}
	b.add(t, cold)

	wm := mount(t)
	readFiles(t, b.e.Host(wm.dir), files)
	readFiles(t, b.e.Host(ref), files)
	warmOurs := &variant{timed: func(t *benchTB, run int) sample {
		n, d := readFiles(t, b.e.Host(wm.dir), files)
		return sample{v: rate(n, d)}
	}}
	b.progressf(t, "warm read through a mount with a filled --cache-dir vs pg_combinebackup output")
	warm, _ := b.compare(t, figSpec{id: "cachedir-warm", name: "sequential read with a filled --cache-dir, warm (throughput)", unit: unit, higher: true,
		target: "at least 0.8x native (ratio >= 0.8)", targetMet: ratioAtLeast(0.8)}, warmOurs, native, nil)
	warm.OursLabel = "read every file through a read-only mount with --cache-dir, read once before"
	warm.RefLabel = "the same files of pg_combinebackup's output, read once before"
	if warm.Error == "" {
		st := wm.Stats(t)
		warm.Note = fmt.Sprintf("%s; %d opens served from it, %d reconstructed opens", note, st.CacheDirOpens, st.ReconOpens)
	}
	b.add(t, warm)
	wm.umount(t)
}
