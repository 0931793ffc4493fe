package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The issue's memory target for a mount ("bounded by the cache size plus
// small per-file maps") read as: at most the default cache size plus 64 MiB
// for the maps and the Go runtime.
const (
	rssLimitMiB = 256 + 64
	rssTarget   = "bounded by the cache size plus small maps: <= 256 MiB (default --cache-size) + 64 MiB"
)

// seq names each run's output directory uniquely.
func (b *bench) seq() int {
	b.counter++
	return b.counter
}

func ratioAtLeast(x float64) func(f *Figure) bool {
	return func(f *Figure) bool { return f.Ratio != nil && *f.Ratio >= x }
}

func ratioAbove(x float64) func(f *Figure) bool {
	return func(f *Figure) bool { return f.Ratio != nil && *f.Ratio > x }
}

// refPoint makes (once, untimed) pg_combinebackup's output of the last
// point, which the read and TPS figures use as "native".
func (b *bench) refPointDir(t *benchTB) string {
	if b.refPoint != "" {
		return b.refPoint
	}
	dir := b.scratchDir(t, "refpoint")
	out := path.Join(dir, "data")
	runCmd(t, b.pgTool("pg_combinebackup", append([]string{"-o", out}, b.chain...)...))
	b.refPoint = out
	files, total, largest := pointFiles(t, b.e.Host(out))
	b.largestFile = largest
	b.res.Sizes.PointBytes, b.res.Sizes.PointFiles = total, len(files)
	b.pointFiles = files
	return out
}

// 1. capture vs pg_basebackup, full and incremental (from the chain's full
// backup, so it carries both pgbench loads).
func (b *bench) figCapture(t *benchTB) {
	dir := b.scratchDir(t, "capture")
	port := strconv.Itoa(b.src.Port)
	for _, kind := range []string{"full", "incremental"} {
		var extra []string
		var setup func(t *benchTB, run int)
		if kind == "incremental" {
			extra = []string{"-i", path.Join(b.chain[0], "backup_manifest")}
			// Not timed: make the WAL summarizer catch up first, as the
			// harness does before every incremental backup.
			setup = func(t *benchTB, run int) { b.src.WaitForWALSummary(t) }
		}
		mk := func(ours bool) *variant {
			var out string
			return &variant{
				setup: func(t *benchTB, run int) {
					out = path.Join(dir, fmt.Sprintf("%s-%d", kind, b.seq()))
					if setup != nil {
						setup(t, run)
					}
				},
				timed: func(t *benchTB, run int) sample {
					var d time.Duration
					var rss int64
					if ours {
						d, rss = runCmd(t, b.cfs(false, append([]string{"capture", "-D", out, "-h", "127.0.0.1", "-p", port, "-U", b.e.User, "-c", "fast"}, extra...)...))
					} else {
						d, rss = runCmd(t, b.pgTool("pg_basebackup", append([]string{"-D", out, "-h", "127.0.0.1", "-p", port, "-U", b.e.User, "-Fp", "-X", "stream", "-c", "fast"}, extra...)...))
					}
					return sample{v: d.Seconds(), rssKB: rss}
				},
				teardown: func(t *benchTB, run int) { b.rm(t, out) },
			}
		}
		b.progressf(t, "capture %s vs pg_basebackup (%d runs each, plus A/A)", kind, b.runs)
		spec := figSpec{id: "capture-" + kind, name: "capture " + kind + " (time)", unit: "s", cold: true, warmup: true,
			target: "at least as fast as pg_basebackup (ratio >= 1)", targetMet: ratioAtLeast(1)}
		var rss *figSpec
		if kind == "full" {
			rss = &figSpec{id: "rss-capture", name: "capture full: peak RSS"}
		}
		fig, rfig := b.compare(t, spec, mk(true), mk(false), rss)
		fig.OursLabel = "combinefs capture -D DIR -c fast " + strings.Join(extra, " ")
		fig.RefLabel = "pg_basebackup -D DIR -Fp -X stream -c fast " + strings.Join(extra, " ")
		b.add(t, fig, rfig)
	}
}

