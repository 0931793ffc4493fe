// Package integration runs combinefs end to end against a real PostgreSQL 17
// or 18: real servers, the real pg_basebackup --incremental, pg_combinebackup
// and pg_verifybackup as references, and the combinefs binary itself.
//
// Debian 12 has no PostgreSQL with incremental backup, so provision.sh builds
// a Debian root with debootstrap and everything PostgreSQL touches lives
// inside it: servers, pg_* tools and combinefs all run chrooted there, so an
// absolute path (a tablespace symlink target, a mount point) means the same
// thing to every program. Go code reads those files through Env.Host.
//
// Environment:
//
//	PG_MAJOR=17|18          which PostgreSQL to provision (default 17)
//	PG_ROOT=DIR             where provision.sh builds the root
//	PG_BINDIR=DIR           use an installed PostgreSQL 17+ instead (no chroot)
//	COMBINEFS_REQUIRE_PG=1  fail instead of skip when PostgreSQL is unavailable (CI)
//	COMBINEFS_REQUIRE_FUSE=1 fail instead of skip when /dev/fuse is unusable (CI)
//	COMBINEFS_KEEP=1        keep every test directory for inspection
//
// Every server a test starts is stopped at cleanup, even when the test fails
// or panics, and dies with the test process if that is killed (a test
// timeout): servers are started with a parent-death signal.
package integration
