package repo

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/semaphore"
)

// Streamed uploads. An object written through S3.Create goes up as one PUT
// when it fits in one part, else as a multipart upload whose parts are
// sent while the next one fills. Every buffer comes out of one memory
// budget per S3 (S3PartSize × S3PartsInFlight), so a capture's memory is
// bounded by these settings whatever the database's size: a writer whose
// next part does not fit waits for a part in flight to finish. This is the
// transfer manager's scheme, written over CreateMultipartUpload because
// the manager reads from an io.Reader and would need a pipe and a
// goroutine per file, and its memory is per upload, not per store.
const (
	// S3PartSize is the size of a multipart upload's parts, and the
	// largest object sent as one PUT.
	S3PartSize = 16 << 20
	// S3PartsInFlight is how many part-sized buffers the budget holds.
	S3PartsInFlight = 4
	// S3MemoryBudget bounds the bytes buffered by all of an S3's writers.
	S3MemoryBudget = S3PartSize * S3PartsInFlight
	// firstBuf is a writer's first buffer; it doubles up to S3PartSize.
	firstBuf = 256 << 10
)

// partPool recycles part-sized buffers, which would otherwise be garbage
// the collector frees late, growing the process past its budget.
var partPool = sync.Pool{New: func() any { return make([]byte, 0, S3PartSize) }}

// budget is the store's memory budget, made on first use.
func (s *S3) budget() *semaphore.Weighted {
	s.memOnce.Do(func() { s.mem = semaphore.NewWeighted(S3MemoryBudget) })
	return s.mem
}

// Create starts a streamed upload of name.
func (s *S3) Create(ctx context.Context, name string) (Writer, error) {
	return &s3Writer{s: s, ctx: ctx, name: name, key: s.Prefix + name}, nil
}

// s3Writer is S3's Writer.
type s3Writer struct {
	s         *S3
	ctx       context.Context
	name, key string
	buf       []byte
	held      int64 // bytes of the budget buf holds
	uploadID  string
	done      bool

	wg    sync.WaitGroup
	mu    sync.Mutex // guards parts and err, set by the part goroutines
	parts []types.CompletedPart
	err   error
}

func (w *s3Writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *s3Writer) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if err := w.failed(); err != nil {
			return n, err
		}
		if len(w.buf) == S3PartSize {
			// Only sent once more data comes, so that an object of
			// exactly one part (a WAL segment) is one PUT.
			if err := w.sendPart(); err != nil {
				return n, err
			}
		}
		if len(w.buf) == cap(w.buf) {
			if err := w.grow(len(p)); err != nil {
				return n, err
			}
		}
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p, n = p[k:], n+k
	}
	return n, nil
}

// grow makes room for want more bytes, within the budget. Once a
// multipart upload has begun every part is whole, so its buffer is taken
// at part size at once rather than doubled up to it (copying 15 MiB and
// leaving 15 MiB of garbage per part).
func (w *s3Writer) grow(want int) error {
	c := min(max(2*cap(w.buf), firstBuf, len(w.buf)+want), S3PartSize)
	if w.uploadID != "" {
		c = S3PartSize
	}
	if err := w.s.budget().Acquire(w.ctx, int64(c)-w.held); err != nil {
		return err
	}
	w.held = int64(c)
	var nb []byte
	if c == S3PartSize {
		nb = partPool.Get().([]byte)[:0]
	} else {
		nb = make([]byte, 0, c)
	}
	w.buf = append(nb, w.buf...)
	return nil
}

// release gives a buffer back to the pool and its bytes to the budget.
func (w *s3Writer) release(buf []byte, held int64) {
	if cap(buf) == S3PartSize {
		partPool.Put(buf[:0]) //nolint:staticcheck // a slice header is fine here
	}
	if held > 0 {
		w.s.budget().Release(held)
	}
}

