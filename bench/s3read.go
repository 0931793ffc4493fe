package main

import (
	"context"
	"fmt"
	"os/exec"
	"path"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/repo"
)

// The s3 figure group reads the chain from a real S3 server on loopback
// (SeaweedFS, started for the group): the chain's backups are copied into
// a bucket as a repository (each point's objects, then its marker), and
// pg_combinebackup's output of the last point beside it as plain objects.

// s3Fixture is the bucket the s3 figures read.
type s3Fixture struct {
	srv   *s3test.Server
	url   string        // s3://BUCKET/bench: the repository
	names []string      // its points, oldest first
	flat  *repo.S3      // s3://BUCKET/flat/: the flattened point's objects
	files []repo.Object // its non-empty objects, listed once at setup
	bytes int64
}

// s3Setup starts the server and fills the bucket (untimed).
func (b *bench) s3Setup(t *benchTB) *s3Fixture {
	ctx := context.Background()
	srv := s3test.Start(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // for this process's own client
	}
	bucket := srv.NewBucket(t)
	fx := &s3Fixture{srv: srv, url: "s3://" + bucket + "/bench"}
	st, err := repo.NewS3(ctx, bucket, "bench/", repo.S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	b.progressf(t, "copying the chain into %s (untimed)", fx.url)
	for i, d := range b.chain {
		kind := repo.KindIncremental
		if i == 0 {
			kind = repo.KindFull
		}
		name := repo.PointName(kind, t0.Add(time.Duration(i)*time.Hour))
		if err := repo.CopyPoint(ctx, st, b.e.Host(d), name, true); err != nil {
			t.Fatalf("copying %s into %s: %v", d, fx.url, err)
		}
		fx.names = append(fx.names, name)
	}
	if fx.flat, err = repo.NewS3(ctx, bucket, "flat/", repo.S3Options{Endpoint: srv.Endpoint}); err != nil {
		t.Fatal(err)
	}
	b.progressf(t, "copying pg_combinebackup's output of the last point into s3://%s/flat (untimed)", bucket)
	if err := repo.CopyPoint(ctx, fx.flat, b.e.Host(b.refPointDir(t)), "point", false); err != nil {
		t.Fatal(err)
	}
	objs, err := fx.flat.List(ctx, "point/")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.Size > 0 {
			fx.files = append(fx.files, o)
			fx.bytes += o.Size
		}
	}
	return fx
}

// cfs is combinefs as root with the server's credentials and endpoint.
func (fx *s3Fixture) cfs(b *bench, args ...string) *exec.Cmd {
	cmd := b.cfs(true, append(args, "--s3-endpoint", fx.srv.Endpoint)...)
	cmd.Env = append(cmd.Env, fx.srv.Env()...)
	return cmd
}

// mount mounts the last point from the bucket at a fresh mount point.
func (fx *s3Fixture) mount(t *benchTB, b *bench, dir string) (*mnt, time.Duration) {
	mp := path.Join(dir, fmt.Sprintf("mnt-%d", b.seq()))
	b.e.MkdirAll(t, mp)
	d, _ := runCmd(t, fx.cfs(b, "mount", "--daemon", "--log", mp+".mount.log", "--repo", fx.url, "--point", fx.names[len(fx.names)-1], mp))
	return b.attach(t, mp), d
}

