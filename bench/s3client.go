package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	miniocreds "github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/errgroup"

	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/repo"
)

// The s3client figures are how the S3 client library was chosen: the
// client repo.S3 uses (aws-sdk-go-v2, with our own multipart upload over
// CreateMultipartUpload/UploadPart, whose memory budget is per store)
// against minio-go v7, the other well-kept Go client, on the same server,
// the same object sizes and the same parallelism.

const (
	s3ClientObject = 512 << 20 // the object the download figure reads
	s3ClientUpload = 256 << 20 // each upload of the upload figure
	s3ClientPart   = 16 << 20  // multipart part size, as capture's
	s3ClientJobs   = 4         // parts in flight, as capture's 64 MiB budget
)

// s3Clients is the server, a bucket and both clients on it.
type s3Clients struct {
	srv    *s3test.Server
	bucket string
	ours   *repo.S3
	minio  *minio.Client
	data   []byte // s3ClientUpload random bytes, uploaded by every run
}

func (b *bench) s3ClientSetup(t *benchTB) *s3Clients {
	ctx := context.Background()
	srv := s3test.Start(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // for repo.S3's credential chain
	}
	c := &s3Clients{srv: srv, bucket: srv.NewBucket(t), data: make([]byte, s3ClientUpload)}
	rand.Read(c.data)
	var err error
	if c.ours, err = repo.NewS3(ctx, c.bucket, "", repo.S3Options{Endpoint: srv.Endpoint}); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if c.minio, err = minio.New(u.Host, &minio.Options{
		Creds: miniocreds.NewStaticV4(s3test.AccessKey, s3test.SecretKey, ""), BucketLookup: minio.BucketLookupPath,
	}); err != nil {
		t.Fatal(err)
	}
	w, err := c.ours.Create(ctx, "blob")
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < s3ClientObject; off += len(c.data) {
		if _, err := w.Write(c.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return c
}

// figS3Client compares the two clients: a download of one object in 8 MiB
// ranged GETs, 16 at a time (the s3 read figure's reference), and uploads of
// a 256 MiB object in 16 MiB parts, 4 at a time (capture's settings).
func (b *bench) figS3Client(t *benchTB) {
	c := b.s3ClientSetup(t)
	ctx := context.Background()
	rate := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	get := func(read func(off, n int64) (int64, error)) sample {
		var total atomic.Int64
		start := time.Now()
		var g errgroup.Group
		g.SetLimit(s3DownloadJobs)
		for off := int64(0); off < s3ClientObject; off += s3DownloadChunk {
			g.Go(func() error {
				n, err := read(off, s3DownloadChunk)
				total.Add(n)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		return sample{v: rate(total.Load(), time.Since(start))}
	}
	aws := &variant{timed: func(t *benchTB, run int) sample {
		return get(func(off, n int64) (int64, error) {
			data, err := c.ours.ReadRange(ctx, "blob", off, n)
			return int64(len(data)), err
		})
	}}
	mio := &variant{timed: func(t *benchTB, run int) sample {
		return get(func(off, n int64) (int64, error) {
			o := minio.GetObjectOptions{}
			if err := o.SetRange(off, off+n-1); err != nil {
				return 0, err
			}
			obj, err := c.minio.GetObject(ctx, c.bucket, "blob", o)
			if err != nil {
				return 0, err
			}
			defer obj.Close()
			return io.Copy(io.Discard, obj)
		})
	}}
	b.progressf(t, "S3 clients: ranged GETs, aws-sdk-go-v2 vs minio-go")
	dl, _ := b.compare(t, figSpec{id: "s3client-get", name: "S3 client: 512 MiB in 8 MiB ranged GETs, 16 at a time (throughput)", unit: "MiB/s", higher: true}, aws, mio, nil)
	dl.OursLabel, dl.RefLabel = "aws-sdk-go-v2 through repo.S3.ReadRange", "minio-go v7 GetObject with a range"
	dl.Note = "the choice of client, not a target: ratio > 1 means the client combinefs uses is faster"
	b.add(t, dl)

	seq := 0
	name := func() string { seq++; return fmt.Sprintf("up-%d", seq) }
	drop := func(t *benchTB, run int) { c.ours.Delete(ctx, fmt.Sprintf("up-%d", seq)) } // keep the server's disk small
	awsPut := &variant{timed: func(t *benchTB, run int) sample {
		start := time.Now()
		w, err := c.ours.Create(ctx, name())
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(c.data); off += 1 << 20 { // as the extractor writes
			if _, err := w.Write(c.data[off : off+1<<20]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		return sample{v: rate(int64(len(c.data)), time.Since(start))}
	}, teardown: drop}
	minioPut := &variant{timed: func(t *benchTB, run int) sample {
		start := time.Now()
		if _, err := c.minio.PutObject(ctx, c.bucket, name(), bytes.NewReader(c.data), int64(len(c.data)),
			minio.PutObjectOptions{PartSize: s3ClientPart, NumThreads: s3ClientJobs}); err != nil {
			t.Fatal(err)
		}
		return sample{v: rate(int64(len(c.data)), time.Since(start))}
	}, teardown: drop}
	b.progressf(t, "S3 clients: multipart upload, aws-sdk-go-v2 vs minio-go")
	up, _ := b.compare(t, figSpec{id: "s3client-put", name: "S3 client: 256 MiB multipart upload, 16 MiB parts, 4 at a time (throughput)", unit: "MiB/s", higher: true}, awsPut, minioPut, nil)
	up.OursLabel = "aws-sdk-go-v2 through repo.S3.Create (our multipart, 64 MiB budget per store)"
	up.RefLabel = "minio-go v7 PutObject, PartSize 16 MiB, NumThreads 4"
	up.Note = "the choice of client, not a target: ratio > 1 means the client combinefs uses is faster"
	b.add(t, up)
}
