// Package fusefs presents a chain point as a data directory through FUSE
// (go-fuse v2), read-only or copy-on-write.
//
// The tree is built once from the resolver's Point when the mount starts;
// listing and stat need only what the resolver read then (directory entries
// and INCREMENTAL headers). File contents are resolved on first open:
//
//   - a file that comes whole from one backup file is served by FUSE
//     passthrough where the kernel allows it (the kernel reads the backup
//     file itself), otherwise by reads of that file;
//   - a reconstructed file is served from its extent map through the shared
//     block cache (package cache): cached blocks go to the kernel as a
//     vector without copying, pinned until the reply is sent; missing runs
//     are read with one preadv each, with O_DIRECT where the file system
//     allows, straight into the cache's buffers.
//   - with a cache directory (read-only mounts, package cachedir), a
//     reconstructed file is also written whole to local disk in the
//     background from its first open, and served from there by passthrough
//     once complete.
//
// Immutable data keeps the kernel page cache across opens (FOPEN_KEEP_CACHE)
// and long entry/attribute timeouts, so warm reads never reach the daemon;
// read-only files are opened without FLUSH on close (FOPEN_NOFLUSH), one
// round trip less per file.
//
// A copy-on-write mount keeps every change in an upper directory (upper.go
// has its layout and why a crash loses nothing). With Options.Hydrate it
// also copies everything the upper lacks from the chain into it in the
// background (hydrate.go), until the upper alone is the point; Detach then
// turns such an upper into a plain data directory in steps that a crash
// leaves either undone, done, or resumable by running it again (detach.go
// lists the order).
package fusefs
