package repo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/sync/semaphore"
)

// S3 is a Storage over a prefix of an S3 bucket, through aws-sdk-go-v2:
// it reads credentials, region and AWS_ENDPOINT_URL from the standard AWS
// environment and configuration chain (env, ~/.aws/config and credentials,
// SSO, web identity, instance roles) by itself, and its standard retryer
// retries throttling, 5xx and connection errors with jittered exponential
// backoff. minio-go would do the same requests but reimplements that chain
// only in part.
type S3 struct {
	Client *s3.Client
	Bucket string
	// Prefix is "" or ends in "/": the repository's root in the bucket.
	Prefix string

	memOnce sync.Once
	mem     *semaphore.Weighted // the writers' memory budget (s3write.go)

	counts requestCounts
	memo   smallMemo // small objects fetched once (remote.go)
}

// RequestCounts are the requests an S3 Storage sent, by kind (each call
// once, however often the SDK retried it), and the most that were in
// flight at once: what a mount's log and stats report of its start, and
// what tests assert it sends.
type RequestCounts struct {
	List, Get, Put, Delete, Other uint64
	// GetBytes is what the GETs returned.
	GetBytes uint64
	// MaxInFlight is the most requests that were under way together.
	MaxInFlight int64
}

// Total is the number of requests.
func (c RequestCounts) Total() uint64 { return c.List + c.Get + c.Put + c.Delete + c.Other }

// Sub is what was sent since the counts before were taken.
func (c RequestCounts) Sub(before RequestCounts) RequestCounts {
	return RequestCounts{List: c.List - before.List, Get: c.Get - before.Get, Put: c.Put - before.Put,
		Delete: c.Delete - before.Delete, Other: c.Other - before.Other, GetBytes: c.GetBytes - before.GetBytes,
		MaxInFlight: c.MaxInFlight}
}

func (c RequestCounts) String() string {
	return fmt.Sprintf("%d requests (%d LIST, %d GET of %d bytes, %d PUT, %d DELETE, %d other; at most %d at once)",
		c.Total(), c.List, c.Get, c.GetBytes, c.Put, c.Delete, c.Other, c.MaxInFlight)
}

type requestCounts struct {
	list, get, put, del, other, getBytes atomic.Uint64
	inFlight, maxInFlight                atomic.Int64
}

// Requests returns the requests sent so far.
func (s *S3) Requests() RequestCounts {
	c := &s.counts
	return RequestCounts{List: c.list.Load(), Get: c.get.Load(), Put: c.put.Load(), Delete: c.del.Load(),
		Other: c.other.Load(), GetBytes: c.getBytes.Load(), MaxInFlight: c.maxInFlight.Load()}
}

// ResetPeak starts MaxInFlight over from the requests under way now, so
// that the next Requests reports the peak of what follows.
func (s *S3) ResetPeak() { s.counts.maxInFlight.Store(s.counts.inFlight.Load()) }

// countRequests is the client's middleware that counts every operation
// (not each retry of it) and the requests in flight.
func (c *requestCounts) countRequests(stack *middleware.Stack) error {
	return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("combinefsCount",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			switch in.Parameters.(type) {
			case *s3.ListObjectsV2Input:
				c.list.Add(1)
			case *s3.GetObjectInput:
				c.get.Add(1)
			case *s3.PutObjectInput, *s3.UploadPartInput:
				c.put.Add(1)
			case *s3.DeleteObjectInput, *s3.DeleteObjectsInput:
				c.del.Add(1)
			default:
				c.other.Add(1)
			}
			n := c.inFlight.Add(1)
			for m := c.maxInFlight.Load(); n > m && !c.maxInFlight.CompareAndSwap(m, n); m = c.maxInFlight.Load() {
			}
			defer c.inFlight.Add(-1)
			return next.HandleInitialize(ctx, in)
		}), middleware.After)
}

// S3Options are the choices of an S3 repository beyond its URL.
type S3Options struct {
	// Endpoint is an S3-compatible store's URL (--s3-endpoint); empty means
	// AWS_ENDPOINT_URL or the AWS default. Any endpoint given either way
	// is addressed path-style (http://host/bucket/key), which every
	// S3-compatible store understands.
	Endpoint string
}

// s3Attempts is how many times a request is tried before its error is
// returned (the SDK's default is 3): enough to ride out a restart of the
// store or a short network failure.
const s3Attempts = 6

