package main

import (
	"cmp"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/combinefs/combinefs/fusefs"
)

// figHydrate: the two figures of mount --hydrate.
//
// Cold start: a server on a fresh copy-on-write mount with --hydrate and
// one on a fresh pg_combinebackup output, both started after the page
// cache was dropped, then a window of pgbench -S of tps-seconds on ours,
// then one on the reference's. The figure is the median of coldStartReps
// such first pairs; the first cold start runs 8 windows, ours and the
// reference ABBA (ours, ref, ref, ours, ...), each reported with how far
// hydration was when it ended.
//
// Hydration throughput: the point's bytes over the time from mount to
// hydration complete (no server), against the bytes over flatten's time of
// the same point, each on a dropped page cache.
func (b *bench) figHydrate(t *benchTB) {
	b.refPointDir(t) // the point's size, for the rate
	dir := b.scratchDir(t, "hydrate")
	b.figColdStart(t, dir)
	b.figHydrateRate(t, dir)
}

func (b *bench) figColdStart(t *benchTB, dir string) {
	t0 := time.Now()
	var firstOurs, firstRefs []float64
	var ours, refs []float64
	var windows, pairs []string
	for rep := range coldStartReps {
		o, r, w := b.coldStart(t, dir, rep, rep == 0)
		firstOurs, firstRefs = append(firstOurs, o[0]), append(firstRefs, r[0])
		if rep == 0 {
			ours, refs, windows = o, r, w
		}
		pairs = append(pairs, fmt.Sprintf("%.0f / %.0f (%.2fx; %s)", o[0], r[0], o[0]/r[0], strings.SplitN(w[0], "; ", 2)[0]))
		b.progressf(t, "cold start %d of %d: first pair %s", rep+1, coldStartReps, pairs[rep])
	}
	o, r := median(firstOurs), median(firstRefs)
	c := strconv.Itoa(b.tpsClients)
	fig := &Figure{ID: "cold-start-hydrate", Name: fmt.Sprintf("cold start, pgbench -S, %s clients, first pair of %d s windows (ours, then the reference), median of %d cold starts, mount --hydrate (TPS)", c, b.tpsSec, coldStartReps),
		Unit: "TPS", Better: "higher", Runs: coldStartReps, Cold: true, Ours: o, OursRuns: firstOurs, RefRuns: firstRefs,
		Ref: ptr(r), Ratio: ptr(o / r), Target: "first pair >= 0.7x", TargetMet: ptr(o/r >= 0.7),
		OursLabel: "server on combinefs mount --cow --hydrate, started on a dropped page cache",
		RefLabel:  "server on pg_combinebackup's output, started on a dropped page cache",
		Note: "mount flags: --writeback-cache=" + cmp.Or(b.hydrateWB, "(default)") + "; first pairs (ours / reference): " + strings.Join(pairs, "; ") +
			fmt.Sprintf("; the first cold start's 8 windows ABBA: %s; windows 4, 5, 8 against 3, 6, 7: %.2fx", strings.Join(windows, "; "), (ours[1]+ours[2]+ours[3])/(refs[1]+refs[2]+refs[3])) +
			fmt.Sprintf("; %.0f s in all", time.Since(t0).Seconds())}
	b.add(t, fig)
}

// coldStartReps is how many cold starts the first pair's median is of: a
// single one spread from 0.57x to 0.80x across runs of one binary.
const coldStartReps = 4