// download reads every object of the flattened point with the same client
// as the mount, s3DownloadJobs ranged GETs of s3DownloadChunk at a time,
// and returns the bytes read.
func (fx *s3Fixture) download(t *benchTB) (int64, time.Duration) {
	ctx := context.Background()
	var total atomic.Int64
	start := time.Now()
	var g errgroup.Group
	g.SetLimit(s3DownloadJobs)
	for _, o := range fx.files {
		for off := int64(0); off < o.Size; off += s3DownloadChunk {
			g.Go(func() error {
				data, err := fx.flat.ReadRange(ctx, o.Name, off, min(s3DownloadChunk, o.Size-off))
				total.Add(int64(len(data)))
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return total.Load(), time.Since(start)
}

const (
	s3DownloadJobs  = 16
	s3DownloadChunk = 8 << 20
)

// figS3 is the s3 group: mount time from the bucket against a mount of the
// local chain, and a cold sequential read of the point through a mount
// from the bucket against downloading the flattened point's objects, with
// the mount's peak RSS.
func (b *bench) figS3(t *benchTB) {
	fx := b.s3Setup(t)
	dir := b.scratchDir(t, "s3")

	var m *mnt
	fromS3 := &variant{
		timed: func(t *benchTB, run int) sample {
			var d time.Duration
			m, d = fx.mount(t, b, dir)
			return sample{v: d.Seconds()}
		},
		teardown: func(t *benchTB, run int) { m.umount(t) },
	}
	local := &variant{
		timed: func(t *benchTB, run int) sample {
			var d time.Duration
			m, d = b.mount(t, path.Join(dir, fmt.Sprintf("mnt-%d", b.seq())), "")
			return sample{v: d.Seconds()}
		},
		teardown: func(t *benchTB, run int) { m.umount(t) },
	}
	b.progressf(t, "mount --daemon from S3 vs of the local chain (time)")
	mt, _ := b.compare(t, figSpec{id: "s3-mount", name: "mount --daemon from S3, read-only (time)", unit: "s", cold: true,
		target: "the same within noise at scale 100 and 400"}, fromS3, local, nil)
	mt.OursLabel = "combinefs mount --daemon --repo s3://... --point LAST MP (SeaweedFS on loopback)"
	mt.RefLabel = "combinefs mount --daemon FULL INC1 INC2 MP (local disk)"
	mt.Note = fmt.Sprintf("scale %d; at mount time only listings, manifests, labels, control files and INCREMENTAL headers are fetched", b.scale)
	b.add(t, mt)

	rate := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	var before coldCounters
	cold := &variant{
		setup: func(t *benchTB, run int) {
			m, _ = fx.mount(t, b, dir)
			before = fx.coldCounters(t, m)
		},
		timed: func(t *benchTB, run int) sample {
			n, d := readFiles(t, b.e.Host(m.dir), b.pointFiles)
			after := fx.coldCounters(t, m)
			return sample{v: rate(n, d), rssKB: m.HWM(t), parts: after.parts(before, d)}
		},
		teardown: func(t *benchTB, run int) { m.umount(t) },
	}
	dl := &variant{timed: func(t *benchTB, run int) sample {
		cpu, store := selfCPU(), fx.srv.CPUTime()
		n, d := fx.download(t)
		return sample{v: rate(n, d), parts: map[string]float64{"client_cpu_s": (selfCPU() - cpu).Seconds(),
			"store_cpu_s": (fx.srv.CPUTime() - store).Seconds(), "gets": float64(fx.gets())}}
	}}
	b.progressf(t, "cold sequential read through a mount from S3 vs downloading the flattened point (%s in %d objects)", human(fx.bytes), len(fx.files))
	rd, rss := b.compare(t, figSpec{id: "s3-read-cold", name: "sequential read through a mount from S3, cold (throughput)", unit: "MiB/s", higher: true, cold: true,
		target: "at least 0.7x the download (ratio >= 0.7)", targetMet: ratioAtLeast(0.7)}, cold, dl,
		&figSpec{id: "rss-mount-s3", name: "mount daemon from S3 after reading the point: peak RSS"})
	rd.OursLabel = "read every file through a fresh read-only mount from S3, 1 MiB reads, one file at a time"
	rd.RefLabel = fmt.Sprintf("GET every object of pg_combinebackup's output in %d MiB ranges, %d at a time (the same aws-sdk-go-v2 client)", s3DownloadChunk>>20, s3DownloadJobs)
	if rd.Error == "" {
		rd.Note = coldNote(rd.Parts)
	}
	mountRSS(rss)
	b.add(t, rd, rss)
}

// mountRSS makes the peak RSS figure of a mount's cold reads (nil: none)
// a figure without a reference: the reading side is this process.
func mountRSS(rss *Figure) {
	if rss == nil {
		return
	}
	rss.Ref, rss.Ratio, rss.AA, rss.RefRuns, rss.AARuns = nil, nil, nil, nil, [2][]float64{}
	rss.Target = rssTarget
	rss.TargetMet = ptr(rss.Ours <= rssLimitMiB)
	rss.Note = "VmHWM of the mount process after each cold run; no reference"
}

// coldCounters are what a cold read through a mount from S3 is measured
// by besides its time: the mount's counters and the CPU time of the mount
// process, of this process (the reader) and of the store.
type coldCounters struct {
	st                   fusefs.Stats
	mount, reader, store time.Duration
}

func (fx *s3Fixture) coldCounters(t *benchTB, m *mnt) coldCounters {
	st := m.Stats(t)
	if st.Remote == nil {
		t.Fatalf("the mount at %s reports no remote counters", m.dir)
	}
	return coldCounters{st: st, mount: s3test.ProcCPU(m.pid), reader: selfCPU(), store: fx.srv.CPUTime()}
}

// parts are the cold read's breakdown since before: bytes fetched per
// byte served, the GETs (how many, their mean size, how many were in
// flight on average and at most), where the kernel's read requests waited,
// the read-ahead's dropped chunks, and each process's CPU.
func (c coldCounters) parts(before coldCounters, d time.Duration) map[string]float64 {
	r, r0 := c.st.Remote, before.st.Remote
	served := float64(c.st.BytesServed - before.st.BytesServed)
	gets := float64(r.Gets - r0.Gets)
	reads := float64(max(r.Reads-r0.Reads, 1))
	return map[string]float64{
		"bytes_from_s3_MiB":   float64(r.GetBytes-r0.GetBytes) / (1 << 20),
		"served_MiB":          served / (1 << 20),
		"fetched_per_served":  float64(r.GetBytes-r0.GetBytes) / max(served, 1),
		"gets":                gets,
		"get_mean_KiB":        float64(r.GetBytes-r0.GetBytes) / 1024 / max(gets, 1),
		"gets_in_flight_mean": (r.GetSeconds - r0.GetSeconds) / d.Seconds(),
		"gets_in_flight_peak": float64(r.PeakGets),
		"reads_fetching_pct":  100 * float64(r.ReadsFetched-r0.ReadsFetched) / reads,
		"reads_waiting_pct":   100 * float64(r.ReadsWaited-r0.ReadsWaited) / reads,
		"reads_wait_s":        r.WaitSeconds - r0.WaitSeconds,
		"read_ahead_dropped":  float64(r.AheadDropped - r0.AheadDropped),
		"mount_cpu_s":         (c.mount - before.mount).Seconds(),
		"reader_cpu_s":        (c.reader - before.reader).Seconds(),
		"store_cpu_s":         (c.store - before.store).Seconds(),
		"cache_evictions":     float64(c.st.Cache.Evictions - before.st.Cache.Evictions),
	}
}

// coldNote is the cold read figure's note from its median parts.
func coldNote(p map[string]float64) string {
	return fmt.Sprintf("per run (median): %.0f MiB fetched from S3 for %.0f MiB served (%.2f per byte) in %.0f GETs of %.0f KiB on average, %.1f in flight on average (peak %.0f); "+
		"%.0f%% of the kernel's read requests sent a GET, %.0f%% waited for one under way, %.1f s waiting in all; CPU: mount %.1f s, reader %.1f s, SeaweedFS %.1f s "+
		"(download: %.0f GETs, client %.1f s, SeaweedFS %.1f s)",
		p["ours.bytes_from_s3_MiB"], p["ours.served_MiB"], p["ours.fetched_per_served"], p["ours.gets"], p["ours.get_mean_KiB"],
		p["ours.gets_in_flight_mean"], p["ours.gets_in_flight_peak"], p["ours.reads_fetching_pct"], p["ours.reads_waiting_pct"], p["ours.reads_wait_s"],
		p["ours.mount_cpu_s"], p["ours.reader_cpu_s"], p["ours.store_cpu_s"], p["ref.gets"], p["ref.client_cpu_s"], p["ref.store_cpu_s"])
}

// gets is how many ranged GETs download sends.
func (fx *s3Fixture) gets() int {
	n := 0
	for _, o := range fx.files {
		n += int((o.Size + s3DownloadChunk - 1) / s3DownloadChunk)
	}
	return n
}

// selfCPU is the user and system CPU time of this process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
