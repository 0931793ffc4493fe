package main

import (
	"context"
	"fmt"
	"path"
	"time"

	"github.com/combinefs/combinefs/repo"
)

// compactPoints are the repository names the chain's backups get for the
// compact figure: a full and two incrementals, an hour apart.
var compactPoints = []string{"2025-01-01_000000-FULL", "2025-01-01_010000-INCREMENTAL", "2025-01-01_020000-INCREMENTAL"}

// 7. compact of the 3-point chain vs flatten of the same chain: compaction
// is a flatten (--copy, as compact writes) into the repository plus its
// bookkeeping (verify of the new point against its manifest, journal,
// renames, removal of the replaced points). Each run gets a fresh
// repository whose points are hard-linked copies of the chain (untimed), so
// the removal of the replaced points costs what it costs on real backups:
// unlinking their files.
func (b *bench) figCompact(t *benchTB) {
	dir := b.scratchDir(t, "compact")
	mk := func(ours bool) *variant {
		var repo, out string
		return &variant{
			setup: func(t *benchTB, run int) {
				n := b.seq()
				repo, out = path.Join(dir, fmt.Sprintf("repo-%d", n)), path.Join(dir, fmt.Sprintf("flat-%d", n))
				if !ours {
					return
				}
				b.e.MkdirAll(t, repo)
				for i, src := range b.chain {
					runCmd(t, b.e.Command(context.Background(), false, "cp", "-al", src, path.Join(repo, compactPoints[i])))
				}
			},
			timed: func(t *benchTB, run int) sample {
				var d time.Duration
				var rss int64
				if ours {
					d, rss = runCmd(t, b.cfs(false, "compact", "--repo", repo, "--point", compactPoints[len(b.chain)-1], "--progress=false"))
				} else {
					d, rss = runCmd(t, b.cfs(false, append([]string{"flatten", "--copy", "-o", out}, b.chain...)...))
				}
				return sample{v: d.Seconds(), rssKB: rss}
			},
			teardown: func(t *benchTB, run int) { b.rm(t, repo); b.rm(t, out) },
		}
	}
	b.progressf(t, "compact vs flatten of the same %d-point chain (%d runs each, plus A/A)", len(b.chain), b.runs)
	spec := figSpec{id: "compact", name: "compact of the chain (time)", unit: "s", cold: true, warmup: true,
		target: "compaction is a flatten plus bookkeeping: ratio >= 0.9", targetMet: ratioAtLeast(0.9)}
	fig, rfig := b.compare(t, spec, mk(true), mk(false), nil)
	fig.OursLabel = "combinefs compact --repo REPO --point INC2 (FULL, INC1, INC2 hard-linked into REPO)"
	fig.RefLabel = "combinefs flatten --copy -o DIR FULL INC1 INC2"
	b.add(t, fig, rfig)
}

// 7b. compact on a bucket vs flatten from the same bucket: a compaction on
// S3 is a flatten from the bucket into a local staging directory, its
// verification, and the upload of the new point (then the deletion of the
// replaced points' objects). Each run compacts a fresh copy of the chain
// under a prefix of its own (copied untimed).
func (b *bench) figS3Compact(t *benchTB) {
	fx := b.s3Setup(t)
	bucket, _, _, _ := repo.ParseS3URL(fx.url)
	dir := b.scratchDir(t, "s3compact")
	last := fx.names[len(fx.names)-1]
	mk := func(ours bool) *variant {
		var url, out string
		var st *repo.S3
		return &variant{
			setup: func(t *benchTB, run int) {
				n := b.seq()
				url, out = fmt.Sprintf("s3://%s/compact-%d", bucket, n), path.Join(dir, fmt.Sprintf("flat-%d", n))
				if !ours {
					return
				}
				var err error
				if st, err = repo.NewS3(context.Background(), bucket, fmt.Sprintf("compact-%d/", n), repo.S3Options{Endpoint: fx.srv.Endpoint}); err != nil {
					t.Fatal(err)
				}
				for i, src := range b.chain {
					if err := repo.CopyPoint(context.Background(), st, b.e.Host(src), fx.names[i], true); err != nil {
						t.Fatal(err)
					}
				}
			},
			timed: func(t *benchTB, run int) sample {
				var d time.Duration
				var rss int64
				if ours {
					d, rss = runCmd(t, fx.cfs(b, "compact", "--repo", url, "--point", last, "--tmp-dir", dir, "--progress=false"))
				} else {
					d, rss = runCmd(t, fx.cfs(b, "flatten", "-o", out, "--repo", fx.url, "--point", last))
				}
				return sample{v: d.Seconds(), rssKB: rss}
			},
			teardown: func(t *benchTB, run int) {
				b.rm(t, out)
				if st == nil {
					return
				}
				objs, err := st.List(context.Background(), "")
				if err != nil {
					t.Fatal(err)
				}
				for _, o := range objs {
					if err := st.Delete(context.Background(), o.Name); err != nil {
						t.Fatal(err)
					}
				}
			},
		}
	}
	b.progressf(t, "compact on S3 vs flatten from S3 of the same %d-point chain (%d runs each, plus A/A)", len(b.chain), b.runs)
	spec := figSpec{id: "s3-compact", name: "compact on S3 (time)", unit: "s", cold: true,
		target: "none: a compaction on S3 is a flatten from the bucket plus a verify and an upload of the new point"}
	fig, rfig := b.compare(t, spec, mk(true), mk(false), nil)
	fig.OursLabel = "combinefs compact --repo s3://... --point INC2 --tmp-dir DIR (SeaweedFS on loopback)"
	fig.RefLabel = "combinefs flatten -o DIR --repo s3://... --point INC2"
	b.add(t, fig, rfig)
}