// coldStart mounts a fresh upper with --hydrate, starts a server on it and
// one on pg_combinebackup's output of the point, both on a dropped page cache, and runs the windows: ABBA (8)
// with all, else ours then the reference's.
func (b *bench) coldStart(t *benchTB, dir string, rep int, all bool) (ours, refs []float64, windows []string) {
	mp := path.Join(dir, fmt.Sprintf("mnt-%d", rep))
	b.e.MkdirAll(t, mp)
	// A fresh reference too: a server that ran on one leaves the hint bits
	// it set there, sparing the next its writes.
	ref := path.Join(dir, fmt.Sprintf("ref-%d", rep))
	runCmd(t, b.pgTool("pg_combinebackup", append([]string{"-o", ref}, b.chain...)...))
	b.settle(t, true)
	// The upper in a directory of root's own: mount refuses one whose parent
	// another user (the server's, who owns the scratch directory) can change.
	upper := path.Join(b.e.PrivateDir(t), fmt.Sprintf("upper-cold-%d", rep))
	args := []string{"mount", "--daemon", "--log", mp + ".mount.log", "--cow", upper, "--hydrate"}
	if b.hydrateWB != "" {
		args = append(args, "--writeback-cache="+b.hydrateWB)
	}
	runCmd(t, b.cfs(true, append(append(args, b.chain...), mp)...))
	m := b.attach(t, mp)
	settings := map[string]string{"recovery_init_sync_method": "syncfs"}
	t0 := time.Now()
	ourSrv := startServer(t, b.e, m.dir, settings)
	ourSrv.waitReady(t, 30*time.Minute)
	t1 := time.Now()
	refSrv := startServer(t, b.e, ref, settings)
	refSrv.waitReady(t, 30*time.Minute)
	ready := fmt.Sprintf("servers ready in %.1f s (ours, hydration %s) and %.1f s", t1.Sub(t0).Seconds(), hydrationState(m.Stats(t).Hydration), time.Since(t1).Seconds())
	sides := []string{"ours", "ref"}
	if all {
		sides = []string{"ours", "ref", "ref", "ours", "ours", "ref", "ref", "ours"}
	}
	b.progressf(t, "cold start %d: %d windows of pgbench -S -T %d (%s), hydrating", rep+1, len(sides), b.tpsSec, strings.Join(sides, ", "))
	ours, refs, windows = b.windows(t, ourSrv, refSrv, sides, func() string { return hydrationNote(m.Stats(t)) })
	windows[0] = ready + "; " + windows[0]
	ourSrv.stop(t)
	refSrv.stop(t)
	m.umount(t)
	b.rm(t, upper)
	b.rm(t, ref)
	return ours, refs, windows
}

// hydrationState is a window's note on hydration.
// hydrationNote is a window's line of a hydrating mount's state: how far
// hydration is and how the server's files were opened.
func hydrationNote(st fusefs.Stats) string {
	return fmt.Sprintf("hydration %s, %d passthrough opens (%d of them awaited), %d direct opens, %d opens through the page cache, %d files promoted",
		hydrationState(st.Hydration), st.PassthroughOpens, st.AwaitedOpens, st.DirectOpens, st.ReconOpens, st.Promoted)
}

func hydrationState(h *fusefs.HydrationStats) string {
	switch {
	case h == nil:
		return "unknown"
	case h.Complete:
		return "complete"
	case h.Total > 0:
		return fmt.Sprintf("%.0f%%", 100*float64(h.Done)/float64(h.Total))
	}
	return "starting"
}

func (b *bench) figHydrateRate(t *benchTB, dir string) {
	total := b.res.Sizes.PointBytes
	rate := func(d time.Duration) float64 { return float64(total) / (1 << 20) / d.Seconds() }
	var oursRuns, refRuns []float64
	for run := range 2 {
		mp := path.Join(dir, fmt.Sprintf("mnt-rate-%d", run))
		b.e.MkdirAll(t, mp)
		b.settle(t, true)
		t0 := time.Now()
		upper := path.Join(b.e.PrivateDir(t), fmt.Sprintf("upper-rate-%d", run))
		args := append([]string{"mount", "--daemon", "--log", mp + ".mount.log", "--cow", upper, "--hydrate"}, b.chain...)
		runCmd(t, b.cfs(true, append(args, mp)...))
		m := b.attach(t, mp)
		m.waitHydrated(t)
		d := time.Since(t0)
		m.umount(t)
		b.rm(t, upper)
		oursRuns = append(oursRuns, rate(d))

		out := path.Join(dir, fmt.Sprintf("flat-%d", run))
		b.settle(t, true)
		fd, _ := runCmd(t, b.cfs(true, append([]string{"flatten", "-o", out}, b.chain...)...))
		refRuns = append(refRuns, rate(fd))
		b.rm(t, out)
		b.progressf(t, "hydration %.0f MiB/s, flatten %.0f MiB/s", oursRuns[run], refRuns[run])
	}
	o, r := median(oursRuns), median(refRuns)
	b.add(t, &Figure{ID: "hydrate-rate", Name: "hydration (no server) vs combinefs flatten of the same point (MiB/s of the point)",
		Unit: "MiB/s", Better: "higher", Runs: len(oursRuns), Cold: true, Ours: o, Ref: ptr(r), Ratio: ptr(o / r),
		OursRuns: oursRuns, RefRuns: refRuns, Target: "at least 0.8x (issue #14, with a server running pgbench -S; this run has none)",
		TargetMet: ptr(o/r >= 0.8), OursLabel: "mount --cow --hydrate until complete", RefLabel: "combinefs flatten -o"})
}