// 2. flatten vs pg_combinebackup in each copy mode both support.
func (b *bench) figFlatten(t *benchTB) {
	dir := b.scratchDir(t, "flatten")
	modes := []string{"copy", "copy-file-range"}
	if err := cloneProbe(b.e.Host(dir)); err != nil {
		fs, _ := fsOf(b.e.Host(dir))
		b.add(t, &Figure{ID: "flatten-clone", Name: "flatten --clone (time)", Unit: "s", Unsupported: true,
			Note: fmt.Sprintf("unsupported: this filesystem (%s) cannot clone files (FICLONE: %v); neither tool can run --clone here", fs, err)})
	} else {
		modes = append(modes, "clone")
	}
	if b.e.Major >= 18 {
		modes = append(modes, "link")
	} else {
		b.notes = append(b.notes, "flatten --link: pg_combinebackup has it from PostgreSQL 18 only; run with -pg-major 18 to measure it")
	}
	for _, mode := range modes {
		mk := func(ours bool) *variant {
			var out string
			return &variant{
				setup: func(t *benchTB, run int) { out = path.Join(dir, fmt.Sprintf("%s-%d", mode, b.seq())) },
				timed: func(t *benchTB, run int) sample {
					args := append([]string{"--" + mode, "-o", out}, b.chain...)
					var d time.Duration
					var rss int64
					if ours {
						d, rss = runCmd(t, b.cfs(false, append([]string{"flatten"}, args...)...))
					} else {
						d, rss = runCmd(t, b.pgTool("pg_combinebackup", args...))
					}
					return sample{v: d.Seconds(), rssKB: rss}
				},
				teardown: func(t *benchTB, run int) { b.rm(t, out) },
			}
		}
		b.progressf(t, "flatten --%s vs pg_combinebackup --%s (%d runs each, plus A/A)", mode, mode, b.runs)
		spec := figSpec{id: "flatten-" + mode, name: "flatten --" + mode + " (time)", unit: "s", cold: true, warmup: true,
			target: "faster than pg_combinebackup at >= 1.5 GB (ratio > 1)", targetMet: ratioAbove(1)}
		var rss *figSpec
		if mode == "copy" {
			rss = &figSpec{id: "rss-flatten", name: "flatten --copy: peak RSS"}
		}
		fig, rfig := b.compare(t, spec, mk(true), mk(false), rss)
		fig.OursLabel = "combinefs flatten --" + mode + " -o DIR FULL INC1 INC2"
		fig.RefLabel = "pg_combinebackup --" + mode + " -o DIR FULL INC1 INC2"
		if b.res.Sizes.PointBytes < 1500e6 {
			fig.Note = "the point is smaller than the 1.5 GB the target is stated for"
		}
		b.add(t, fig, rfig)
	}
}

// cloneProbe tries FICLONE between two files of dir.
func cloneProbe(dir string) error {
	src, err := os.CreateTemp(dir, "clone-src-")
	if err != nil {
		return err
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 8192)); err != nil {
		return err
	}
	dst, err := os.CreateTemp(dir, "clone-dst-")
	if err != nil {
		return err
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
}

// 3. mount time: combinefs mount --daemon until it returns (cold).
func (b *bench) figMount(t *benchTB) {
	dir := b.scratchDir(t, "mount")
	for _, cow := range []bool{false, true} {
		var m *mnt
		var upper string
		v := &variant{
			setup: func(t *benchTB, run int) {
				n := b.seq()
				b.e.MkdirAll(t, path.Join(dir, fmt.Sprintf("mnt-%d", n)))
				upper = ""
				if cow {
					upper = path.Join(b.e.PrivateDir(t), fmt.Sprintf("upper-%d", n))
				}
				m = &mnt{dir: path.Join(dir, fmt.Sprintf("mnt-%d", n))}
			},
			timed: func(t *benchTB, run int) sample {
				d, _ := runCmd(t, b.cfs(true, b.mountArgs(m.dir, upper)...))
				m = b.attach(t, m.dir)
				return sample{v: d.Seconds()}
			},
			teardown: func(t *benchTB, run int) {
				if m.b != nil {
					m.umount(t)
				}
				if upper != "" {
					b.rm(t, upper)
				}
			},
		}
		id, name := "mount-ro", "mount --daemon, read-only (time)"
		if cow {
			id, name = "mount-cow", "mount --daemon --cow (time)"
		}
		b.progressf(t, "%s (%d runs, A/A of ours against itself)", name, 2*b.runs)
		fig, _ := b.compare(t, figSpec{id: id, name: name, unit: "s", cold: true,
			target:    "under 1 s at 1.5 GB, independent of size",
			targetMet: func(f *Figure) bool { return f.Ours < 1 }}, v, nil, nil)
		fig.OursLabel = "combinefs mount --daemon " + map[bool]string{true: "--cow UPPER "}[cow] + "FULL INC1 INC2 MP"
		fig.Note = "no reference (pg_combinebackup's equivalent is the whole combine); A/A is ours against itself"
		b.add(t, fig)
	}
}

