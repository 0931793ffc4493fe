package resolver

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"

	"github.com/combinefs/combinefs/format"
)

// Backup is one checked input backup directory.
type Backup struct {
	Dir        string
	Major      int // from PG_VERSION
	Control    *format.ControlFile
	Label      *format.BackupLabel
	LabelBytes []byte
	// Manifest is nil when the backup has no backup_manifest (a warning, as
	// in pg_combinebackup).
	Manifest *format.Manifest
}

// Chain is a validated backup chain, oldest first; its point is the last one.
type Chain struct {
	Backups          []*Backup
	Major            int
	SystemIdentifier uint64
	// Warnings are pg_combinebackup's non-fatal findings (missing manifest,
	// mixed data checksum state), worded as it words them.
	Warnings []string
	// Source is where the backups' files are read from (nil: the local
	// file system).
	Source Source
}

// Final is the backup whose point the chain presents.
func (c *Chain) Final() *Backup { return c.Backups[len(c.Backups)-1] }

// ChainOptions tune OpenChain.
type ChainOptions struct {
	// RequireV2Manifests refuses version 1 manifests, which carry no system
	// identifier and predate incremental backup (pg_combinebackup does).
	RequireV2Manifests bool
	// ReadFile, when set, reads the backups' small files (PG_VERSION,
	// pg_control, backup_label, backup_manifest) instead of the local file
	// system: a chain in an object store, whose Dirs are only names. It
	// returns an error matching fs.ErrNotExist for a missing file.
	ReadFile func(path string) ([]byte, error)
	// Source, when set, is where every file of the chain is read from
	// (the small files too, unless ReadFile is set); nil is the local file
	// system.
	Source Source
}

// ChainError is a chain that pg_combinebackup would refuse. Error gives a
// message that names the culprit and says what is wrong; PgMessage gives
// pg_combinebackup's own wording, used when combinefs runs under that name.
type ChainError struct {
	Backup string // the directory at fault
	msg    string
	pgMsg  string
	cause  error
}

func (e *ChainError) Error() string { return e.msg }

// PgMessage is pg_combinebackup's message for the same problem.
func (e *ChainError) PgMessage() string { return e.pgMsg }

func (e *ChainError) Unwrap() error { return e.cause }

// PgMessage returns pg_combinebackup's wording of err when it has one, else
// err's own message.
func PgMessage(err error) string {
	var ce *ChainError
	if errors.As(err, &ce) {
		return ce.PgMessage()
	}
	var fe *format.Error
	if errors.As(err, &fe) {
		return pgFormatMessage(fe)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Sprintf("could not %s file %q: %s", pgOp(pe.Op), pe.Path, pgErrno(pe.Err))
	}
	return err.Error()
}

func pgOp(op string) string {
	switch op {
	case "open", "stat", "read", "write", "close":
		return op
	case "lstat":
		return "stat"
	}
	return op
}

