// Command bench measures combinefs's headline figures against the reference
// tools (pg_basebackup, pg_combinebackup, a server on a combined copy) on
// one backup chain built from a real PostgreSQL, in one run: `make bench`,
// or `go run ./bench [flags]` as root. See BENCHMARKS.md.
//
// Every figure is a median of -runs runs of ours and of the reference,
// alternating which goes first, with sync (and for cold figures a dropped
// page cache) before each timed run, next to an A/A ratio: the reference
// against itself in the same alternation, which shows the harness's own
// order bias. It prints a table and writes the same as JSON.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/combinefs/combinefs/integration"
)

type bench struct {
	e          *integration.Env
	runs       int
	scale      int
	loadSec    int
	tpsSec     int
	tpsClients int
	tpsWarm    int
	cgroupMem  int64 // bigmem's memory limit per side; 0: a third of the point
	// bigmemHydrate mounts bigmem's point with --hydrate
	bigmemHydrate bool
	// bigmemRestart restarts bigmem's server on the mount once hydration
	// is complete, before the windows
	bigmemRestart bool
	// hydrateWB is --writeback-cache of the cold-start and bigmem mounts ("": the default)
	hydrateWB string
	only      map[string]bool
	verbose   bool

	canDrop bool
	bin     string // in-root path of the combinefs binary under test
	binSrc  string // -bin: a prebuilt binary to copy there
	version string
	dir     string // in-root work directory
	chain   []string
	src     *integration.Cluster

	refPoint    string   // pg_combinebackup's output of the last point (in-root)
	pointFiles  []string // its files, relative, without backup_manifest (see pointFiles)
	largestFile string   // the largest of them
	counter     int

	figs  []*Figure
	notes []string
	res   Results
}

func main() {
	os.Exit(run())
}

// cliOptions are bench's own flags, beside those that set fields of bench.
type cliOptions struct {
	jsonPath, workdir, only, logPath string
	major                            int
}

// parseFlags reads the command line into b and the options; a non-zero
// code means stop with it.
func parseFlags(b *bench) (o cliOptions, code int) {
	flag.IntVar(&b.scale, "scale", 100, "pgbench scale of the chain's database (100 is about 1.5 GB)")
	flag.IntVar(&b.runs, "runs", 4, "timed runs of each side of each figure (medians; at least 4 recommended)")
	flag.IntVar(&b.loadSec, "load-seconds", 30, "pgbench (TPC-B) load before each incremental backup, in seconds")
	flag.IntVar(&b.tpsSec, "tps-seconds", 15, "length of each timed pgbench -S run")
	flag.IntVar(&b.tpsClients, "tps-clients", 2, "pgbench -S clients (and threads)")
	flag.IntVar(&b.tpsWarm, "tps-warm-seconds", 30, "untimed pgbench -S on each server before the timed runs")
	flag.Int64Var(&b.cgroupMem, "cgroup-mem", 0, "memory limit in bytes of each side's cgroup in the bigmem figure (default: a third of the point's size, at least 512 MiB)")
	flag.BoolVar(&b.bigmemHydrate, "bigmem-hydrate", true, "mount the bigmem figure's point with --hydrate")
	flag.BoolVar(&b.bigmemRestart, "bigmem-restart", false, "restart bigmem's server on the mount once hydration is complete, before the timed windows (with -bigmem-hydrate)")
	flag.StringVar(&b.hydrateWB, "hydrate-writeback-cache", "", "--writeback-cache=`VALUE` for the cold-start mount of the hydrate figure and the bigmem mount (default: the mount's default)")
	flag.IntVar(&o.major, "pg-major", 0, "PostgreSQL major to provision, 17 or 18 (default: $PG_MAJOR, else 17)")
	flag.StringVar(&o.jsonPath, "json", "", "write the results as JSON to `PATH` (default bench/results.json in the module)")
	flag.StringVar(&o.workdir, "workdir", "", "keep the chain in this in-root `DIR` and reuse it on the next run with the same settings (default: a fresh directory, removed at the end)")
	flag.StringVar(&o.only, "only", "", "comma-separated subset of figures: capture,flatten,mount,read,cachedir,ttfq,tps,compact,pitr,wallag,exec,hydrate,wbpt,bigmem,s3 (= s3read,s3capture),s3client")
	flag.StringVar(&o.logPath, "log", "", "detailed log `FILE`: every run's figure, command failures (default: combinefs-bench-PID.log in the temp directory)")
	flag.BoolVar(&b.verbose, "v", false, "copy the detailed log to stderr")
	flag.StringVar(&b.binSrc, "bin", "", "measure this (static) combinefs `BINARY` instead of building one from the working tree")
	flag.Parse()
	if b.runs < 1 {
		fmt.Fprintln(os.Stderr, "bench: -runs must be at least 1")
		return o, 2
	}
	if b.runs < 4 {
		fmt.Fprintln(os.Stderr, "bench: warning: fewer than 4 runs; medians of so few runs are not worth much")
	}
	if o.only != "" {
		b.only = map[string]bool{}
		for _, s := range strings.Split(o.only, ",") {
			b.only[strings.TrimSpace(s)] = true
		}
	}
	if o.major != 0 {
		os.Setenv("PG_MAJOR", strconv.Itoa(o.major))
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root (PostgreSQL runs in a chroot, FUSE mounts, drop_caches)")
		return o, 1
	}
	return o, 0
}