// 4. Sequential reads of every file of the point, through a read-only mount
// vs pg_combinebackup's output; cold (a fresh mount and a dropped page cache
// for every run) and warm.
func (b *bench) figRead(t *benchTB) {
	ref := b.refPointDir(t)
	files := b.pointFiles
	dir := b.scratchDir(t, "read")
	unit := "MiB/s"
	rate := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

	// Cold: a fresh mount for every run, so the block cache is empty too.
	var m *mnt
	ours := &variant{
		setup: func(t *benchTB, run int) {
			m, _ = b.mount(t, path.Join(dir, fmt.Sprintf("mnt-%d", b.seq())), "")
		},
		timed: func(t *benchTB, run int) sample {
			n, d := readFiles(t, b.e.Host(m.dir), files)
			st := m.Stats(t)
			s := sample{v: rate(n, d), rssKB: m.HWM(t), parts: map[string]float64{
				"cache_hits": float64(st.Cache.Hits), "cache_misses": float64(st.Cache.Misses),
				"bytes_from_backups_MiB": float64(st.SourceBytes) / (1 << 20), "bytes_served_by_daemon_MiB": float64(st.BytesServed) / (1 << 20),
				"passthrough_opens": float64(st.PassthroughOpens), "reconstructed_opens": float64(st.ReconOpens)}}
			if st.Cache.Hits+st.Cache.Misses > 0 {
				s.parts["cache_hit_rate"] = st.Cache.HitRate()
			}
			return s
		},
		teardown: func(t *benchTB, run int) { m.umount(t) },
	}
	native := &variant{timed: func(t *benchTB, run int) sample {
		n, d := readFiles(t, b.e.Host(ref), files)
		return sample{v: rate(n, d)}
	}}
	b.progressf(t, "cold sequential read of the point (%s in %d files): mount vs pg_combinebackup output", human(b.res.Sizes.PointBytes), len(files))
	cold, rss := b.compare(t, figSpec{id: "read-cold", name: "sequential read, cold (throughput)", unit: unit, higher: true, cold: true,
		target: "at least 0.7x native (ratio >= 0.7)", targetMet: ratioAtLeast(0.7)}, ours, native,
		&figSpec{id: "rss-mount-ro", name: "mount daemon (read-only) after reading the point: peak RSS"})
	cold.OursLabel = "read every file through a fresh read-only mount, 1 MiB reads"
	cold.RefLabel = "the same files of pg_combinebackup's output"
	if cold.Error == "" {
		if hr, ok := cold.Parts["ours.cache_hit_rate"]; ok {
			cold.Note = fmt.Sprintf("block cache hit rate %.1f%% (median hits %.0f, misses %.0f); %.0f MiB served by the daemon, %.0f MiB read from backups; passthrough opens %.0f",
				100*hr, cold.Parts["ours.cache_hits"], cold.Parts["ours.cache_misses"], cold.Parts["ours.bytes_served_by_daemon_MiB"], cold.Parts["ours.bytes_from_backups_MiB"], cold.Parts["ours.passthrough_opens"])
			// Reconstructed blocks are patchworks of several backups; reading
			// only the blocks needed costs a request each, so gaps are read
			// too. Where both sides are bound by the disk's throughput,
			// this share bounds the ratio.
			if pointMiB := float64(b.res.Sizes.PointBytes) / (1 << 20); pointMiB > 0 {
				amp := cold.Parts["ours.bytes_from_backups_MiB"] / pointMiB
				cold.Note += fmt.Sprintf("; the mount read %.2fx the point's bytes from the backups (the reference reads each byte once: at equal disk throughput that alone bounds the ratio near %.2f)", amp, 1/amp)
			}
		}
	}
	mountRSS(rss)
	b.add(t, cold, rss)

	// Warm: one mount, each side read once before the timed runs.
	wm, _ := b.mount(t, path.Join(dir, "warm"), "")
	readFiles(t, b.e.Host(wm.dir), files)
	readFiles(t, b.e.Host(ref), files)
	before := wm.Stats(t)
	warmOurs := &variant{timed: func(t *benchTB, run int) sample {
		n, d := readFiles(t, b.e.Host(wm.dir), files)
		return sample{v: rate(n, d)}
	}}
	b.progressf(t, "warm sequential read of the point: mount vs pg_combinebackup output")
	warm, _ := b.compare(t, figSpec{id: "read-warm", name: "sequential read, warm (throughput)", unit: unit, higher: true,
		target: "at least 0.8x native (ratio >= 0.8)", targetMet: ratioAtLeast(0.8)}, warmOurs, native, nil)
	warm.OursLabel = "read every file through a read-only mount, read once before"
	warm.RefLabel = "the same files of pg_combinebackup's output, read once before"
	after := wm.Stats(t)
	hits, misses := after.Cache.Hits-before.Cache.Hits, after.Cache.Misses-before.Cache.Misses
	served := after.BytesServed - before.BytesServed
	if hits+misses > 0 {
		warm.Note = fmt.Sprintf("block cache during the timed runs: %.1f%% hits (%d hits, %d misses); %s served by the daemon (the rest from the kernel page cache)",
			100*float64(hits)/float64(hits+misses), hits, misses, human(int64(served)))
	} else {
		warm.Note = fmt.Sprintf("no block cache lookups during the timed runs: the kernel page cache served them (%s served by the daemon)", human(int64(served)))
	}
	share, err := largeFolioShare(path.Join(b.e.Host(wm.dir), b.largestFile), 64<<20)
	rshare, rerr := largeFolioShare(path.Join(b.e.Host(ref), b.largestFile), 64<<20)
	if err = errors.Join(err, rerr); err == nil {
		warm.Note += fmt.Sprintf("; page cache in large folios (first 64 MiB of %s): mount %.0f%%, reference %.0f%%", b.largestFile, 100*share, 100*rshare)
	} else {
		warm.Note += fmt.Sprintf("; large folios not counted: %s", firstLine(err.Error()))
	}
	b.add(t, warm)
	b.figWarmParts(t, wm, ref, files)
	wm.umount(t)
}

