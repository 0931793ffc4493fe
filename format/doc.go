// Package format reads and writes the files of PostgreSQL 17+ plain-format
// base backups that combinefs needs: INCREMENTAL.* relation files,
// backup_label, backup_manifest (versions 1 and 2), PG_VERSION, the fields of
// global/pg_control used for chain checks, relation file names, WAL (page
// and record headers and CRCs, for verify; see wal.go), and the tools'
// -T OLDDIR=NEWDIR tablespace mappings.
//
// It does no I/O beyond io.Reader/io.ReaderAt and byte slices, so everything
// here is deterministic and fuzzed. Errors about file contents are *Error
// values (errors.Is(err, ErrCorrupt) holds) whose message names the file and,
// where it helps, the byte offset; the wording follows pg_combinebackup's
// where it has a message for the same problem, so scripts that match on it
// keep working.
//
// # INCREMENTAL files
//
// Written by the server's basebackup.c (sendFile) and read by
// pg_combinebackup's reconstruct.c. All integers are uint32 in host byte
// order (little-endian on every platform PostgreSQL ships for that matters):
//
//	offset 0   magic 0xd3ae1f0d
//	offset 4   num_blocks
//	offset 8   truncation_block_length (in blocks, relative to the segment)
//	offset 12  num_blocks block numbers, relative to the segment start
//	           zero padding up to a multiple of BlockSize, only if num_blocks > 0
//	header     num_blocks images of BlockSize bytes, in block-number-array order
//
// An INCREMENTAL file with no blocks is exactly 12 bytes.
//
// # backup_manifest
//
// JSON with a fixed layout (src/bin/pg_combinebackup/write_manifest.c,
// src/backend/backup/backup_manifest.c); the Manifest-Checksum is SHA-256 over
// every byte up to and including the second-to-last newline
// (src/common/parse_manifest.c, verify_manifest_checksum).
package format
