package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/capture"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/repo"
)

// captureOptions are the flags of combinefs capture; where they overlap with
// pg_basebackup's they have its names, letters and meaning.
type captureOptions struct {
	pgdata         string
	incremental    string
	repo           string
	full           bool
	dbname         string
	host           string
	port           string
	username       string
	checkpoint     string
	label          string
	maxRate        string
	mappings       []string
	walMethod      string
	progress       bool
	checksums      string
	noSync         bool
	statusInterval int
}

func (o *captureOptions) addFlags(f *pflag.FlagSet) {
	f.StringVarP(&o.pgdata, "pgdata", "D", "", "write the backup to `DIRECTORY` (must not exist, or be empty)")
	f.StringVarP(&o.incremental, "incremental", "i", "", "take an incremental backup from the backup whose `MANIFEST` this is")
	f.StringVar(&o.repo, "repo", "", "keep backups in repository `DIR` or s3://BUCKET/PREFIX: named by time (UTC) and kind, each incremental from the newest, tablespaces inside")
	f.BoolVar(&o.full, "full", false, "with --repo: take a full backup even if the repository has one to chain to")
	f.StringVarP(&o.dbname, "dbname", "d", "", "`CONNSTR`: connection string or URL (libpq settings, PG* variables and .pgpass apply)")
	f.StringVarP(&o.host, "host", "h", "", "database server `HOST` or socket directory")
	f.StringVarP(&o.port, "port", "p", "", "database server `PORT`")
	f.StringVarP(&o.username, "username", "U", "", "connect as `USER`")
	f.StringVarP(&o.checkpoint, "checkpoint", "c", "spread", "checkpoint mode: `fast|spread`")
	f.StringVarP(&o.label, "label", "l", "combinefs base backup", "backup `LABEL`")
	f.StringVarP(&o.maxRate, "max-rate", "r", "", "limit the server's transfer `RATE` (kB/s, or with suffix k or M)")
	f.StringArrayVarP(&o.mappings, "tablespace-mapping", "T", nil, "relocate a tablespace: `OLDDIR=NEWDIR` (repeatable)")
	f.StringVarP(&o.walMethod, "wal-method", "X", "stream", "include the WAL by `stream|fetch`")
	f.BoolVarP(&o.progress, "progress", "P", isTerminal(stderr), "show a progress bar (default: when stderr is a terminal)")
	f.StringVar(&o.checksums, "manifest-checksums", "", "manifest checksum `ALGORITHM`: SHA{224,256,384,512}|CRC32C|NONE (default CRC32C)")
	f.BoolVarP(&o.noSync, "no-sync", "N", false, "do not wait for the backup to be written safely to disk")
	f.IntVarP(&o.statusInterval, "status-interval", "s", 10, "`SECONDS` between status packets sent to the server while streaming WAL")
}

func setupCapture(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var o captureOptions
	o.addFlags(f)
	s3o := s3Flags(f)
	return func(ctx context.Context, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Sprintf("too many command-line arguments (first is %q)", args[0])}
		}
		opts, err := o.config()
		if err != nil {
			return err
		}
		bar := newCaptureBar(o.progress)
		opts.Progress = captureProgress(bar, o.progress)
		var noticeMu sync.Mutex
		opts.Notice = func(s string) {
			noticeMu.Lock()
			defer noticeMu.Unlock()
			fmt.Fprintf(stderr, "combinefs capture: server %s\n", s)
		}

		var (
			name string
			res  *capture.Result
		)
		if o.repo != "" {
			r, err := repo.OpenWith(ctx, o.repo, true, *s3o)
			if err != nil {
				bar.Finish()
				return err
			}
			if r.Remote() {
				// The uploads' buffers are bounded (repo.S3MemoryBudget);
				// without a limit the collector lets the heap grow to
				// twice that before it frees the small files' buffers.
				debug.SetMemoryLimit(repo.S3MemoryBudget + s3HeapSlack)
			}
			name, res, err = capture.RepoCapture(ctx, r, opts, o.full, waitNotice("capture"))
			bar.Finish()
			if err != nil {
				return err
			}
		} else {
			if o.incremental != "" {
				m, err := os.ReadFile(o.incremental)
				if err != nil {
					bar.Finish()
					return fmt.Errorf("prior manifest: %w", err)
				}
				opts.PriorManifest = m
			}
			res, err = capture.Capture(ctx, opts)
			bar.Finish()
			if err != nil {
				return err
			}
			name = res.Dir
		}
		kind := "full"
		if res.Incremental {
			kind = "incremental"
		}
		fmt.Fprintf(stderr, "combinefs capture: %s backup %s complete: WAL %s to %s on timeline %d, %s in %s\n",
			kind, name, res.StartLSN, res.EndLSN, res.Timeline, humanBytes(res.Bytes+res.WALBytes), res.Elapsed.Round(100*time.Millisecond))
		return nil
	}
}

