#!/usr/bin/env bash
# The combinefs walkthrough, end to end, on a real PostgreSQL (17 by default,
# PG_MAJOR=18 for 18; PG_BINDIR for your own install is not supported here,
# the demo uses the provisioned root). Needs root. Prints each step.
#
#   1. start a PostgreSQL server with summarize_wal = on
#   2. sample_table gets row 1; combinefs capture takes a full backup
#   3. row 2; capture takes an incremental; row 3; another incremental
#   4. combinefs list shows the repository and its chains
#   5. mount point 2 and point 1 copy-on-write, start a server on each:
#      SELECT * FROM sample_table shows 3 rows and 2 rows
#   6. combinefs flatten point 2 (like pg_combinebackup), verify it with
#      pg_verifybackup and combinefs verify, and start a server on the
#      result: 3 rows again
#   7. point-in-time recovery: combinefs archive has streamed the WAL into
#      the repository since step 1; row 4, a restore point, row 5; mount at
#      the restore point and start a server: it replays to it, 4 rows
# Everything lives under ROOT/srv/combinefs/demo and is removed at the end
# (DEMO_KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."

major=${PG_MAJOR:-17}
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it uses a chroot and FUSE)" >&2; exit 1; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "PostgreSQL $major toolset"
IFS=$'\t' read -r root bindir < <(PG_MAJOR=$major bash integration/provision.sh)
echo "root $root, binaries $bindir"
CGO_ENABLED=0 go build -o "$root/usr/local/bin/combinefs" ./cmd/combinefs

