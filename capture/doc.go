// Package capture takes full and incremental base backups of a PostgreSQL
// 17+ server over the streaming replication protocol, the way
// pg_basebackup -Fp -X stream [-i MANIFEST] does, into a directory or as
// new points of a repository (package repo names, locks, stages and
// publishes them; capture only writes).
//
// # Protocol
//
// One replication connection runs, in order:
//
//	IDENTIFY_SYSTEM                      system identifier and timeline
//	SHOW wal_segment_size                how WAL is cut into files
//	UPLOAD_MANIFEST + CopyIn             only for an incremental backup
//	BASE_BACKUP (INCREMENTAL, ...)       the backup itself
//
// BASE_BACKUP answers with a one-row result (start LSN, timeline), a result
// listing the tablespaces (oid, location, size in kB), and then, since
// PostgreSQL 15, a single CopyOut stream whose CopyData payloads start with a
// type byte (src/backend/backup/basebackup_copy.c):
//
//	'n' archive name \0 tablespace location \0    a new tar archive begins
//	'd' bytes                                      archive (or manifest) data
//	'p' int64                                      bytes sent so far
//	'm'                                            the manifest follows as 'd'
//
// After CopyDone comes a one-row result with the end LSN and timeline, then
// CommandComplete and ReadyForQuery. The stream reader in stream.go checks
// this sequence strictly: any other message, a malformed payload, a server
// error or a lost connection ends the capture with an error.
//
// With WALStream a second connection streams the WAL from the start of the
// backup's first segment to its end LSN into pg_wal (START_REPLICATION over
// a temporary physical slot, as pg_basebackup -X stream does); with WALFetch
// the server puts the WAL into the main archive instead.
//
// # Output
//
// A backup is written into a hidden temporary directory next to its final
// place, its manifest as backup_manifest.tmp. Only when every file and
// directory has been fsynced is the manifest renamed into place and the
// directory renamed to its final name, so an interrupted capture never leaves
// a directory that looks like a backup. Tablespaces go where -T maps them, or
// to their original location, as with pg_basebackup -Fp; a repository keeps
// them inside the backup, as in-place tablespaces (directories
// pg_tblspc/OID), so each backup is one self-contained directory that
// pg_combinebackup combines without -T. A server recovering a data directory
// with in-place tablespaces must run with allow_in_place_tablespaces = on
// until recovery ends (PostgreSQL refuses directories in pg_tblspc at the
// end of recovery otherwise).
//
// This package prints nothing: callers get progress through Options.Progress
// and notices through Options.Notice, and errors as values.
package capture