// s3HeapSlack is the heap a capture to S3 may use beside its upload
// buffers: the manifest, the SDK's requests, the tar reader's buffer.
const s3HeapSlack = 32 << 20

// config checks the flags and turns them into capture options.
func (o *captureOptions) config() (capture.Options, error) {
	var opts capture.Options
	switch {
	case o.repo == "" && o.pgdata == "":
		return opts, usageError{"no target directory specified (-D or --repo)"}
	case o.repo != "" && o.pgdata != "":
		return opts, usageError{"-D and --repo cannot be used together"}
	case o.repo != "" && o.incremental != "":
		return opts, usageError{"--incremental cannot be used with --repo, which chains to the newest backup itself"}
	case o.repo != "" && len(o.mappings) > 0:
		return opts, usageError{"--tablespace-mapping cannot be used with --repo, which keeps tablespaces inside each backup"}
	case o.full && o.repo == "":
		return opts, usageError{"--full only makes sense with --repo (without -i, -D takes a full backup)"}
	}
	switch o.checkpoint {
	case "fast":
		opts.FastCheckpoint = true
	case "spread":
	default:
		return opts, usageError{fmt.Sprintf("invalid checkpoint argument %q, must be \"fast\" or \"spread\"", o.checkpoint)}
	}
	wal, err := capture.ParseWALMethod(o.walMethod)
	if err != nil {
		return opts, usageError{err.Error()}
	}
	opts.WAL = wal
	if o.maxRate != "" {
		if opts.MaxRate, err = parseMaxRate(o.maxRate); err != nil {
			return opts, usageError{err.Error()}
		}
	}
	if o.checksums != "" {
		switch c := strings.ToUpper(o.checksums); c {
		case "NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512":
			opts.ManifestChecksums = c
		default:
			return opts, usageError{fmt.Sprintf("unrecognized checksum algorithm: %q", o.checksums)}
		}
	}
	if len(o.mappings) > 0 {
		opts.TablespaceMap = map[string]string{}
		for _, m := range o.mappings {
			old, nu, err := parseTablespaceMapping(m)
			if err != nil {
				return opts, usageError{err.Error()}
			}
			opts.TablespaceMap[old] = nu
		}
	}
	if o.statusInterval < 1 {
		return opts, usageError{"--status-interval must be at least 1 second"}
	}
	opts.StatusInterval = time.Duration(o.statusInterval) * time.Second
	opts.Label = o.label
	opts.NoSync = o.noSync
	opts.Dir = o.pgdata
	opts.Conn, err = capture.ConnConfig(o.dbname, o.host, o.port, o.username)
	if err != nil {
		return opts, err
	}
	return opts, nil
}

// parseMaxRate reads pg_basebackup's --max-rate: a number of kB/s, or with
// suffix k (kB/s) or M (MB/s).
func parseMaxRate(s string) (int, error) {
	num := strings.TrimSpace(s)
	mult := 1.0
	switch {
	case strings.HasSuffix(num, "k"):
		num = strings.TrimSpace(strings.TrimSuffix(num, "k"))
	case strings.HasSuffix(num, "M"):
		num, mult = strings.TrimSpace(strings.TrimSuffix(num, "M")), 1024
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("transfer rate %q is not a valid value", s)
	}
	v *= mult
	if v <= 0 {
		return 0, fmt.Errorf("transfer rate must be greater than zero")
	}
	if v < capture.MaxRateLower || v > capture.MaxRateUpper {
		return 0, fmt.Errorf("transfer rate %q is out of range", s)
	}
	return int(v), nil
}

// parseTablespaceMapping reads OLDDIR=NEWDIR as pg_basebackup does (split
// by format.SplitTablespaceMapping, both directories absolute).
func parseTablespaceMapping(arg string) (old, nu string, err error) {
	if old, nu, err = format.SplitTablespaceMapping(arg); err != nil {
		return "", "", err
	}
	if !filepath.IsAbs(old) {
		return "", "", fmt.Errorf("old directory is not an absolute path in tablespace mapping: %s", old)
	}
	if !filepath.IsAbs(nu) {
		return "", "", fmt.Errorf("new directory is not an absolute path in tablespace mapping: %s", nu)
	}
	return filepath.Clean(old), filepath.Clean(nu), nil
}

// newCaptureBar is the progress bar of a capture: bytes received of the
// server's estimate, and the rate.
func newCaptureBar(show bool) *progress {
	if !show {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription("capture"),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)}
}

// captureProgress shows a capture's progress on bar, and says that the
// server is checkpointing, which can take minutes with --checkpoint spread.
func captureProgress(bar *progress, show bool) func(capture.Progress) {
	return func(p capture.Progress) {
		switch p.Phase {
		case capture.PhaseCheckpoint:
			if show {
				fmt.Fprint(stderr, "combinefs capture: waiting for checkpoint\r")
			}
		case capture.PhaseTransfer, capture.PhaseWAL, capture.PhaseSync:
			bar.Set(p.Done, max(p.Total, p.Done))
		}
	}
}