// ParseS3URL splits s3://BUCKET/PREFIX into the bucket and the prefix ("" or
// ending in "/"). ok is false when loc is not an s3:// URL.
func ParseS3URL(loc string) (bucket, prefix string, ok bool, err error) {
	rest, ok := strings.CutPrefix(loc, "s3://")
	if !ok {
		return "", "", false, nil
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", true, fmt.Errorf("repository %s: no bucket in the URL (want s3://BUCKET/PREFIX)", loc)
	}
	prefix = strings.Trim(prefix, "/")
	for _, part := range strings.Split(prefix, "/") {
		if part == "." || part == ".." {
			return "", "", true, fmt.Errorf("repository %s: the prefix may not hold . or ..", loc)
		}
	}
	if prefix != "" {
		prefix += "/"
	}
	return bucket, prefix, true, nil
}

// NewS3 makes the Storage of s3://bucket/prefix. It sends no request.
func NewS3(ctx context.Context, bucket, prefix string, o S3Options) (*S3, error) {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRetryMaxAttempts(s3Attempts))
	if err != nil {
		return nil, fmt.Errorf("s3://%s: AWS configuration: %w", bucket, err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1" // S3-compatible stores mostly ignore it
	}
	if o.Endpoint != "" {
		if u, err := url.Parse(o.Endpoint); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("--s3-endpoint %q: not an http:// or https:// URL", o.Endpoint)
		}
		cfg.BaseEndpoint = aws.String(o.Endpoint)
	}
	st := &S3{Bucket: bucket, Prefix: prefix}
	st.Client = s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.UsePathStyle = cfg.BaseEndpoint != nil
		// Stores that send no checksum would otherwise get a log line on
		// stderr per GET; TLS and the manifests' checksums cover the data.
		so.DisableLogOutputChecksumValidationSkipped = true
		so.APIOptions = append(so.APIOptions, st.counts.countRequests)
	})
	return st, nil
}

// String is the repository's URL.
func (s *S3) String() string { return "s3://" + s.Bucket + "/" + s.Prefix }

// List pages through ListObjectsV2 (1000 keys a page).
func (s *S3) List(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	p := s3.NewListObjectsV2Paginator(s.Client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.Bucket),
		Prefix: aws.String(s.Prefix + prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s.err("list", prefix, err)
		}
		for _, o := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), s.Prefix)
			out = append(out, Object{Name: name, Size: aws.ToInt64(o.Size)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ReadRange is one ranged GET.
func (s *S3) ReadRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if n == 0 {
		return []byte{}, nil
	}
	body, size, err := s.get(ctx, name, off, n)
	if err != nil {
		return nil, err
	}
	if body == nil {
		return []byte{}, nil
	}
	defer body.Close()
	var buf bytes.Buffer
	buf.Grow(int(size))
	m, err := io.Copy(&buf, body)
	s.counts.getBytes.Add(uint64(m))
	if err != nil {
		return nil, s.err("read", name, err)
	}
	return buf.Bytes(), nil
}

// ReadRangeInto is one ranged GET of the bytes from off on into bufs, in
// order, without a buffer of its own: the body goes straight into them (a
// mount's block cache). It returns how many bytes it filled, fewer only at
// the object's end.
func (s *S3) ReadRangeInto(ctx context.Context, name string, off int64, bufs [][]byte) (int, error) {
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	if n == 0 {
		return 0, nil
	}
	body, _, err := s.get(ctx, name, off, n)
	if err != nil || body == nil {
		return 0, err
	}
	defer body.Close()
	br := bodyReaders.Get().(*bufio.Reader)
	br.Reset(body)
	defer func() { br.Reset(nil); bodyReaders.Put(br) }()
	got := 0
	for _, b := range bufs {
		k, err := io.ReadFull(br, b)
		got += k
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break // the object's end
		}
		if err != nil {
			s.counts.getBytes.Add(uint64(got))
			return got, s.err("read", name, err)
		}
	}
	s.counts.getBytes.Add(uint64(got))
	if k, _ := br.Read(make([]byte, 1)); k > 0 {
		// A store that ignored the Range header sends more than asked.
		return got, fmt.Errorf("read %s%s: the store answered a read of %d bytes at %d with more", s.String(), name, n, off)
	}
	return got, nil
}

// bodyReaders read GET bodies into a mount's block buffers. The buffers are
// 8 KiB each, and read straight from the response, each would be a read
// of the connection of its own; through one of these, a read takes up to
// bodyBufSize at a time and the buffers are filled by copying.
var bodyReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bodyBufSize) }}

const bodyBufSize = 128 << 10