// sendPart uploads the buffer as the next part, on a goroutine of its own.
// The part's integrity is its CRC32C, which the store checks: its body is
// not hashed a second time with SHA-256 for the signature (on plain HTTP
// the SDK would, in a pass of its own before sending).
func (w *s3Writer) sendPart() error {
	if w.uploadID == "" {
		res, err := w.s.Client.CreateMultipartUpload(w.ctx, &s3.CreateMultipartUploadInput{
			Bucket:            aws.String(w.s.Bucket),
			Key:               aws.String(w.key),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
		})
		if err != nil {
			return w.s.err("upload", w.name, err)
		}
		w.uploadID = aws.ToString(res.UploadId)
	}
	buf, held := w.buf, w.held
	w.buf, w.held = nil, 0
	num := int32(len(w.parts) + 1)
	w.mu.Lock()
	w.parts = append(w.parts, types.CompletedPart{PartNumber: aws.Int32(num)})
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer w.release(buf, held)
		res, err := w.s.Client.UploadPart(w.ctx, &s3.UploadPartInput{
			Bucket:            aws.String(w.s.Bucket),
			Key:               aws.String(w.key),
			UploadId:          aws.String(w.uploadID),
			PartNumber:        aws.Int32(num),
			Body:              bytes.NewReader(buf),
			ContentLength:     aws.Int64(int64(len(buf))),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
		}, s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware))
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			if w.err == nil {
				w.err = w.s.err("upload", w.name, err)
			}
			return
		}
		p := &w.parts[num-1]
		p.ETag, p.ChecksumCRC32C = res.ETag, res.ChecksumCRC32C
	}()
	return nil
}

// Commit sends what is buffered: the whole object in one conditional PUT,
// or the last part and then the upload's completion.
func (w *s3Writer) Commit() error {
	if w.done {
		return fmt.Errorf("commit of a finished object %s", w.name)
	}
	if w.uploadID == "" {
		w.done = true
		err := w.s.Put(w.ctx, w.name, w.buf)
		w.release(w.buf, w.held)
		w.buf, w.held = nil, 0
		return err
	}
	if len(w.buf) > 0 {
		if err := w.sendPart(); err != nil {
			w.Abort()
			return err
		}
	}
	w.wg.Wait()
	if err := w.failed(); err != nil {
		w.Abort()
		return err
	}
	w.done = true
	_, err := w.s.Client.CompleteMultipartUpload(w.ctx, &s3.CompleteMultipartUploadInput{
		Bucket:          aws.String(w.s.Bucket),
		Key:             aws.String(w.key),
		UploadId:        aws.String(w.uploadID),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: w.parts},
	})
	if err != nil {
		w.abortUpload()
		return w.s.err("upload", w.name, err)
	}
	return nil
}

// Abort waits for the parts in flight and aborts the multipart upload.
func (w *s3Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.wg.Wait()
	w.release(w.buf, w.held)
	w.buf, w.held = nil, 0
	w.abortUpload()
}

func (w *s3Writer) abortUpload() {
	if w.uploadID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 30*time.Second)
	defer cancel()
	w.s.Client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket:   aws.String(w.s.Bucket),
		Key:      aws.String(w.key),
		UploadId: aws.String(w.uploadID),
	})
}

// AbortUploads aborts the incomplete multipart uploads under the
// repository's prefix whose names drop says to: what a killed writer left,
// invisible to List but stored (and billed) until aborted.
func (s *S3) AbortUploads(ctx context.Context, drop func(name string) bool) error {
	p := s3.NewListMultipartUploadsPaginator(s.Client, &s3.ListMultipartUploadsInput{
		Bucket: aws.String(s.Bucket),
		Prefix: aws.String(s.Prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.err("list uploads", "", err)
		}
		for _, u := range page.Uploads {
			name := strings.TrimPrefix(aws.ToString(u.Key), s.Prefix)
			if !drop(name) {
				continue
			}
			_, err := s.Client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
				Bucket:   aws.String(s.Bucket),
				Key:      u.Key,
				UploadId: u.UploadId,
			})
			if err != nil && code(err) != "NoSuchUpload" {
				return s.err("abort upload", name, err)
			}
		}
	}
	return nil
}
