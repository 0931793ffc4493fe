#!/usr/bin/env bash
# Provision a real PostgreSQL toolset (server, pg_basebackup, pg_combinebackup,
# pg_verifybackup, pgbench, amcheck) for combinefs's integration tests, demo and
# benchmarks.
#
# Debian 12 ships no PostgreSQL with incremental backup, so by default this
# builds a minimal Debian root with debootstrap: PostgreSQL 17 from trixie, or
# PostgreSQL 18 from testing (PG_MAJOR=18). The root is reused when it is
# already complete. A user with PostgreSQL 17+ installed sets PG_BINDIR instead
# and nothing is downloaded.
#
# Prints one line: the root directory ("/" for PG_BINDIR) and the bin
# directory inside it, separated by a tab.
set -euo pipefail

major=${PG_MAJOR:-17}
case "$major" in
17) suite=trixie ;;
18) suite=testing ;;
*) echo "provision.sh: unsupported PG_MAJOR $major (want 17 or 18)" >&2; exit 2 ;;
esac

if [ -n "${PG_BINDIR:-}" ]; then
	for b in postgres pg_ctl initdb pg_basebackup pg_combinebackup pg_verifybackup pgbench psql; do
		[ -x "$PG_BINDIR/$b" ] || { echo "provision.sh: $PG_BINDIR/$b is missing (PG_BINDIR must hold a PostgreSQL 17+ toolset)" >&2; exit 1; }
	done
	printf '/\t%s\n' "$PG_BINDIR"
	exit 0
fi

root=${PG_ROOT:-/var/lib/combinefs/pg$major}
bindir=/usr/lib/postgresql/$major/bin

if [ ! -f "$root/.combinefs-ready" ]; then
	[ "$(id -u)" = 0 ] || { echo "provision.sh: building $root needs root (or set PG_BINDIR)" >&2; exit 1; }
	if ! command -v debootstrap >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
	fi
	tmp=$root.partial
	rm -rf "$tmp"
	mkdir -p "$(dirname "$root")"
	# The Debian mirror is the machine's own: the first debian (not -security)
	# URI of its apt sources, or DEBIAN_MIRROR when set.
	mirror=${DEBIAN_MIRROR:-}
	if [ -z "$mirror" ]; then
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			mirror=$(grep -v '^[[:space:]]*#' "$f" | grep -oE 'https?://[^[:space:]]+/debian/?([[:space:]]|$)' | head -1 | tr -d '[:space:]' || true)
			[ -n "$mirror" ] && break
		done
	fi
	[ -n "$mirror" ] || { echo "provision.sh: no Debian mirror in the apt sources (set DEBIAN_MIRROR)" >&2; exit 1; }
	echo "provision.sh: building PostgreSQL $major root in $root (debootstrap $suite, about a minute)" >&2
	# fuse3 gives fusermount3 inside the root, for mounts made from there.
	debootstrap --variant=minbase \
		--include=postgresql-$major,postgresql-client-$major,fuse3 \
		"$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
		{ tail -20 "$tmp.log" >&2; echo "provision.sh: debootstrap failed (log: $tmp.log)" >&2; exit 1; }
	for b in postgres pg_ctl initdb pg_basebackup pg_combinebackup pg_verifybackup pgbench psql; do
		[ -x "$tmp$bindir/$b" ] || { echo "provision.sh: $bindir/$b missing after debootstrap" >&2; exit 1; }
	done
	rm -rf "$root"
	mv "$tmp" "$root"
	rm -f "$tmp.log"
	touch "$root/.combinefs-ready"
fi

# The server needs /proc, /dev and /dev/shm inside the root; combinefs mounts
# made there tune the kernel's readahead through /sys.
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mountpoint -q "$root/sys" || mount --bind /sys "$root/sys"
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
mountpoint -q "$root/dev/shm" || mount --bind /dev/shm "$root/dev/shm"
mkdir -p "$root/srv/combinefs"
chmod 0777 "$root/srv/combinefs"
printf '%s\t%s\n' "$root" "$bindir"
