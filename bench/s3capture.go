package main

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/repo"
)

// rssS3Target: a capture to S3 buffers at most repo.S3MemoryBudget; the
// rest of its memory (the Go runtime, the SDK, the manifest) is bounded at
// 64 MiB more, whatever the database's size.
const (
	rssS3LimitMiB = repo.S3MemoryBudget>>20 + 64
	rssS3Target   = "bounded by its settings: <= 64 MiB upload budget (4 parts of 16 MiB) + 64 MiB"
)

// 13. capture to S3 (SeaweedFS on loopback, the same machine) against
// capture to a local repository, of the chain's source server, full
// backups: the same stream from the server, written as objects instead of
// files. Each run writes under a fresh prefix (or a fresh directory),
// removed untimed afterwards. The figure's RSS is the S3 capture's.
func (b *bench) figS3Capture(t *benchTB) {
	dir := b.scratchDir(t, "s3capture")
	// Volumes of 1 GiB, 48 at most; each run's bucket is deleted after it,
	// which frees its volumes (a SeaweedFS bucket is a collection).
	srv := s3test.StartWith(t, s3test.Options{VolumeSizeLimitMB: 1024, VolumeMax: 48})
	port := strconv.Itoa(b.src.Port)
	mk := func(ours bool) *variant {
		var where, bucket string
		return &variant{
			setup: func(t *benchTB, run int) {
				n := b.seq()
				if ours {
					bucket = srv.NewBucket(t)
					where = fmt.Sprintf("s3://%s/run-%d", bucket, n)
				} else {
					where = path.Join(dir, fmt.Sprintf("repo-%d", n))
				}
			},
			timed: func(t *benchTB, run int) sample {
				cmd := b.cfs(false, "capture", "--repo", where, "--full", "-c", "fast", "--progress=false",
					"-h", "127.0.0.1", "-p", port, "-U", b.e.User)
				cmd.Env = append(cmd.Env, srv.Env()...)
				cpu := srv.CPUTime()
				d, rss := runCmd(t, cmd)
				// The store's CPU: on this machine SeaweedFS shares the
				// CPUs with the server and the capture.
				return sample{v: d.Seconds(), rssKB: rss, parts: map[string]float64{"store_cpu_s": (srv.CPUTime() - cpu).Seconds()}}
			},
			teardown: func(t *benchTB, run int) {
				if ours {
					dropBucket(t, srv, bucket)
				} else {
					b.rm(t, where)
				}
			},
		}
	}
	b.progressf(t, "capture to S3 vs capture to a local repository (%d runs each, plus A/A)", b.runs)
	spec := figSpec{id: "s3-capture", name: "capture full to S3 (time)", unit: "s", cold: true, warmup: true,
		target: "capture to S3 on loopback at >= 0.8x capture to a local repository", targetMet: ratioAtLeast(0.8)}
	rss := &figSpec{id: "rss-s3-capture", name: "capture full to S3: peak RSS", target: rssS3Target}
	fig, rfig := b.compare(t, spec, mk(true), mk(false), rss)
	if rfig != nil && len(rfig.OursRuns) > 0 {
		// Every run within the bound, not only the median.
		rfig.TargetMet = ptr(slices.Max(rfig.OursRuns) <= rssS3LimitMiB)
		rfig.Note = fmt.Sprintf("largest of the S3 runs: %.0f MiB; the reference is the local capture's", slices.Max(rfig.OursRuns))
	}
	if cpu, ok := fig.Parts["ours.store_cpu_s"]; ok {
		fig.Note = fmt.Sprintf("SeaweedFS, on the same CPUs, used %.1f CPU-seconds per S3 run (median)", cpu)
	}
	fig.OursLabel = "combinefs capture --repo s3://BUCKET/PREFIX --full -c fast (SeaweedFS on loopback)"
	fig.RefLabel = "combinefs capture --repo DIR --full -c fast"
	b.add(t, fig, rfig)
}

// dropBucket deletes every object of the bucket, then the bucket.
func dropBucket(t *benchTB, srv *s3test.Server, bucket string) {
	ctx := context.Background()
	st := &repo.S3{Client: srv.Client(), Bucket: bucket}
	objs, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	g.SetLimit(16)
	start := time.Now()
	for _, o := range objs {
		g.Go(func() error { return st.Delete(ctx, o.Name) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client().DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted %d objects and bucket %s in %s", len(objs), bucket, time.Since(start).Round(time.Millisecond))
}