// trapSignals cleans up (mounts, servers, directories) and exits on the
// first SIGINT or SIGTERM, at once on the second.
func trapSignals() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		aborting.Store(true)
		fmt.Fprintf(os.Stderr, "\nbench: %v: cleaning up (mounts, servers, directories); a second signal exits at once\n", s)
		go func() { <-sigs; os.Exit(131) }()
		cleanupAll()
		close(abortDone)
		os.Exit(130)
	}()
}

func run() int {
	var b bench
	o, code := parseFlags(&b)
	if code != 0 {
		return code
	}
	mod, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if o.jsonPath == "" {
		o.jsonPath = filepath.Join(mod, "bench", "results.json")
	}
	if o.logPath == "" {
		o.logPath = filepath.Join(os.TempDir(), fmt.Sprintf("combinefs-bench-%d.log", os.Getpid()))
	}
	logf, err := os.OpenFile(o.logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer logf.Close()
	var logw io.Writer = logf
	if b.verbose {
		logw = io.MultiWriter(logf, os.Stderr)
	}
	root := newRootTB("bench", logw)
	registerActive(root)
	trapSignals()

	started := time.Now()
	status := 0
	err = root.run("main", func(t *benchTB) { b.main(t, mod, o.workdir) })
	if aborting.Load() {
		<-abortDone // the signal handler cleans up and exits
		select {}
	}
	root.runCleanups()
	if err != nil {
		b.notes = append(b.notes, "setup failed: "+firstLine(err.Error()))
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		status = 1
	}
	b.res.ElapsedSec = time.Since(started).Seconds()
	b.res.Figures = b.figs
	b.res.Notes = b.notes
	b.printTable(os.Stdout)
	if err := writeResults(o.jsonPath, &b.res); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		status = 1
	} else {
		fmt.Printf("\nresults: %s  (log: %s; run took %s)\n", o.jsonPath, o.logPath, time.Since(started).Round(time.Second))
	}
	for _, f := range b.figs {
		if f.Error != "" {
			status = 1
		}
	}
	if left := leftMounts(b.e, b.dir); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "bench: mounts left behind: %v\n", left)
		status = 1
	}
	return status
}

// want reports whether figure group name runs; -only s3 names both S3
// groups (s3read: mount time and cold read; s3capture).
func (b *bench) want(name string) bool {
	return b.only == nil || b.only[name] || (b.only["s3"] && (name == "s3read" || name == "s3capture"))
}

// progressf says what the benchmark is doing, on stderr and in the log.
func (b *bench) progressf(t *benchTB, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !b.verbose {
		fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), msg)
	}
	t.Logf("%s", msg)
}

