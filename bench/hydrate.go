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
// one on pg_combinebackup's output, both started after the page cache was
// dropped, then 8 windows of pgbench -S of tps-seconds each, alternating
// ours and the reference ABBA (ours, ref, ref, ours, ...). Every window is
// reported, with how far hydration was when it ended; the figure's value
// is the first pair's.
//
// Hydration throughput: the point's bytes over the time from mount to
// hydration complete (no server), against the bytes over flatten's time of
// the same point, each on a dropped page cache.
func (b *bench) figHydrate(t *benchTB) {
	ref := b.refPointDir(t)
	dir := b.scratchDir(t, "hydrate")
	b.figColdStart(t, dir, ref)
	b.figHydrateRate(t, dir)
}

func (b *bench) figColdStart(t *benchTB, dir, ref string) {
	mp := path.Join(dir, "mnt")
	b.e.MkdirAll(t, mp)
	b.settle(t, true)
	t0 := time.Now()
	// The upper in a directory of root's own: mount refuses one whose parent
	// another user (the server's, who owns the scratch directory) can change.
	args := []string{"mount", "--daemon", "--log", mp + ".mount.log", "--cow", path.Join(b.e.PrivateDir(t), "upper"), "--hydrate"}
	if b.hydrateWB != "" {
		args = append(args, "--writeback-cache="+b.hydrateWB)
	}
	runCmd(t, b.cfs(true, append(append(args, b.chain...), mp)...))
	m := b.attach(t, mp)
	settings := map[string]string{"recovery_init_sync_method": "syncfs"}
	ourSrv := startServer(t, b.e, m.dir, settings)
	ourSrv.waitReady(t, 30*time.Minute)
	refSrv := startServer(t, b.e, ref, settings)
	refSrv.waitReady(t, 30*time.Minute)
	b.progressf(t, "cold start: 8 windows of pgbench -S -T %d, ours and reference ABBA, hydrating", b.tpsSec)
	ours, refs, windows := b.abbaWindows(t, ourSrv, refSrv, func() string {
		st := m.Stats(t)
		return hydrationNote(st)
	})
	c := strconv.Itoa(b.tpsClients)
	fig := &Figure{ID: "cold-start-hydrate", Name: fmt.Sprintf("cold start, pgbench -S, %s clients, %d s windows ABBA, mount --hydrate (TPS)", c, b.tpsSec),
		Unit: "TPS", Better: "higher", Runs: 4, Cold: true, Ours: ours[0], OursRuns: ours, RefRuns: refs,
		Ref: ptr(refs[0]), Ratio: ptr(ours[0] / refs[0]), Target: "first pair >= 0.7x", TargetMet: ptr(ours[0]/refs[0] >= 0.7),
		OursLabel: "server on combinefs mount --cow --hydrate, started on a dropped page cache",
		RefLabel:  "server on pg_combinebackup's output, started on a dropped page cache",
		Note:      "mount flags: --writeback-cache=" + cmp.Or(b.hydrateWB, "(default)") + "; every window (the machine is shared): " + strings.Join(windows, "; ") + fmt.Sprintf("; %.0f s from mount to the last window", time.Since(t0).Seconds())}
	b.add(t, fig)
	ourSrv.stop(t)
	refSrv.stop(t)
	m.umount(t)
}

// hydrationState is a window's note on hydration.
// hydrationNote is a window's line of a hydrating mount's state: how far
// hydration is and how the server's files were opened.
func hydrationNote(st fusefs.Stats) string {
	return fmt.Sprintf("hydration %s, %d passthrough opens, %d direct opens, %d opens through the page cache, %d files promoted",
		hydrationState(st.Hydration), st.PassthroughOpens, st.DirectOpens, st.ReconOpens, st.Promoted)
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
