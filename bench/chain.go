package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/combinefs/combinefs/integration"
)

// chainMeta is written beside a kept chain so a later run with the same
// settings reuses it.
type chainMeta struct {
	Scale, LoadSeconds, Major int
	Backups                   []string
	Built                     string
}

// setupChain builds (or, with -workdir, reuses) the chain: a cluster
// initialised with data checksums and the harness's settings, pgbench -i at
// -scale, a full backup, then twice a pgbench TPC-B load and an incremental
// backup, all with the real pg_basebackup. The cluster keeps running for the
// capture figures.
func (b *bench) setupChain(t *benchTB, workdir string) {
	e := b.e
	keep := workdir != ""
	if !keep {
		workdir = fmt.Sprintf("/srv/combinefs/bench-%d", os.Getpid())
	}
	b.dir = workdir
	metaPath := e.Host(path.Join(workdir, "chain.json"))
	var meta chainMeta
	reuse := false
	if data, err := os.ReadFile(metaPath); err == nil && json.Unmarshal(data, &meta) == nil {
		if meta.Scale == b.scale && meta.LoadSeconds == b.loadSec && meta.Major == e.Major {
			reuse = true
		} else {
			t.Fatalf("%s holds a chain of scale %d, load %d s, PostgreSQL %d; this run wants %d, %d s, %d: use another -workdir or remove it",
				workdir, meta.Scale, meta.LoadSeconds, meta.Major, b.scale, b.loadSec, e.Major)
		}
	} else if ents, err := os.ReadDir(e.Host(workdir)); err == nil && len(ents) > 0 {
		t.Fatalf("%s exists and holds no complete chain (no chain.json): remove it first", workdir)
	}
	e.MkdirAll(t, workdir)
	os.Chmod(e.Host(workdir), 0o755)
	// Every run's scratch space (backups taken, outputs, mounts) lives
	// below scratch and goes at the end, also with -workdir.
	scratch := path.Join(workdir, "scratch")
	b.rm(t, scratch)
	e.MkdirAll(t, scratch)
	os.Chmod(e.Host(scratch), 0o755)
	t.Cleanup(func() {
		for _, mp := range leftMounts(e, workdir) {
			t.Logf("cleanup: unmounting %s, left mounted", mp)
			if err := syscall.Unmount(mp, 0); err != nil {
				syscall.Unmount(mp, syscall.MNT_DETACH)
			}
		}
		if keep {
			os.RemoveAll(e.Host(scratch))
		} else {
			os.RemoveAll(e.Host(workdir))
		}
	})

	data := path.Join(workdir, "data")
	if reuse {
		b.progressf(t, "reusing the chain in %s (built %s)", workdir, meta.Built)
		b.src = e.StartServer(t, data, integration.ServerOptions{})
		b.chain = meta.Backups
		return
	}
	t0 := time.Now()
	b.progressf(t, "building the chain in %s: initdb, pgbench -i -s %d", workdir, b.scale)
	b.src = e.InitCluster(t, integration.ClusterOptions{Dir: data})
	b.src.Pgbench(t, "-i", "-q", "-s", strconv.Itoa(b.scale))
	var backups []string
	for i := 0; i <= 2; i++ {
		name := "full"
		prior := ""
		if i > 0 {
			name = fmt.Sprintf("inc%d", i)
			prior = path.Join(backups[i-1], "backup_manifest")
			b.progressf(t, "pgbench TPC-B load for %d s, then incremental backup %d", b.loadSec, i)
			b.src.Pgbench(t, "-n", "-T", strconv.Itoa(b.loadSec), "-c", "2", "-j", "2")
		} else {
			b.progressf(t, "full backup (pg_basebackup)")
		}
		dest := path.Join(workdir, name)
		b.src.BaseBackup(t, dest, prior)
		backups = append(backups, dest)
	}
	b.chain = backups
	meta = chainMeta{Scale: b.scale, LoadSeconds: b.loadSec, Major: e.Major, Backups: backups, Built: time.Now().UTC().Format(time.RFC3339)}
	b.res.ChainBuildSec = time.Since(t0).Seconds()
	if keep {
		data, _ := json.MarshalIndent(meta, "", "  ")
		if err := os.WriteFile(metaPath, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// scratchDir is where a figure's outputs go (in-root).
func (b *bench) scratchDir(t *benchTB, name string) string {
	p := path.Join(b.dir, "scratch", name)
	b.rm(t, p)
	b.e.MkdirAll(t, p)
	os.Chmod(b.e.Host(p), 0o755)
	return p
}

// Sizes of the chain.
type Sizes struct {
	Backups     map[string]int64 `json:"backup_bytes"`
	PointBytes  int64            `json:"point_bytes"` // the data directory of the last point
	PointFiles  int              `json:"point_files"`
	DatabaseSQL int64            `json:"database_bytes"` // pg_database_size of postgres
	Incremental map[string]int   `json:"incremental_files"`
}

func (s Sizes) describe() string {
	return fmt.Sprintf("point %s in %d files (database %s); backups full %s, inc1 %s, inc2 %s",
		human(s.PointBytes), s.PointFiles, human(s.DatabaseSQL), human(s.Backups["full"]), human(s.Backups["inc1"]), human(s.Backups["inc2"]))
}

func (b *bench) sizes(t *benchTB) Sizes {
	s := Sizes{Backups: map[string]int64{}, Incremental: map[string]int{}}
	for _, bk := range b.chain {
		var n int64
		inc := 0
		filepath.WalkDir(b.e.Host(bk), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					n += fi.Size()
				}
				if strings.HasPrefix(d.Name(), "INCREMENTAL.") {
					inc++
				}
			}
			return nil
		})
		s.Backups[path.Base(bk)] = n
		s.Incremental[path.Base(bk)] = inc
	}
	if v, err := b.src.Exec("postgres", "SELECT pg_database_size('postgres')"); err == nil {
		s.DatabaseSQL, _ = strconv.ParseInt(v, 10, 64)
	}
	// The point's size: what pg_combinebackup would write, i.e. the full
	// backup's tree with the final sizes. Counted on a dry run of the
	// mount's listing later if needed; here from a stat walk of a combine
	// output made once for the read and TPS figures.
	return s
}

