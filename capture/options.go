package capture

import (
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// WALMethod says how the WAL that makes a backup consistent gets into it.
type WALMethod int

const (
	// WALStream streams WAL into pg_wal over a second connection while the
	// backup runs (pg_basebackup -X stream). The default.
	WALStream WALMethod = iota
	// WALFetch has the server append the WAL to the main archive at the end
	// (pg_basebackup -X fetch); the server must keep that WAL until then.
	WALFetch
)

func (m WALMethod) String() string {
	switch m {
	case WALStream:
		return "stream"
	case WALFetch:
		return "fetch"
	}
	return fmt.Sprintf("WALMethod(%d)", int(m))
}

// ParseWALMethod reads "stream" or "fetch".
func ParseWALMethod(s string) (WALMethod, error) {
	switch s {
	case "stream", "s":
		return WALStream, nil
	case "fetch", "f":
		return WALFetch, nil
	}
	return 0, fmt.Errorf("invalid WAL method %q, must be \"fetch\" or \"stream\"", s)
}

// Options describe one capture.
type Options struct {
	// Conn is where to connect; see ConnConfig. It is copied, not changed.
	Conn *pgconn.Config

	// Dir is the backup directory to create. It must not exist, or be an
	// empty directory. The backup is written next to it under a hidden
	// temporary name and renamed to Dir when complete.
	Dir string

	// PriorManifest is the backup_manifest of the backup to take an
	// incremental backup from; nil takes a full backup.
	PriorManifest []byte

	// Label is the backup label (LABEL); empty means "combinefs base backup".
	Label string
	// FastCheckpoint asks for an immediate checkpoint (CHECKPOINT 'fast')
	// instead of a spread one.
	FastCheckpoint bool
	// MaxRate limits the server's transfer rate in kB/s (MAX_RATE); 0 is no
	// limit. The server accepts 32 to 1048576.
	MaxRate int
	// ManifestChecksums is the manifest checksum algorithm (CRC32C, SHA224,
	// SHA256, SHA384, SHA512 or NONE); empty leaves the server's default.
	ManifestChecksums string
	// WAL selects how WAL is included.
	WAL WALMethod

	// TablespaceMap relocates tablespaces, old location to new, like
	// pg_basebackup -T. Unmapped tablespaces go to their original location.
	TablespaceMap map[string]string
	// InPlaceTablespaces writes every tablespace inside the backup as a
	// directory pg_tblspc/OID (an in-place tablespace, which
	// pg_combinebackup and the server accept) instead of a symlink to a
	// directory elsewhere. TablespaceMap is then ignored.
	InPlaceTablespaces bool

	// NoSync skips fsync (pg_basebackup -N): faster, but a crash soon after
	// may leave a damaged backup.
	NoSync bool
	// StatusInterval is how often the WAL receiver reports its position
	// (pg_basebackup -s); 0 means 10 seconds.
	StatusInterval time.Duration

	// Progress, if set, is called from time to time with the state of the
	// capture, always from one goroutine at a time.
	Progress func(Progress)
	// Notice, if set, receives server notices and warnings, one line each.
	Notice func(string)

	// into, when set (by RepoCapture), names the repository point the
	// backup becomes: the repository stages and publishes it, and Dir is
	// not used.
	into *intoRepo
}

// Phase names a stage of a capture.
type Phase string

// The phases of a capture, in order.
const (
	PhaseConnect    Phase = "connect"
	PhaseCheckpoint Phase = "waiting for checkpoint"
	PhaseTransfer   Phase = "transfer"
	PhaseWAL        Phase = "waiting for WAL"
	PhaseSync       Phase = "syncing"
	PhaseDone       Phase = "done"
)

// Progress is a snapshot of a running capture.
type Progress struct {
	Phase Phase
	// Done is the number of archive bytes received so far.
	Done int64
	// Total is the server's estimate of the archive bytes, or 0 when unknown.
	// The estimate can be exceeded (the database grows while it is copied).
	Total int64
	// Archive is the archive being received ("base.tar", "16384.tar").
	Archive string
}

// baseBackupCommand is the BASE_BACKUP command for the given options, in
// the PostgreSQL 15+ option syntax (src/backend/replication/repl_gram.y).
func baseBackupCommand(o *Options) string {
	label := o.Label
	if label == "" {
		label = "combinefs base backup"
	}
	opts := []string{}
	if o.PriorManifest != nil {
		opts = append(opts, "INCREMENTAL")
	}
	opts = append(opts, "LABEL "+quoteLiteral(label), "PROGRESS")
	if o.FastCheckpoint {
		opts = append(opts, "CHECKPOINT 'fast'")
	} else {
		opts = append(opts, "CHECKPOINT 'spread'")
	}
	if o.WAL == WALFetch {
		opts = append(opts, "WAL")
	}
	// The WAL is in the backup, so there is nothing to wait for in the archive
	// (pg_basebackup sends WAIT 0 unless -X none).
	opts = append(opts, "WAIT 0")
	if o.MaxRate > 0 {
		opts = append(opts, fmt.Sprintf("MAX_RATE %d", o.MaxRate))
	}
	opts = append(opts, "MANIFEST 'yes'")
	if o.ManifestChecksums != "" {
		opts = append(opts, "MANIFEST_CHECKSUMS "+quoteLiteral(o.ManifestChecksums))
	}
	opts = append(opts, "TARGET 'client'")
	return "BASE_BACKUP (" + strings.Join(opts, ", ") + ")"
}

// The limits PostgreSQL puts on MAX_RATE (src/include/replication/basebackup.h).
const (
	MaxRateLower = 32
	MaxRateUpper = 1048576
)

// validate checks what can be checked without a server.
func (o *Options) validate() error {
	if o.Conn == nil {
		return fmt.Errorf("no connection settings")
	}
	if o.Dir == "" && o.into == nil {
		return fmt.Errorf("no output directory")
	}
	if o.MaxRate != 0 && (o.MaxRate < MaxRateLower || o.MaxRate > MaxRateUpper) {
		return fmt.Errorf("transfer rate %d kB/s is out of range (%d..%d)", o.MaxRate, MaxRateLower, MaxRateUpper)
	}
	if o.ManifestChecksums != "" {
		switch strings.ToUpper(o.ManifestChecksums) {
		case "NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512":
		default:
			return fmt.Errorf("invalid manifest checksum algorithm %q", o.ManifestChecksums)
		}
	}
	if o.WAL != WALStream && o.WAL != WALFetch {
		return fmt.Errorf("invalid WAL method %v", o.WAL)
	}
	for old, nu := range o.TablespaceMap {
		if !strings.HasPrefix(old, "/") || !strings.HasPrefix(nu, "/") {
			return fmt.Errorf("tablespace mapping %s=%s: both directories must be absolute", old, nu)
		}
	}
	return nil
}
