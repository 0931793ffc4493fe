package main

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// figBigMem: larger than memory. Each side's server, and our mount daemon,
// runs in a memory cgroup of the same limit (-cgroup-mem), far below the
// database's size, so that both read from disk all along as a server on a
// large database does: the page cache a side may hold is charged to its
// cgroup (the server's reads of the mount fill FUSE's page cache in the
// server's cgroup, the daemon's block cache and UPPER's dirty pages in the
// daemon's). Both start on a dropped page cache; then 8 windows of pgbench
// -S, ours and the reference ABBA; the figure is the median of each side's
// windows, each window is reported. Ours mounts with --hydrate (unless
// -bigmem-hydrate=false), as a server meant to run at full speed would:
// the pages it evicts are then read again from UPPER, natively once a file
// is complete, instead of through a reconstruction from the backups.
func (b *bench) figBigMem(t *benchTB) {
	if b.cgroupMem <= 0 {
		// A third of the point, but room for shared_buffers (128 MiB) and
		// the processes themselves.
		b.cgroupMem = max(b.res.Sizes.PointBytes/3&^(1<<20-1), 512<<20)
	}
	ref := b.refPointDir(t)
	dir := b.scratchDir(t, "bigmem")
	ours, err := newMemCgroup("combinefs-bench-ours", b.cgroupMem)
	if err != nil {
		t.Fatalf("larger than memory: %v", err)
	}
	defer ours.remove()
	theirs, err := newMemCgroup("combinefs-bench-ref", b.cgroupMem)
	if err != nil {
		t.Fatalf("larger than memory: %v", err)
	}
	defer theirs.remove()

	mp := path.Join(dir, "mnt")
	b.e.MkdirAll(t, mp)
	b.settle(t, true)
	settings := map[string]string{"recovery_init_sync_method": "syncfs"}
	var m *mnt
	var ourSrv, refSrv *server
	args := b.mountArgs(mp, path.Join(b.e.PrivateDir(t), "upper"))
	flags := "mount --cow"
	if b.bigmemHydrate {
		args = append([]string{args[0], "--hydrate"}, args[1:]...)
		flags += " --hydrate"
	}
	if b.hydrateWB != "" {
		args = append([]string{args[0], "--writeback-cache=" + b.hydrateWB}, args[1:]...)
		flags += " --writeback-cache=" + b.hydrateWB
	}
	ours.run(t, func() {
		runCmd(t, b.cfs(true, args...))
		m = b.attach(t, mp)
		ourSrv = startServer(t, b.e, m.dir, settings)
	})
	if b.bigmemHydrate && b.bigmemRestart {
		ourSrv.waitReady(t, 30*time.Minute)
		// As a user would once `combinefs status --wait` returns: a
		// server restarted on a hydrated mount opens every file anew, by
		// passthrough where the mount has it, where one that ran through
		// hydration keeps the handles it opened before, served through
		// the page cache (the kernel refuses passthrough on an inode
		// while such an open lasts).
		m.waitHydrated(t)
		ourSrv.stop(t)
		ours.run(t, func() { ourSrv = startServer(t, b.e, m.dir, settings) })
		ourSrv.waitReady(t, 30*time.Minute)
		flags += ", server restarted once hydration completed"
		b.settle(t, true)
	}
	theirs.run(t, func() { refSrv = startServer(t, b.e, ref, settings) })
	ourSrv.waitReady(t, 30*time.Minute)
	refSrv.waitReady(t, 30*time.Minute)

	b.progressf(t, "larger than memory (%s per side): 8 windows of pgbench -S -T %d, ABBA", human(b.cgroupMem), b.tpsSec)
	o, r, windows := b.abbaWindows(t, ourSrv, refSrv, func() string {
		note := fmt.Sprintf("cgroups at %s / %s", human(ours.usage()), human(theirs.usage()))
		if b.bigmemHydrate {
			note += ", " + hydrationNote(m.Stats(t))
		}
		return note
	})
	ourSrv.stop(t)
	refSrv.stop(t)
	m.umount(t)
	mo, mr := median(o), median(r)

	// A/A: the reference against a copy of itself, each in one of the
	// same cgroups, the same way.
	ref2 := path.Join(dir, "ref-copy")
	runCmd(t, b.e.Command(context.Background(), true, "cp", "-a", ref, ref2))
	b.settle(t, true)
	var a, a2 *server
	ours.run(t, func() { a = startServer(t, b.e, ref, settings) })
	theirs.run(t, func() { a2 = startServer(t, b.e, ref2, settings) })
	a.waitReady(t, 30*time.Minute)
	a2.waitReady(t, 30*time.Minute)
	b.progressf(t, "larger than memory, A/A: the reference against a copy of itself")
	aa, aa2, aaWindows := b.abbaWindows(t, a, a2, func() string { return "" })
	a.stop(t)
	a2.stop(t)
	b.add(t, &Figure{ID: "bigmem", Name: fmt.Sprintf("larger than memory: pgbench -S, %d clients, %d s windows ABBA, each side in a %s memory cgroup (TPS)", b.tpsClients, b.tpsSec, human(b.cgroupMem)),
		Unit: "TPS", Better: "higher", Runs: len(o), Cold: true, Ours: mo, OursRuns: o, RefRuns: r,
		Ref: ptr(mr), Ratio: ptr(mo / mr), Target: "at least 0.8x (issue #14, at scale 400 with 2 GiB)", TargetMet: ptr(mo/mr >= 0.8),
		OursLabel: "server on combinefs " + flags + ", server and daemon in one memory cgroup",
		RefLabel:  "server on pg_combinebackup's output, in a memory cgroup of the same limit",
		AA:        ptr(median(aa) / median(aa2)), AARuns: [2][]float64{aa, aa2},
		Note: "every window: " + strings.Join(windows, "; ") + "; A/A windows: " + strings.Join(aaWindows, "; ")})
}