// Machine describes where the benchmark ran.
type Machine struct {
	CPU        string `json:"cpu"`
	CPUs       int    `json:"cpus"`
	MemBytes   int64  `json:"mem_bytes"`
	Kernel     string `json:"kernel"`
	Filesystem string `json:"filesystem"` // of the directory the chain lives in
	Device     string `json:"device"`
	Go         string `json:"go"`
	Virt       string `json:"virtualization,omitempty"`
}

func machineInfo(e *integration.Env) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemBytes = kb << 10
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.Kernel = cstr(u.Release[:]) + " " + cstr(u.Machine[:])
	}
	m.Filesystem, m.Device = fsOf(e.Host("/srv/combinefs"))
	if data, err := os.ReadFile("/sys/class/dmi/id/product_name"); err == nil {
		m.Virt = strings.TrimSpace(string(data))
	} else if data, err := os.ReadFile("/proc/cpuinfo"); err == nil && strings.Contains(string(data), "hypervisor") {
		m.Virt = "virtual machine (hypervisor flag)"
	}
	return m
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// fsOf finds the filesystem type and device of the mount holding p (the
// longest mount point prefix in /proc/self/mounts).
func fsOf(p string) (fstype, dev string) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "", ""
	}
	best := -1
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		mp := f[1]
		if (p == mp || strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > best {
			best, fstype, dev = len(mp), f[2], f[0]
		}
	}
	return
}

// leftMounts lists the mounts at or below the in-root dir, deepest first.
func leftMounts(e *integration.Env, dir string) []string {
	if e == nil || dir == "" {
		return nil
	}
	host := e.Host(dir)
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var mps []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 {
			mp := strings.ReplaceAll(f[1], `\040`, " ")
			if mp == host || strings.HasPrefix(mp, host+"/") {
				mps = append([]string{mp}, mps...)
			}
		}
	}
	return mps
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
