package main

import (
	"cmp"
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// figWBPT: the writeback cache against passthrough (issue #14), the figures
// --writeback-cache=auto chooses by.
//
// Two upper states of the same point: "complete" (hydration ran to its
// end: every file is whole in the upper) and "mid" (hydration stopped
// about half way by an unmount: some files whole, the rest overlays still
// read from the chain; remounted without --hydrate, so the state holds
// still while it is measured). Each state is copied, and the two copies
// are mounted side by side, one with --writeback-cache, one with
// --writeback-cache=false, with a server on each, next to a server on
// pg_combinebackup's output. Then, for pgbench -S and for TPC-B, -runs
// rounds of a cold window (sync and drop caches right before it, the
// servers left running) on each of the three, then a warm window on each,
// the order of the three reversed every other round. Every window is
// reported. The A/A line is the reference's even rounds over its odd
// rounds (its drift over the figure).
func (b *bench) figWBPT(t *benchTB) {
	ref := b.refPointDir(t)
	dir := b.scratchDir(t, "wbpt")
	settings := map[string]string{"recovery_init_sync_method": "syncfs"}
	refSrv := startServer(t, b.e, ref, settings)
	refSrv.waitReady(t, 30*time.Minute)
	for _, state := range []string{"complete", "mid"} {
		b.wbptState(t, dir, state, refSrv, settings)
	}
	refSrv.stop(t)
}

// wbptState measures one upper state.
func (b *bench) wbptState(t *benchTB, dir, state string, refSrv *server, settings map[string]string) {
	upper := path.Join(b.e.PrivateDir(t), "wbpt-"+state)
	b.rm(t, upper)
	held := b.hydrateUpper(t, path.Join(dir, "mnt-hydrate-"+state), upper, state == "mid")
	upperPT := upper + "-pt"
	b.rm(t, upperPT)
	runCmd(t, b.e.Command(context.Background(), true, "cp", "-a", "--sparse=always", upper, upperPT))
	defer b.rm(t, upper)
	defer b.rm(t, upperPT)

	mnts := map[string]*mnt{}
	srvs := map[string]*server{"ref": refSrv}
	for _, mode := range []string{"wb", "pt"} {
		mp := path.Join(dir, "mnt-"+state+"-"+mode)
		b.e.MkdirAll(t, mp)
		u, flag := upper, "--writeback-cache=true"
		if mode == "pt" {
			u, flag = upperPT, "--writeback-cache=false"
		}
		args := append([]string{"mount", "--daemon", "--log", mp + ".mount.log", "--cow", u, flag}, b.chain...)
		runCmd(t, b.cfs(true, append(args, mp)...))
		mnts[mode] = b.attach(t, mp)
		srvs[mode] = startServer(t, b.e, mp, settings)
		srvs[mode].waitReady(t, 30*time.Minute)
	}
	c := strconv.Itoa(b.tpsClients)
	for _, wl := range []struct{ id, name string }{{"S", "pgbench -S"}, {"tpcb", "TPC-B"}} {
		b.progressf(t, "wbpt %s upper: %s, %d rounds of a cold then a warm window per server", state, wl.name, b.runs)
		tps := map[string][]float64{}
		var windows []string
		pt0 := mnts["pt"].Stats(t).PassthroughOpens
		start := time.Now()
		load0 := loadAvg()
		for r := range b.runs {
			order := []string{"wb", "pt", "ref"}
			if r%2 == 1 {
				order = []string{"ref", "pt", "wb"}
			}
			for _, temp := range []string{"cold", "warm"} {
				for _, side := range order {
					b.settle(t, temp == "cold")
					args := []string{"-n", "-T", strconv.Itoa(b.tpsSec), "-c", c, "-j", c}
					if wl.id == "S" {
						args = append(args, "-S")
					}
					out := srvs[side].pgbench(t, append(args, "postgres")...)
					mm := tpsRe.FindStringSubmatch(out)
					if mm == nil {
						t.Fatalf("no tps in pgbench output:\n%s", out)
					}
					v, _ := strconv.ParseFloat(mm[1], 64)
					tps[temp+"/"+side] = append(tps[temp+"/"+side], v)
					windows = append(windows, fmt.Sprintf("r%d %s %s %.0f", r+1, temp, side, v))
					b.progressf(t, "wbpt %s %s: window %s", state, wl.name, windows[len(windows)-1])
				}
			}
		}
		note := fmt.Sprintf("upper %s (%s); every window (round, temperature, side, TPS): %s; passthrough opens of the --writeback-cache=false mount during these windows: %d",
			state, held, strings.Join(windows, "; "), mnts["pt"].Stats(t).PassthroughOpens-pt0)
		first := ""
		for _, temp := range []string{"cold", "warm"} {
			refRuns := tps[temp+"/ref"]
			var even, odd []float64
			for i, v := range refRuns {
				if i%2 == 0 {
					even = append(even, v)
				} else {
					odd = append(odd, v)
				}
			}
			for _, mode := range []string{"wb", "pt"} {
				ours := tps[temp+"/"+mode]
				label := "server on mount --cow --writeback-cache (no passthrough)"
				if mode == "pt" {
					label = "server on mount --cow --writeback-cache=false (passthrough of whole upper files)"
				}
				id := fmt.Sprintf("wbpt-%s-%s-%s-%s", state, wl.id, temp, mode)
				if first != "" {
					note = "windows: see " + first
				}
				first = cmp.Or(first, id)
				f := &Figure{ID: id,
					Name: fmt.Sprintf("%s upper, %s, %s clients, %d s, %s, %s (TPS)", state, wl.name, c, b.tpsSec, temp, map[string]string{"wb": "writeback cache", "pt": "passthrough"}[mode]),
					Unit: "TPS", Better: "higher", Runs: len(ours), Cold: temp == "cold" && b.canDrop,
					Ours: median(ours), OursRuns: ours, Ref: ptr(median(refRuns)), RefRuns: refRuns,
					Ratio: ptr(median(ours) / median(refRuns)), AA: ptr(median(even) / median(odd)), AARuns: [2][]float64{even, odd},
					OursLabel: label, RefLabel: "server on pg_combinebackup's output",
					Note: note, ElapsedSec: time.Since(start).Seconds(), LoadAvg: [2]float64{load0, loadAvg()}}
				b.add(t, f)
			}
		}
	}
	for _, mode := range []string{"wb", "pt"} {
		srvs[mode].stop(t)
		mnts[mode].umount(t)
	}
}

// hydrateUpper makes upper by hydrating the chain into it, to the end or
// (half) until about half of it is held, and says how far it got.
func (b *bench) hydrateUpper(t *benchTB, mp, upper string, half bool) string {
	b.e.MkdirAll(t, mp)
	args := append([]string{"mount", "--daemon", "--log", mp + ".mount.log", "--cow", upper, "--hydrate"}, b.chain...)
	runCmd(t, b.cfs(true, append(args, mp)...))
	m := b.attach(t, mp)
	defer m.umount(t)
	for {
		h := m.Stats(t).Hydration
		switch {
		case h == nil:
		case h.Error != "":
			t.Fatalf("hydration failed: %s", h.Error)
		case h.Complete:
			return "hydration complete"
		case half && h.Total > 0 && h.Done >= h.Total/2:
			m.umount(t)
			return fmt.Sprintf("hydration stopped at %.0f%%", 100*float64(h.Done)/float64(h.Total))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