// abbaWindows runs 8 windows of pgbench -S, ours and the reference ABBA
// (ours, ref, ref, ours, ...), and returns each side's TPS and a line per
// window with state's note.
func (b *bench) abbaWindows(t *benchTB, ourSrv, refSrv *server, state func() string) (ours, refs []float64, windows []string) {
	return b.windows(t, ourSrv, refSrv, []string{"ours", "ref", "ref", "ours", "ours", "ref", "ref", "ours"}, state)
}

// windows runs a window of pgbench -S per side ("ours" or "ref"), in order.
func (b *bench) windows(t *benchTB, ourSrv, refSrv *server, sides []string, state func() string) (ours, refs []float64, windows []string) {
	c := strconv.Itoa(b.tpsClients)
	for i, side := range sides {
		s := ourSrv
		if side == "ref" {
			s = refSrv
		}
		out := s.pgbench(t, "-S", "-n", "-T", strconv.Itoa(b.tpsSec), "-c", c, "-j", c, "postgres")
		mm := tpsRe.FindStringSubmatch(out)
		if mm == nil {
			t.Fatalf("no tps in pgbench output:\n%s", out)
		}
		v, _ := strconv.ParseFloat(mm[1], 64)
		if side == "ours" {
			ours = append(ours, v)
		} else {
			refs = append(refs, v)
		}
		w := fmt.Sprintf("%d %s %.0f TPS", i+1, side, v)
		if note := state(); note != "" {
			w += " (" + note + ")"
		}
		windows = append(windows, w)
		b.progressf(t, "window %s", windows[len(windows)-1])
	}
	return ours, refs, windows
}

// memCgroup is a memory cgroup the benchmark makes (v2 where the memory
// controller is there, else v1's memory hierarchy) and removes.
type memCgroup struct {
	dir       string // the cgroup's directory
	limitFile string // memory.max (v2) or memory.limit_in_bytes (v1)
	usageFile string // memory.current (v2) or memory.usage_in_bytes (v1)
	home      string // the cgroup.procs of this process's own cgroup, to return to
}

func newMemCgroup(name string, limit int64) (*memCgroup, error) {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	var g memCgroup
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.Contains(string(ctl), "memory") {
		g = memCgroup{dir: filepath.Join("/sys/fs/cgroup", name), limitFile: "memory.max", usageFile: "memory.current"}
		for _, l := range strings.Split(string(own), "\n") {
			if rest, ok := strings.CutPrefix(l, "0::"); ok {
				g.home = filepath.Join("/sys/fs/cgroup", rest, "cgroup.procs")
			}
		}
	} else {
		g = memCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", name), limitFile: "memory.limit_in_bytes", usageFile: "memory.usage_in_bytes"}
		for _, l := range strings.Split(string(own), "\n") {
			if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[1] == "memory" {
				g.home = filepath.Join("/sys/fs/cgroup/memory", f[2], "cgroup.procs")
			}
		}
	}
	if g.home == "" {
		return nil, fmt.Errorf("no memory cgroup controller here (neither cgroup v2 with memory nor v1's memory hierarchy)")
	}
	os.Remove(g.dir) // a leftover of a killed run, if empty
	if err := os.Mkdir(g.dir, 0o755); err != nil {
		return nil, fmt.Errorf("making memory cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(g.dir, g.limitFile), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		os.Remove(g.dir)
		return nil, fmt.Errorf("setting the memory limit of %s: %w", g.dir, err)
	}
	return &g, nil
}

// run calls start with this process inside the cgroup, so that what start
// forks (the mount daemon, postmasters) is born in it, then moves this
// process back.
func (g *memCgroup) run(t *benchTB, start func()) {
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(g.dir, "cgroup.procs"), pid, 0); err != nil {
		t.Fatalf("entering %s: %v", g.dir, err)
	}
	defer func() {
		if err := os.WriteFile(g.home, pid, 0); err != nil {
			t.Fatalf("leaving %s: %v", g.dir, err)
		}
	}()
	start()
}

func (g *memCgroup) usage() int64 {
	data, _ := os.ReadFile(filepath.Join(g.dir, g.usageFile))
	n, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return n
}

// remove deletes the cgroup once its processes are gone (rmdir fails while
// any is left; the servers and the daemon stop before this runs).
func (g *memCgroup) remove() {
	for i := 0; i < 50; i++ {
		if os.Remove(g.dir) == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
