// Package s3test runs a real S3 server for tests: SeaweedFS's weed
// command (built by integration/s3server.sh into /var/lib/combinefs/weed,
// or COMBINEFS_WEED), started as `weed server -s3` on loopback ports in a
// temporary directory, with one identity whose keys the tests pass through
// the standard AWS environment variables. Tests that need it fail rather
// than skip when COMBINEFS_REQUIRE_S3=1 (CI and `make test`).
// COMBINEFS_WEED_ARGS adds arguments to weed server, e.g. "-debug
// -debug.port=6061" to profile the store under a benchmark
// (/debug/pprof/profile on that port).
package s3test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// DefaultWeed is where integration/s3server.sh puts the weed binary.
const DefaultWeed = "/var/lib/combinefs/weed/weed"

// The one identity of the server.
const (
	AccessKey = "combinefs-test"
	SecretKey = "combinefs-test-secret"
)

// Server is a running (or stopped, between Stop and Start) SeaweedFS.
type Server struct {
	// Endpoint is the S3 API's URL, http://127.0.0.1:PORT.
	Endpoint string
	weed     string
	dir      string
	args     []string
	cmd      *exec.Cmd
	done     chan struct{}
	log      *os.File
}

var buckets atomic.Int64

// Options size a server's storage: SeaweedFS stores objects in volumes
// of VolumeSizeLimitMB, at most VolumeMax of them, allocated as needed.
// The zero Options are the default 16 GiB (256 of 64 MiB).
type Options struct {
	VolumeSizeLimitMB int
	VolumeMax         int
}

// Start starts a server for the test and stops it at the test's end.
func Start(tb testing.TB) *Server {
	tb.Helper()
	return StartWith(tb, Options{})
}

// StartWith is Start with o's storage (a benchmark's backups of GBs).
func StartWith(tb testing.TB, o Options) *Server {
	tb.Helper()
	weed := os.Getenv("COMBINEFS_WEED")
	if weed == "" {
		weed = DefaultWeed
	}
	if _, err := os.Stat(weed); err != nil {
		msg := fmt.Sprintf("no S3 server (%v): run integration/s3server.sh", err)
		if os.Getenv("COMBINEFS_REQUIRE_S3") == "1" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	// The ports are free when picked but another test's server may take
	// one before ours binds it: a server that exits at start is tried
	// again, afresh, on other ports.
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		s := &Server{weed: weed, dir: tb.TempDir()}
		if err := s.configure(cmp.Or(o.VolumeSizeLimitMB, 64), cmp.Or(o.VolumeMax, 256)); err != nil {
			tb.Fatal(err)
		}
		if err = s.Start(); err == nil {
			// Killed, not stopped: its data goes with the test's temporary
			// directory, and SeaweedFS takes 10 to 20 s to stop on SIGTERM.
			tb.Cleanup(s.Kill)
			return s
		}
		s.Kill()
		if !errors.Is(err, errExited) {
			break
		}
		tb.Logf("S3 server, attempt %d: %v", attempt, err)
	}
	tb.Fatal(err)
	return nil
}

// errExited is a server that exited before it answered.
var errExited = errors.New("weed server exited at start")

// configure writes the S3 identity file and picks the ports: HTTP ports
// whose port+10000 (SeaweedFS's gRPC convention) is free as well.
func (s *Server) configure(volumeMB, volumes int) error {
	cfg := fmt.Sprintf(`{"identities":[{"name":"combinefs","credentials":[{"accessKey":%q,"secretKey":%q}],"actions":["Admin","Read","List","Tagging","Write"]}]}`, AccessKey, SecretKey)
	cfgPath := filepath.Join(s.dir, "s3.json")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	data := filepath.Join(s.dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return err
	}
	var ports []int
	for len(ports) < 4 {
		p := 20000 + rand.IntN(20000)
		if free(p) && free(p+10000) {
			ports = append(ports, p)
		}
	}
	s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", ports[3])
	// Volumes of 64 MB keep a small test's disk use small; up to 256 of
	// them (16 GB) hold a benchmark's scale-100 chain and its flattened
	// point (16 held 1 GB: a bigger upload failed with InternalError).
	s.args = []string{"server", "-dir=" + data, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.telemetry=false", fmt.Sprintf("-master.volumeSizeLimitMB=%d", volumeMB), fmt.Sprintf("-volume.max=%d", volumes),
		"-filer", "-filer.localSocket=" + filepath.Join(s.dir, "filer.sock"),
		"-s3", "-s3.config=" + cfgPath, "-s3.port.iceberg=0", "-s3.port.lance=0"}
	for i, name := range []string{"master", "volume", "filer", "s3"} {
		s.args = append(s.args, fmt.Sprintf("-%s.port=%d", name, ports[i]), fmt.Sprintf("-%s.port.grpc=%d", name, ports[i]+10000))
	}
	if x := os.Getenv("COMBINEFS_WEED_ARGS"); x != "" {
		s.args = append(s.args, strings.Fields(x)...)
	}
	return nil
}

// free reports whether a loopback TCP port can be listened on now.
func free(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// Start starts the server (again, after Stop, on the same data and ports)
// and waits until its S3 API answers.
func (s *Server) Start() error {
	log, err := os.OpenFile(filepath.Join(s.dir, "weed.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.weed, s.args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", s.weed, err)
	}
	s.cmd, s.log, s.done = cmd, log, make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := s.Client()
	for {
		_, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("%w: %s", errExited, s.tail())
		case <-ctx.Done():
			s.Stop()
			return fmt.Errorf("weed server did not answer S3 requests: %v: %s", err, s.tail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tail is the end of the server's log, for an error message.
func (s *Server) tail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "weed.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-12):], " | ")
}

// Stop stops the server: SIGTERM to its process group, then SIGKILL if it
// has not exited after a while (weed takes 10-20 s to stop on SIGTERM).
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.log.Close()
	s.cmd = nil
}

// Kill stops the server at once, as a crash or a lost network would.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.log.Close()
	s.cmd = nil
}

// CPUTime is the CPU time (user and system) the running server has used,
// for a benchmark to tell the store's share of a run from the client's;
// 0 when it is not running.
func (s *Server) CPUTime() time.Duration {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return ProcCPU(s.cmd.Process.Pid)
}

// ProcCPU is the user and system CPU time process pid has used so far (0
// once it is gone), for a benchmark's note on who used the CPUs.
func ProcCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields 14 and 15 (utime, stime), counted after the ")" that ends
	// the command's name, in clock ticks of 1/100 s.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// Client is an S3 client of the server with its identity, for setting up
// and inspecting a test's bucket.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		DisableLogOutputChecksumValidationSkipped: true,
	})
}

// NewBucket makes an empty bucket of a fresh name.
func (s *Server) NewBucket(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("test-%d-%d", os.Getpid(), buckets.Add(1))
	_, err := s.Client().CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(name)})
	if err != nil {
		tb.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// Env is the environment a combinefs command needs to reach the server:
// the standard AWS variables, with no shared configuration files.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + SecretKey,
		"AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Setenv puts Env into the test's own environment (for code under test
// that runs in the test's process).
func (s *Server) Setenv(tb testing.TB) {
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		tb.Setenv(k, v)
	}
}