// figWarmParts splits a warm read in its two costs, each side against the
// other: copying out of the page cache (every file opened before the timed
// run) and opening and closing the files (a round trip to the daemon each
// on a mount). Diagnostics, with no target of their own.
func (b *bench) figWarmParts(t *benchTB, wm *mnt, ref string, files []string) {
	unit := "MiB/s"
	held := func(dir string) *variant {
		var open []*os.File
		return &variant{
			setup: func(t *benchTB, run int) { open = openFiles(t, dir, files) },
			timed: func(t *benchTB, run int) sample {
				n, d := readOpen(t, open)
				return sample{v: float64(n) / (1 << 20) / d.Seconds()}
			},
			teardown: func(t *benchTB, run int) {
				for _, f := range open {
					f.Close()
				}
			},
		}
	}
	fig, _ := b.compare(t, figSpec{id: "read-warm-held", name: "sequential read, warm, files open before (throughput)", unit: unit, higher: true},
		held(b.e.Host(wm.dir)), held(b.e.Host(ref)), nil)
	fig.OursLabel = "read every file through the warm mount, opened before the timed run"
	fig.RefLabel = "the same of pg_combinebackup's output"
	fig.Note = "diagnostic: the page-cache copy alone, without the opens"
	b.add(t, fig)

	openClose := func(dir string) *variant {
		return &variant{timed: func(t *benchTB, run int) sample {
			t0 := time.Now()
			for _, f := range openFiles(t, dir, files) {
				f.Close()
			}
			return sample{v: time.Since(t0).Seconds()}
		}}
	}
	fig, _ = b.compare(t, figSpec{id: "open-close", name: fmt.Sprintf("open and close the point's %d files (time)", len(files)), unit: "s"},
		openClose(b.e.Host(wm.dir)), openClose(b.e.Host(ref)), nil)
	fig.OursLabel = "through the mount"
	fig.RefLabel = "pg_combinebackup's output"
	fig.Note = "diagnostic: the opens' share of a warm read (each is a round trip to the daemon on a mount)"
	b.add(t, fig)
}