// pgErrno spells an errno as strerror does (Go lower-cases the first word).
func pgErrno(err error) string {
	s := err.Error()
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

// pgFormatMessage is pg_combinebackup's wording of a file's problem: it
// names the file except for manifest problems.
func pgFormatMessage(fe *format.Error) string {
	if fe.Bare != "" {
		return fe.Bare
	}
	return fe.Msg
}

func chainErr(dir, msg, pgMsg string) *ChainError {
	return &ChainError{Backup: dir, msg: msg, pgMsg: pgMsg}
}

// wrapFormat turns a format.Error about a file of dir into a ChainError that
// names the backup, keeping pg_combinebackup's wording for PgMessage.
func wrapFormat(dir string, err error) error {
	var fe *format.Error
	if errors.As(err, &fe) {
		return &ChainError{Backup: dir, msg: fe.Msg, pgMsg: pgFormatMessage(fe), cause: err}
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && errors.Is(err, fs.ErrNotExist) {
		return &ChainError{Backup: dir, msg: fmt.Sprintf("%s is missing: %q is not a complete backup", pe.Path, dir), pgMsg: PgMessage(err), cause: err}
	}
	return err
}

// OpenChain reads and checks the backups in dirs (oldest first) the way
// pg_combinebackup does before it writes anything.
func OpenChain(dirs []string, opts ChainOptions) (*Chain, error) {
	if len(dirs) == 0 {
		return nil, errors.New("no input directories specified")
	}
	c := &Chain{Backups: make([]*Backup, len(dirs)), Source: opts.Source}
	src := c.source()
	read := func(path string, max int64) ([]byte, error) {
		if opts.ReadFile == nil {
			return readSmall(src, path, max)
		}
		data, err := opts.ReadFile(path)
		if err == nil && int64(len(data)) > max {
			return nil, &format.Error{Path: path, Off: max, Msg: fmt.Sprintf("file %q is too large", path)}
		}
		return data, err
	}
	for i, d := range dirs {
		if opts.ReadFile != nil {
			c.Backups[i] = &Backup{Dir: d}
			continue
		}
		st, err := src.Stat(d)
		if err != nil {
			return nil, &ChainError{Backup: d, msg: fmt.Sprintf("backup directory %q: %v", d, pgErrno(errors.Unwrap(err))), pgMsg: PgMessage(err), cause: err}
		}
		if !st.IsDir() {
			return nil, chainErr(d, fmt.Sprintf("backup %q is not a directory", d), fmt.Sprintf("could not open directory %q: Not a directory", d))
		}
		c.Backups[i] = &Backup{Dir: d}
	}
	final := c.Final()

	// PG_VERSION: pg_combinebackup reads only the final backup's; we read
	// all, to refuse a chain that mixes majors.
	for i := len(c.Backups) - 1; i >= 0; i-- {
		b := c.Backups[i]
		p := filepath.Join(b.Dir, "PG_VERSION")
		data, err := read(p, 128)
		if err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
		if b.Major, err = format.ParsePGVersion(data, p); err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
	}
	c.Major = final.Major
	wantVersion, ok := format.ControlVersionForMajor(c.Major)
	if !ok {
		return nil, chainErr(final.Dir, fmt.Sprintf("backup %q is from PostgreSQL %d; combinefs supports PostgreSQL 17 and 18", final.Dir, c.Major),
			fmt.Sprintf("%s: unexpected control file version", filepath.Join(final.Dir, "global/pg_control")))
	}

	// Control files, last to first.
	var checksumVersion uint32
	mismatch := false
	for i := len(c.Backups) - 1; i >= 0; i-- {
		b := c.Backups[i]
		p := filepath.Join(b.Dir, "global", "pg_control")
		if b.Major != c.Major {
			return nil, chainErr(b.Dir, fmt.Sprintf("backup %q is from PostgreSQL %d, but the final backup %q is from PostgreSQL %d: a chain cannot mix major versions", b.Dir, b.Major, final.Dir, c.Major),
				fmt.Sprintf("%s: unexpected control file version", p))
		}
		data, err := read(p, format.ControlFileSize)
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Op == "open" {
			return nil, &ChainError{Backup: b.Dir, msg: fmt.Sprintf("backup %q has no readable %s: %v", b.Dir, "global/pg_control", pgErrno(pe.Err)),
				pgMsg: fmt.Sprintf("could not open file %q for reading: %s", p, pgErrno(pe.Err)), cause: err}
		}
		if err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
		if b.Control, err = format.ParseControlFile(data, p); err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
		if b.Control.Version != wantVersion {
			return nil, chainErr(b.Dir, fmt.Sprintf("%s: control file version %d does not match PostgreSQL %d from PG_VERSION", p, b.Control.Version, c.Major),
				fmt.Sprintf("%s: unexpected control file version", p))
		}
		if i == len(c.Backups)-1 {
			c.SystemIdentifier = b.Control.SystemIdentifier
			checksumVersion = b.Control.DataChecksumVersion
			continue
		}
		if b.Control.SystemIdentifier != c.SystemIdentifier {
			return nil, chainErr(b.Dir, fmt.Sprintf("backup %q belongs to another cluster: system identifier %d, but the final backup %q has %d", b.Dir, b.Control.SystemIdentifier, final.Dir, c.SystemIdentifier),
				fmt.Sprintf("%s: expected system identifier %d, but found %d", p, c.SystemIdentifier, b.Control.SystemIdentifier))
		}
		if checksumVersion != 0 && b.Control.DataChecksumVersion != checksumVersion {
			mismatch = true
		}
	}
	if mismatch {
		c.Warnings = append(c.Warnings, "only some backups have checksums enabled",
			"hint: Disable, and optionally reenable, checksums on the output directory to avoid failures.")
	}

	// backup_label continuity, last to first.
	var checkTLI uint32
	var checkLSN format.LSN
	var newer *Backup
	for i := len(c.Backups) - 1; i >= 0; i-- {
		b := c.Backups[i]
		p := filepath.Join(b.Dir, "backup_label")
		data, err := read(p, 10000+1024)
		if err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
		l, err := format.ParseBackupLabel(data, p)
		if err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
		b.Label, b.LabelBytes = l, data
		switch {
		case i > 0 && !l.Incremental:
			return nil, chainErr(b.Dir, fmt.Sprintf("backup %q is a full backup, but only the first backup of a chain may be full (is the order right?)", b.Dir),
				fmt.Sprintf("backup at %q is a full backup, but only the first backup should be a full backup", b.Dir))
		case i == 0 && l.Incremental:
			return nil, chainErr(b.Dir, fmt.Sprintf("backup %q is incremental (from LSN %s), but a chain must start with a full backup", b.Dir, l.PrevLSN),
				fmt.Sprintf("backup at %q is an incremental backup, but the first backup should be a full backup", b.Dir))
		case newer != nil && l.StartTLI != checkTLI:
			return nil, chainErr(b.Dir, fmt.Sprintf("backup %q starts on timeline %d, but %q is incremental from timeline %d: backups are out of order or one is missing", b.Dir, l.StartTLI, newer.Dir, checkTLI),
				fmt.Sprintf("backup at %q starts on timeline %d, but expected %d", b.Dir, l.StartTLI, checkTLI))
		case newer != nil && l.StartLSN != checkLSN:
			return nil, chainErr(b.Dir, fmt.Sprintf("backup %q starts at LSN %s, but %q is incremental from LSN %s: backups are out of order or one is missing between them", b.Dir, l.StartLSN, newer.Dir, checkLSN),
				fmt.Sprintf("backup at %q starts at LSN %s, but expected %s", b.Dir, l.StartLSN, checkLSN))
		}
		checkTLI, checkLSN, newer = l.PrevTLI, l.PrevLSN, b
	}

	// Manifests, first to last.
	for _, b := range c.Backups {
		p := filepath.Join(b.Dir, "backup_manifest")
		data, err := read(p, math.MaxInt64)
		if errors.Is(err, fs.ErrNotExist) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("file %q does not exist", p))
			continue
		}
		if err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
		m, err := format.ParseManifest(data, p)
		if err != nil {
			return nil, wrapFormat(b.Dir, err)
		}
		if m.Version == 1 && opts.RequireV2Manifests {
			return nil, chainErr(b.Dir, fmt.Sprintf("%s: backup manifest version 1 does not support incremental backup", p),
				"backup manifest version 1 does not support incremental backup")
		}
		b.Manifest = m
	}
	for _, b := range c.Backups {
		// A version 2 manifest without the field counts as identifier 0,
		// as in pg_combinebackup.
		if b.Manifest != nil && b.Manifest.Version >= 2 && b.Manifest.SystemIdentifier != c.SystemIdentifier {
			p := filepath.Join(b.Dir, "global/pg_control")
			return nil, chainErr(b.Dir, fmt.Sprintf("%s/backup_manifest: manifest system identifier is %d, but control file has %d", b.Dir, b.Manifest.SystemIdentifier, c.SystemIdentifier),
				fmt.Sprintf("%s: manifest system identifier is %d, but control file has %d", p, b.Manifest.SystemIdentifier, c.SystemIdentifier))
		}
	}
	return c, nil
}

// readSmall reads a file of src that must not exceed max bytes.
func readSmall(src Source, path string, max int64) ([]byte, error) {
	f, err := src.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Size() > max {
		return nil, &format.Error{Path: path, Off: max, Msg: fmt.Sprintf("file %q is too large", path)}
	}
	data := make([]byte, f.Size())
	n, err := f.ReadAt(data, 0)
	if n != len(data) {
		return nil, &format.Error{Path: path, Off: int64(n), Msg: fmt.Sprintf("could not read file %q: read %d of %d", path, n, len(data))}
	}
	_ = err
	return data, nil
}
