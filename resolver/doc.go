// Package resolver turns a chain of backup directories (a full backup and
// the incrementals taken after it, oldest first) into the virtual data
// directory of its last point, exactly as pg_combinebackup would write it.
//
// The same question is asked by flatten, by reads through a mount and by the
// copy-on-write layer: for this file of this point, where does each block come
// from? It is answered here once, as an extent map: runs of blocks, each
// either "from backup k, file F, offset O" or "zeros". The rules are
// pg_combinebackup's (src/bin/pg_combinebackup/reconstruct.c):
//
//   - only the final backup's tree is walked; files absent from it are absent;
//   - a block listed in a newer INCREMENTAL file wins over older copies;
//   - a whole file in an older backup ends the search;
//   - only the final incremental's truncation_block_length bounds the blocks
//     older backups may supply; blocks nobody supplies are zeros;
//   - if no incremental supplied a block and the older whole file has exactly
//     the final length, the output is a plain copy of that file.
//
// Chain validation (OpenChain) makes pg_combinebackup's checks in its order:
// PG_VERSION, control files (system identifier, version, data checksums),
// backup_label continuity (full first, then timeline and LSN of each
// incremental matching its predecessor), and manifests.
package resolver