work=/srv/combinefs/demo
rm -rf "$root$work"
mkdir -p "$root$work"
chroot "$root" chown postgres:postgres "$work"
# the copy-on-write mounts' upper directories: root's own, private (combinefs
# refuses one another user could change, as $work is the server user's)
uppers=/var/lib/combinefs-demo
rm -rf "$root$uppers"
mkdir -m 700 "$root$uppers"
# in the root, as the server user
as_pg() { chroot --userspec=postgres:postgres "$root" env -i PATH="$bindir:/usr/local/bin:/usr/bin:/bin" HOME=/var/lib/postgresql LANG=C.UTF-8 "$@"; }
# combinefs as root (mounts), in the root
cfs() { chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin /usr/local/bin/combinefs "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
psql_at() { as_pg psql -X -h 127.0.0.1 -p "$1" -At -v ON_ERROR_STOP=1 -c "$2" postgres; }

ports=()
mounts=()
archive_pid=
cleanup() {
	if [ -n "$archive_pid" ]; then kill -TERM "$archive_pid" 2>/dev/null || true; wait "$archive_pid" 2>/dev/null || true; fi
	for p in "${ports[@]}"; do
		as_pg pg_ctl -D "$p" -m immediate -w stop >/dev/null 2>&1 || true
	done
	for m in "${mounts[@]}"; do
		cfs umount "$m" >/dev/null 2>&1 || umount -l "$root$m" 2>/dev/null || true
	done
	if [ -z "${DEMO_KEEP:-}" ]; then rm -rf "${root:?}$work" "${root:?}$uppers"; else echo "kept $root$work $root$uppers"; fi
}
trap cleanup EXIT

say "1. a server with summarize_wal = on"
port=$(free_port)
as_pg initdb -D $work/data -A trust >/dev/null
cat >>"$root$work/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '/tmp'
summarize_wal = on
wal_level = replica
max_wal_senders = 4
CONF
as_pg pg_ctl -D $work/data -l $work/data.log -w start >/dev/null
ports+=($work/data)
echo "PostgreSQL $major on port $port"

# (chroot and env exec, so $! is combinefs itself, which SIGTERM stops cleanly)
chroot --userspec=postgres:postgres "$root" env -i PATH="$bindir:/usr/local/bin:/usr/bin:/bin" HOME=/var/lib/postgresql \
	combinefs archive --repo $work/repo -d "host=127.0.0.1 port=$port user=postgres" --slot demo --create-slot 2>"$root$work/archive.log" &
archive_pid=$!
echo "combinefs archive streams the WAL into $work/repo/wal (log: $work/archive.log)"

capture() { as_pg combinefs capture --repo $work/repo -d "host=127.0.0.1 port=$port user=postgres" --checkpoint fast "$@"; }

say "2. row 1, full backup"
psql_at "$port" "CREATE TABLE sample_table (id int, note text); INSERT INTO sample_table VALUES (1, 'in the full backup')"
capture
say "3. row 2, incremental; row 3, incremental"
psql_at "$port" "INSERT INTO sample_table VALUES (2, 'in incremental 1')"
capture
psql_at "$port" "INSERT INTO sample_table VALUES (3, 'in incremental 2')"
capture

say "4. the repository"
cfs list --repo $work/repo
mapfile -t points < <(ls "$root$work/repo" | grep -E '^[0-9]{4}-')

start_on() { # dir port
	as_pg pg_ctl -D "$1" -l "$1.log" -o "-p $2 -c recovery_init_sync_method=syncfs" -w start >/dev/null
	ports+=("$1")
}

say "5. mount point 2 and point 1 copy-on-write, a server on each"
for i in 2 1; do
	mkdir -p "$root$work/mnt$i"
	t0=$(date +%s%N)
	cfs mount --daemon --cow $uppers/upper$i --repo $work/repo --point "${points[$i]}" $work/mnt$i
	mounts+=($work/mnt$i)
	p=$(free_port)
	start_on $work/mnt$i "$p"
	rows=$(psql_at "$p" "SELECT count(*) FROM sample_table")
	t1=$(date +%s%N)
	echo "point $i (${points[$i]}): mounted and answering in $(( (t1 - t0) / 1000000 )) ms; SELECT * FROM sample_table:"
	as_pg psql -X -h 127.0.0.1 -p "$p" -c "SELECT * FROM sample_table ORDER BY id" postgres
	[ "$rows" = $((i + 1)) ] || { echo "demo: point $i shows $rows rows, expected $((i + 1))" >&2; exit 1; }
done

say "6. flatten point 2 (what pg_combinebackup does) and start a server on it"
chain=()
for i in 0 1 2; do chain+=($work/repo/${points[$i]}); done
as_pg combinefs flatten -o $work/flat "${chain[@]}"
as_pg pg_verifybackup $work/flat | tail -1
as_pg combinefs verify $work/flat
p=$(free_port)
start_on $work/flat "$p"
as_pg psql -X -h 127.0.0.1 -p "$p" -c "SELECT * FROM sample_table ORDER BY id" postgres
rows=$(psql_at "$p" "SELECT count(*) FROM sample_table")
[ "$rows" = 3 ] || { echo "demo: the flattened point shows $rows rows, expected 3" >&2; exit 1; }

say "7. point-in-time recovery: row 4, a restore point, row 5; mount at the restore point"
psql_at "$port" "INSERT INTO sample_table VALUES (4, 'after the last backup')" >/dev/null
psql_at "$port" "SELECT pg_create_restore_point('before_row_5')" >/dev/null
psql_at "$port" "INSERT INTO sample_table VALUES (5, 'after the restore point')" >/dev/null
seg=$(psql_at "$port" "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 600); do [ -f "$root$work/repo/wal/00000001/$seg" ] && break; sleep 0.1; done
[ -f "$root$work/repo/wal/00000001/$seg" ] || { echo "demo: segment $seg was not archived; archive log:" >&2; cat "$root$work/archive.log" >&2; exit 1; }
cfs list --repo $work/repo | grep -E '^(WAL archive|recoverable|gap)'
mkdir -p "$root$work/mnt-pitr"
cfs mount --daemon --cow $uppers/upper-pitr --repo $work/repo --target-name before_row_5 $work/mnt-pitr
mounts+=($work/mnt-pitr)
p=$(free_port)
start_on $work/mnt-pitr "$p"
for _ in $(seq 600); do [ "$(psql_at "$p" "SELECT pg_get_wal_replay_pause_state()")" = paused ] && break; sleep 0.1; done
as_pg psql -X -h 127.0.0.1 -p "$p" -c "SELECT * FROM sample_table ORDER BY id" postgres
rows=$(psql_at "$p" "SELECT count(*) FROM sample_table")
[ "$rows" = 4 ] || { echo "demo: recovery to the restore point shows $rows rows, expected 4" >&2; exit 1; }

say "done: every step checked; cleaning up"