func (b *bench) main(t *benchTB, mod, workdir string) {
	b.progressf(t, "provisioning PostgreSQL %s", cmp.Or(os.Getenv("PG_MAJOR"), "17"))
	b.e = integration.Provision(t)
	b.canDrop = os.WriteFile("/proc/sys/vm/drop_caches", []byte("1\n"), 0) == nil
	if !b.canDrop {
		b.notes = append(b.notes, "drop_caches is not permitted here: the \"cold\" figures ran with whatever the page cache held (sync only)")
	}
	b.res.Machine = machineInfo(b.e)
	b.res.Settings = map[string]any{"scale": b.scale, "runs": b.runs, "load_seconds": b.loadSec,
		"tps_seconds": b.tpsSec, "tps_clients": b.tpsClients, "tps_warm_seconds": b.tpsWarm, "drop_caches": b.canDrop}
	b.res.Started = time.Now().UTC().Format(time.RFC3339)
	b.installBinary(t, mod)
	b.res.Combinefs = b.version
	out, _ := b.e.Command(context.Background(), false, b.e.Tool("postgres"), "--version").CombinedOutput()
	b.res.PostgreSQL = strings.TrimSpace(string(out))

	b.setupChain(t, workdir)
	b.res.Sizes = b.sizes(t)
	b.refPointDir(t)
	b.progressf(t, "chain ready: %s", b.res.Sizes.describe())

	for _, f := range []struct {
		name string
		fn   func(t *benchTB)
	}{
		{"capture", b.figCapture}, {"flatten", b.figFlatten}, {"mount", b.figMount},
		{"read", b.figRead}, {"cachedir", b.figCacheDir}, {"ttfq", b.figTTFQ}, {"tps", b.figTPS},
		{"compact", b.figCompact}, {"compact", b.figS3Compact}, {"pitr", b.figPITR}, {"wallag", b.figWALLag}, {"exec", b.figExec}, {"hydrate", b.figHydrate}, {"wbpt", b.figWBPT},
		{"bigmem", b.figBigMem}, {"s3read", b.figS3}, {"s3capture", b.figS3Capture}, {"s3client", b.figS3Client},
	} {
		if !b.want(f.name) {
			continue
		}
		// A failure outside the timed runs (which compare reports in the
		// figure itself) ends this group only.
		if err := t.run(f.name, f.fn); err != nil {
			b.add(t, &Figure{ID: f.name, Name: f.name, Error: firstLine(err.Error())})
		}
	}
}

// add records figures (nil ones are skipped) and prints a progress line.
func (b *bench) add(t *benchTB, figs ...*Figure) {
	for _, f := range figs {
		if f == nil {
			continue
		}
		b.figs = append(b.figs, f)
		if f.Error != "" {
			b.progressf(t, "%s: FAILED: %s", f.Name, f.Error)
			continue
		}
		if f.Unsupported {
			b.progressf(t, "%s: %s", f.Name, f.Note)
			continue
		}
		line := fmt.Sprintf("%s: ours %s", f.Name, fmtVal(f.Ours, f.Unit))
		if f.Ref != nil {
			line += fmt.Sprintf(", reference %s, ratio %s", fmtVal(*f.Ref, f.Unit), fmtRatio(f.Ratio))
		}
		line += fmt.Sprintf(", A/A %s (%.0f s)", fmtRatio(f.AA), f.ElapsedSec)
		b.progressf(t, "%s", line)
	}
}

// installBinary builds combinefs from this tree into a directory of its own
// in the root, so that tests of this tree running at the same time (which
// install theirs in a directory per source tree) cannot swap it under the
// benchmark.
func (b *bench) installBinary(t *benchTB, mod string) {
	dir := fmt.Sprintf("/usr/local/lib/combinefs-bench/%d", os.Getpid())
	b.bin = dir + "/combinefs"
	host := b.e.Host(b.bin)
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(b.e.Host(dir))
		os.Remove(filepath.Dir(b.e.Host(dir))) // if no other run uses it
	})
	if b.binSrc != "" {
		if err := copyFile(b.binSrc, host); err != nil {
			t.Fatalf("-bin: %v", err)
		}
		out, err := exec.Command(b.binSrc, "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", b.binSrc, err, out)
		}
		b.version = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "combinefs")) + " (-bin " + b.binSrc + ")"
		t.Logf("combinefs %s installed at %s", b.version, host)
		return
	}
	desc, err := exec.Command("git", "-C", mod, "describe", "--always", "--dirty").Output()
	b.version = strings.TrimSpace(string(desc))
	if err != nil || b.version == "" {
		b.version = "dev"
	}
	// What the binary is built from besides the commit: others' edits in
	// progress show here (bench/ and BENCHMARKS.md do not change it).
	if st, err := exec.Command("git", "-C", mod, "status", "--porcelain").Output(); err == nil {
		for _, l := range strings.Split(strings.TrimRight(string(st), "\n"), "\n") {
			if l == "" {
				continue
			}
			p := strings.TrimSpace(l[2:])
			if p == "bench/" || strings.HasPrefix(p, "bench/") || p == "BENCHMARKS.md" {
				continue
			}
			b.res.TreeChanges = append(b.res.TreeChanges, l)
		}
	}
	if n := len(b.res.TreeChanges); n > 0 {
		b.version += fmt.Sprintf(" + %d uncommitted paths (see tree_changes)", n)
	}
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+strings.Fields(b.version)[0], "-o", host, "./cmd/combinefs")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building combinefs: %v\n%s", err, out)
	}
	t.Logf("combinefs %s installed at %s", b.version, host)
}