// 5. Time to first query: combinefs mount --cow + server start on the mount
// until SELECT 1 answers, vs pg_combinebackup + server start on its output.
func (b *bench) figTTFQ(t *benchTB) {
	dir := b.scratchDir(t, "ttfq")
	for _, method := range []string{"syncfs", "fsync"} {
		settings := map[string]string{"recovery_init_sync_method": method}
		var srv *server
		var m *mnt
		var out, upper string
		check := func(t *benchTB, run int) {
			if run == 0 && srv != nil {
				got, err := querySelect(srv, "SELECT count(*) FROM pgbench_branches")
				if err != nil || got != strconv.Itoa(b.scale) {
					t.Fatalf("server on %s: pgbench_branches has %q rows (%v), want %d", srv.dataDir, got, err, b.scale)
				}
			}
		}
		ours := &variant{
			setup: func(t *benchTB, run int) {
				n := b.seq()
				out = path.Join(dir, fmt.Sprintf("mnt-%d", n))
				upper = path.Join(b.e.PrivateDir(t), fmt.Sprintf("upper-%d", n))
				b.e.MkdirAll(t, out)
				srv, m = nil, nil
			},
			timed: func(t *benchTB, run int) sample {
				t0 := time.Now()
				runCmd(t, b.cfs(true, b.mountArgs(out, upper)...))
				t1 := time.Now()
				m = b.attach(t, out)
				srv = startServer(t, b.e, out, settings)
				srv.waitReady(t, 30*time.Minute)
				t2 := time.Now()
				return sample{v: t2.Sub(t0).Seconds(), parts: map[string]float64{"mount_s": t1.Sub(t0).Seconds(), "server_start_s": t2.Sub(t1).Seconds()}}
			},
			teardown: func(t *benchTB, run int) {
				check(t, run)
				if srv != nil {
					srv.stop(t)
				}
				if m != nil {
					m.umount(t)
				}
				b.rm(t, upper)
				os.Remove(b.e.Host(out + ".log"))
				os.Remove(b.e.Host(out + ".mount.log"))
			},
		}
		ref := &variant{
			setup: func(t *benchTB, run int) {
				out = path.Join(dir, fmt.Sprintf("combined-%d", b.seq()))
				srv = nil
			},
			timed: func(t *benchTB, run int) sample {
				t0 := time.Now()
				runCmd(t, b.pgTool("pg_combinebackup", append([]string{"-o", out}, b.chain...)...))
				t1 := time.Now()
				srv = startServer(t, b.e, out, settings)
				srv.waitReady(t, 30*time.Minute)
				t2 := time.Now()
				return sample{v: t2.Sub(t0).Seconds(), parts: map[string]float64{"combine_s": t1.Sub(t0).Seconds(), "server_start_s": t2.Sub(t1).Seconds()}}
			},
			teardown: func(t *benchTB, run int) {
				check(t, run)
				if srv != nil {
					srv.stop(t)
				}
				b.rm(t, out)
				os.Remove(b.e.Host(out + ".log"))
			},
		}
		b.progressf(t, "time to first query, recovery_init_sync_method=%s: mount --cow + start vs pg_combinebackup + start", method)
		fig, _ := b.compare(t, figSpec{id: "ttfq-" + method, name: "time to first query, recovery_init_sync_method=" + method, unit: "s", cold: true,
			target: "at least 5x faster than the combine path at 1.5 GB (ratio >= 5)", targetMet: ratioAtLeast(5)}, ours, ref, nil)
		fig.OursLabel = "combinefs mount --daemon --cow UPPER FULL INC1 INC2 MP; postgres -D MP until SELECT 1 answers"
		fig.RefLabel = "pg_combinebackup -o DIR FULL INC1 INC2; postgres -D DIR until SELECT 1 answers"
		b.add(t, fig)
	}
}

