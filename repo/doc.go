// Package repo owns a backup repository: its layout, the names of its
// points, its locks, what killed commands leave behind, and the chain of
// every point. Anything that only reads a repository (mount, flatten, list,
// verify) depends on repo and never on capture, which holds the
// replication client and writes new points through this package.
//
// A repository is a directory of backups of one cluster, named by the time
// they were taken (UTC) and their kind, oldest first when sorted by name:
//
//	2025-02-20_161530-FULL
//	2025-02-20_171502-INCREMENTAL
//	.combinefs.lock          the repository's lock (capture, expire, compact)
//	.locks/NAME.lock         one per point: shared by the mounts, flattens and
//	                         verifies that read it, exclusive to remove it
//	.NAME.partial-XXXX       a capture or compaction being written
//	.NAME.trash-XXXX         a point being removed
//	wal/                     the WAL archive (wal.go), written by capture.Archive
//
// Each incremental backup is taken from the newest backup before it, so the
// chain of a point is found by following each incremental's INCREMENTAL FROM
// LSN back to the backup that started there, down to a full backup. A point
// appears by one atomic last step (a rename here; a marker object written
// last on an object store) and stops being one the same way (a rename to a
// hidden trash name), so a reader never sees half of one.
package repo