// runCmd runs a prepared command, failing with its output; it returns the
// wall time and the peak RSS (kB) of the process and its descendants (see
// peakRSS).
func runCmd(t *benchTB, cmd *exec.Cmd) (time.Duration, int64) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Start()
	var rss int64
	if err == nil {
		stop := make(chan struct{})
		polled := make(chan int64)
		go func() { polled <- peakRSS(cmd.Process.Pid, stop) }()
		err = cmd.Wait()
		close(stop)
		rss = <-polled
	}
	d := time.Since(t0)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, lastN(out.String(), 3000))
	}
	return d, rss
}

// peakRSS polls a process every 5 ms until stop is closed, and returns the
// largest of its VmHWM and of the summed VmRSS of it and its descendants
// (pg_basebackup streams WAL from a forked child), in kB.
//
// ru_maxrss from wait4 would be wrong here: Go starts children with
// vfork semantics, and at exec Linux folds the parent's high-water RSS (this
// benchmark's) into the child's maxrss. Readings taken before the exec (the
// process still shows this program's name) are skipped for the same reason.
func peakRSS(pid int, stop <-chan struct{}) int64 {
	self := procField(os.Getpid(), "Name:")
	var peak int64
	for {
		if name := procField(pid, "Name:"); name != "" && name != self {
			hwm, _ := strconv.ParseInt(strings.Fields(procField(pid, "VmHWM:") + " 0")[0], 10, 64)
			peak = max(peak, hwm, treeRSS(pid))
		}
		select {
		case <-stop:
			return peak
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// treeRSS sums VmRSS (kB) over pid and its descendants.
func treeRSS(pid int) int64 {
	rss, _ := strconv.ParseInt(strings.Fields(procField(pid, "VmRSS:") + " 0")[0], 10, 64)
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, c := range strings.Fields(string(data)) {
			if cp, err := strconv.Atoi(c); err == nil {
				rss += treeRSS(cp)
			}
		}
	}
	return rss
}

// procField returns the value of one line of /proc/PID/status ("" if the
// process or the line is gone); for "VmHWM:" it is e.g. "12345 kB".
func procField(pid int, key string) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// cfs prepares combinefs (the binary under test) in the root, as root for
// mounts or as the server user.
func (b *bench) cfs(asRoot bool, args ...string) *exec.Cmd {
	return b.e.Command(context.Background(), asRoot, b.bin, args...)
}

func (b *bench) pgTool(name string, args ...string) *exec.Cmd {
	return b.e.Command(context.Background(), false, b.e.Tool(name), args...)
}

// rm removes an in-root path.
func (b *bench) rm(t *benchTB, p string) {
	if err := os.RemoveAll(b.e.Host(p)); err != nil {
		t.Fatalf("removing %s: %v", p, err)
	}
}

// moduleRoot finds the directory holding combinefs's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	re := regexp.MustCompile(`(?m)^module\s+github\.com/combinefs/combinefs\s*$`)
	for d := dir; ; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && re.Match(data) {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", errors.New("run the benchmark inside the combinefs module (make bench)")
		}
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

func lastN(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Results is what results.json holds.
type Results struct {
	Started       string  `json:"started"`
	ElapsedSec    float64 `json:"elapsed_s"`
	ChainBuildSec float64 `json:"chain_build_s,omitempty"`
	Combinefs     string  `json:"combinefs"`
	// TreeChanges: uncommitted changes the binary was built with (git
	// status --porcelain), other than the benchmark's own files.
	TreeChanges []string       `json:"tree_changes,omitempty"`
	PostgreSQL  string         `json:"postgresql"`
	Machine     Machine        `json:"machine"`
	Settings    map[string]any `json:"settings"`
	Sizes       Sizes          `json:"sizes"`
	Figures     []*Figure      `json:"figures"`
	Notes       []string       `json:"notes,omitempty"`
}

func writeResults(path string, r *Results) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