var tpsRe = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)

// 6. pgbench -S TPS on a server on a copy-on-write mount vs on
// pg_combinebackup's output; both servers up at once, alternating.
func (b *bench) figTPS(t *benchTB) {
	ref := b.refPointDir(t)
	dir := b.scratchDir(t, "tps")
	m, _ := b.mount(t, path.Join(dir, "mnt"), path.Join(b.e.PrivateDir(t), "upper"))
	ourSrv := startServer(t, b.e, m.dir, map[string]string{"recovery_init_sync_method": "syncfs"})
	ourSrv.waitReady(t, 30*time.Minute)
	refSrv := startServer(t, b.e, ref, map[string]string{"recovery_init_sync_method": "syncfs"})
	refSrv.waitReady(t, 30*time.Minute)
	b.progressf(t, "pgbench -S: warming both servers (read every file, then %d s of pgbench -S each)", b.tpsWarm)
	// Both sides start from the same page cache: what earlier figures and
	// the chain's build left there must not decide whose pages stay.
	b.settle(t, true)
	prewarm(b.e.Host(m.dir))
	prewarm(b.e.Host(ref))
	c := strconv.Itoa(b.tpsClients)
	pgb := func(s *server, secs int) float64 {
		out := s.pgbench(t, "-S", "-n", "-T", strconv.Itoa(secs), "-c", c, "-j", c, "postgres")
		mm := tpsRe.FindStringSubmatch(out)
		if mm == nil {
			t.Fatalf("no tps in pgbench output:\n%s", out)
		}
		v, _ := strconv.ParseFloat(mm[1], 64)
		return v
	}
	// A server that just started sets hint bits on most pages it reads;
	// the warm-up lets both reach their steady state, which is what the
	// timed runs compare.
	pgb(ourSrv, b.tpsWarm)
	pgb(refSrv, b.tpsWarm)
	before := m.Stats(t)
	mk := func(s *server) *variant {
		return &variant{timed: func(t *benchTB, run int) sample { return sample{v: pgb(s, b.tpsSec)} }}
	}
	b.progressf(t, "pgbench -S -c %s -T %d: mount vs flattened copy", c, b.tpsSec)
	fig, _ := b.compare(t, figSpec{id: "tps", name: fmt.Sprintf("pgbench -S, %s clients, %d s (TPS)", c, b.tpsSec), unit: "TPS", higher: true,
		target: "at least 0.9x (ratio >= 0.9)", targetMet: ratioAtLeast(0.9)}, mk(ourSrv), mk(refSrv), nil)
	fig.OursLabel = "server on combinefs mount --cow"
	fig.RefLabel = "server on pg_combinebackup's output"
	after := m.Stats(t)
	hits, misses := after.Cache.Hits-before.Cache.Hits, after.Cache.Misses-before.Cache.Misses
	note := fmt.Sprintf("during the timed runs the mount's block cache saw %d hits, %d misses (%.1f%% hits), %s read from the backups; %d blocks written to UPPER during the runs, %d since the mount",
		hits, misses, 100*float64(hits)/float64(max(1, hits+misses)), human(int64(after.SourceBytes-before.SourceBytes)), after.BlocksWritten-before.BlocksWritten, after.BlocksWritten)
	fig.Note = note
	hwm := m.HWM(t)
	b.add(t, fig, &Figure{ID: "rss-mount-cow", Name: "mount daemon (--cow) after the TPS runs: peak RSS", Unit: "MiB", Better: "lower", Runs: 1,
		Ours: float64(hwm) / 1024, OursRuns: []float64{float64(hwm) / 1024},
		Target: rssTarget, TargetMet: ptr(float64(hwm)/1024 <= rssLimitMiB), Note: "VmHWM of the mount process; no reference"})
	ourSrv.stop(t)
	refSrv.stop(t)
	m.umount(t)
}

// querySelect runs one query on the server and returns the first column of
// the first row.
func querySelect(s *server, sql string) (string, error) {
	out, err := s.e.Command(context.Background(), false, s.e.Tool("psql"), "-XAtq", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-d", "postgres", "-c", sql).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