// get sends the GET of n bytes at off (n < 0: to the end) and returns its
// body and announced length; no body and no error when off is at or past
// the end.
func (s *S3) get(ctx context.Context, name string, off, n int64) (io.ReadCloser, int64, error) {
	rng := fmt.Sprintf("bytes=%d-", off)
	if n > 0 {
		rng = fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	}
	res, err := s.Client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.Bucket),
		Key:    aws.String(s.Prefix + name),
		Range:  aws.String(rng),
	})
	if err != nil {
		if code(err) == "InvalidRange" {
			return nil, 0, nil // off is at or past the end
		}
		return nil, 0, s.err("read", name, err)
	}
	return res.Body, aws.ToInt64(res.ContentLength), nil
}

// Put is a single PUT with If-None-Match: *, so the store itself refuses
// to replace an object (S3 answers 412), and a PUT is all or nothing.
func (s *S3) Put(ctx context.Context, name string, data []byte) error {
	_, err := s.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(s.Bucket),
		Key:           aws.String(s.Prefix + name),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
		IfNoneMatch:   aws.String("*"),
	})
	if err != nil {
		return s.err("put", name, err)
	}
	return nil
}

// Delete is one DELETE; S3 answers a missing key with success too.
func (s *S3) Delete(ctx context.Context, name string) error {
	_, err := s.Client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.Bucket),
		Key:    aws.String(s.Prefix + name),
	})
	if err != nil {
		return s.err("delete", name, err)
	}
	return nil
}

// TopNames lists the names at the top of the prefix (objects and
// "directories"), one page of a delimited listing instead of every key.
func (s *S3) TopNames(ctx context.Context) ([]string, error) {
	var out []string
	p := s3.NewListObjectsV2Paginator(s.Client, &s3.ListObjectsV2Input{
		Bucket:    aws.String(s.Bucket),
		Prefix:    aws.String(s.Prefix),
		Delimiter: aws.String("/"),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s.err("list", "", err)
		}
		for _, cp := range page.CommonPrefixes {
			out = append(out, strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), s.Prefix), "/"))
		}
		for _, o := range page.Contents {
			out = append(out, strings.TrimPrefix(aws.ToString(o.Key), s.Prefix))
		}
	}
	return out, nil
}

// Probe reports whether anything is stored under the prefix, with one
// request that also fails clearly on a missing bucket or bad credentials.
func (s *S3) Probe(ctx context.Context) (bool, error) {
	res, err := s.Client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
		Bucket:  aws.String(s.Bucket),
		Prefix:  aws.String(s.Prefix),
		MaxKeys: aws.Int32(1),
	})
	if err != nil {
		return false, s.err("list", "", err)
	}
	return len(res.Contents) > 0, nil
}

// code is the S3 error code of err, or "".
func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// err turns an SDK error into one line naming the object: a missing key is
// an fs.ErrNotExist, an existing one fs.ErrExist, and a missing bucket or
// refused credentials say so (the SDK's own text spans request ids and
// retry counts).
func (s *S3) err(op, name string, err error) error {
	where := s.String() + name
	switch c := code(err); c {
	case "NoSuchKey", "NotFound":
		return &fs.PathError{Op: op, Path: where, Err: fs.ErrNotExist}
	case "PreconditionFailed", "ConditionalRequestConflict":
		return &fs.PathError{Op: op, Path: where, Err: fs.ErrExist}
	case "NoSuchBucket":
		return fmt.Errorf("s3://%s: the bucket does not exist", s.Bucket)
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("s3://%s: access denied (%s): check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)", s.Bucket, c)
	case "":
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		var ne *net.OpError
		if errors.As(err, &ne) {
			return &unavailableError{fmt.Sprintf("%s %s: %v (after %d attempts)", op, where, ne, s3Attempts)}
		}
		msg := fmt.Sprintf("%s %s: %s", op, where, oneLine(err.Error()))
		if serverFault(err) {
			return &unavailableError{msg}
		}
		return errors.New(msg)
	default:
		var ae smithy.APIError
		errors.As(err, &ae)
		msg := fmt.Sprintf("%s %s: %s: %s", op, where, c, oneLine(ae.ErrorMessage()))
		if serverFault(err) {
			return &unavailableError{msg}
		}
		return errors.New(msg)
	}
}

// ErrUnavailable marks a failure of the store itself that may pass: it
// could not be reached, or it answered 5xx or throttled, after the
// client's own retries. A long-running writer (archive) waits and tries
// again; a missing object, a refused request or a local error is not it.
var ErrUnavailable = errors.New("object store unavailable")

type unavailableError struct{ msg string }

func (e *unavailableError) Error() string        { return e.msg }
func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }

// serverFault reports an HTTP answer of 5xx or 429 (throttling) in err.
func serverFault(err error) bool {
	var re interface{ HTTPStatusCode() int }
	if !errors.As(err, &re) {
		return false
	}
	st := re.HTTPStatusCode()
	return st >= 500 || st == 429
}
