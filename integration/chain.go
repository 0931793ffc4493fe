package integration

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ChainSpec describes the backup chain BuildChain makes.
type ChainSpec struct {
	Incrementals   int  // incremental backups after the full one; default 2
	PgbenchScale   int  // pgbench -i -s; default 5
	PgbenchSeconds int  // pgbench -T between backups; default 3
	Rich           bool // drop, truncate, VACUUM FULL, new database, tablespaces
	// BigRelation adds a table of more than 1 GiB (two segment files) whose
	// second segment changes, then shrinks by VACUUM truncation. It costs
	// about a minute.
	BigRelation bool
	Cluster     ClusterOptions // for the cluster the chain is taken from
}

// Mapping is one tablespace mapping, given as -T Old=New.
type Mapping struct{ Old, New string }

// String is the -T argument.
func (m Mapping) String() string { return m.Old + "=" + m.New }

// Chain is a full backup and its incrementals, taken with the real
// pg_basebackup from a cluster that keeps running for the rest of the test.
type Chain struct {
	Env     *Env
	Cluster *Cluster // the source server, still running; stopped at cleanup
	Dir     string   // in-root directory holding everything of the chain
	Spec    ChainSpec

	Backups   []string   // in-root backup directories, oldest (the full) first
	Snapshots []Snapshot // the server's content right before each backup
	// Mappings[i] are the -T mappings backup i was taken with: Old is the
	// live tablespace location, New the backup's own tablespace directory.
	Mappings [][]Mapping

	// BigRelationPath is the big table's main fork relative to a data
	// directory (pg_relation_filepath, e.g. "base/5/16388"); "" without
	// Spec.BigRelation. BigRelationBlocks is its size at each backup.
	BigRelationPath   string
	BigRelationBlocks []int64

	tablespaces []string // names of the live tablespaces, in creation order
}

// segmentBlocks is the number of 8 kB blocks in a 1 GiB relation segment.
const segmentBlocks = 131072

// bigRows is the big table's size: one row per block (fillfactor 10 with
// ~740-byte rows), so more than one segment, and row id N lives in block N-1.
const bigRows = 160000

// BuildChain initialises a cluster and takes a full backup and
// spec.Incrementals incremental ones, changing the data between backups and
// never during one. Backup i sees sample_table with i+1 rows.
func BuildChain(tb testing.TB, e *Env, spec ChainSpec) *Chain {
	tb.Helper()
	if spec.Incrementals == 0 {
		spec.Incrementals = 2
	}
	if spec.PgbenchScale == 0 {
		spec.PgbenchScale = 5
	}
	if spec.PgbenchSeconds == 0 {
		spec.PgbenchSeconds = 3
	}
	start := time.Now()
	ch := &Chain{Env: e, Dir: e.TempDir(tb), Spec: spec}
	copts := spec.Cluster
	if copts.Dir == "" {
		copts.Dir = path.Join(ch.Dir, "data")
	}
	ch.phase(tb, "initdb and start", func() { ch.Cluster = e.InitCluster(tb, copts) })
	ch.phase(tb, "initial data", func() { ch.setup(tb) })
	for i := 0; i <= spec.Incrementals; i++ {
		if i > 0 {
			ch.phase(tb, fmt.Sprintf("workload before backup %d", i), func() { ch.workload(tb, i) })
		}
		ch.phase(tb, fmt.Sprintf("backup %d (%s)", i, backupName(i)), func() { ch.backup(tb, i) })
	}
	tb.Logf("chain: built %d backups in %v (PostgreSQL %d, %s)", len(ch.Backups), time.Since(start).Round(time.Millisecond), e.Major, ch.Dir)
	return ch
}

// phase runs one step of the build and logs how long it took.
func (ch *Chain) phase(tb testing.TB, name string, fn func()) {
	tb.Helper()
	t0 := time.Now()
	fn()
	tb.Logf("chain: %s: %v", name, time.Since(t0).Round(time.Millisecond))
}

func backupName(i int) string {
	if i == 0 {
		return "full"
	}
	return fmt.Sprintf("inc%d", i)
}

// Upto returns the backups of the chain up to point k (0 is the full).
func (ch *Chain) Upto(k int) []string {
	return append([]string(nil), ch.Backups[:k+1]...)
}

// OutputMappings maps the tablespaces of backup k (what pg_combinebackup
// reads them from) to fresh directories beside out, named out-<tablespace>.
func (ch *Chain) OutputMappings(k int, out string) []Mapping {
	var ms []Mapping
	for _, m := range ch.Mappings[k] {
		ms = append(ms, Mapping{Old: m.New, New: out + "-" + path.Base(m.Old)})
	}
	return ms
}

// OutputArgs is OutputMappings as -T arguments for pg_combinebackup or
// combinefs flatten.
func (ch *Chain) OutputArgs(k int, out string) []string {
	var args []string
	for _, m := range ch.OutputMappings(k, out) {
		args = append(args, "-T", m.String())
	}
	return args
}

// Combine runs the real pg_combinebackup on the chain up to point k into
// out, tablespaces going to OutputMappings(k, out).
func (ch *Chain) Combine(tb testing.TB, k int, out string, extraArgs ...string) {
	tb.Helper()
	ch.Env.CombineBackup(tb, out, ch.Upto(k), append(ch.OutputArgs(k, out), extraArgs...)...)
}

// liveTablespace is where tablespace name lives for the running server.
func (ch *Chain) liveTablespace(name string) string { return path.Join(ch.Dir, "ts", name) }

// createTablespace creates a tablespace in a fresh directory of the chain.
func (ch *Chain) createTablespace(tb testing.TB, name string) {
	tb.Helper()
	loc := ch.liveTablespace(name)
	ch.Env.MkdirAll(tb, loc)
	ch.Cluster.Psql(tb, "postgres", fmt.Sprintf("CREATE TABLESPACE %s LOCATION %s", name, sqlString(loc)))
	ch.tablespaces = append(ch.tablespaces, name)
}

// setup loads the data of the full backup. The big table comes first and is
// frozen before any checkpoint, so neither hint bits nor the visibility map
// make later backups copy all of it again.
func (ch *Chain) setup(tb testing.TB) {
	tb.Helper()
	c := ch.Cluster
	if ch.Spec.BigRelation {
		t0 := time.Now()
		c.Psql(tb, "postgres", fmt.Sprintf(`
CREATE TABLE big (id int, pad text) WITH (fillfactor = 10, autovacuum_enabled = off);
INSERT INTO big SELECT g, repeat(md5(g::text), 22) FROM generate_series(1, %d) g;
VACUUM (FREEZE, ANALYZE) big;`, bigRows))
		size := c.Psql(tb, "postgres", "SELECT pg_relation_size('big')")
		if n, _ := strconv.ParseInt(size, 10, 64); n <= 1<<30 {
			tb.Fatalf("big table is %s bytes, want more than 1 GiB", size)
		}
		ch.BigRelationPath = c.Psql(tb, "postgres", "SELECT pg_relation_filepath('big')")
		tb.Logf("chain: big table %s, %s bytes, in %v", ch.BigRelationPath, size, time.Since(t0).Round(time.Millisecond))
	}
	c.Pgbench(tb, "-i", "-q", "-s", strconv.Itoa(ch.Spec.PgbenchScale))
	c.Psql(tb, "postgres", `
CREATE TABLE sample_table (id int PRIMARY KEY, note text);
INSERT INTO sample_table VALUES (1, 'point 0');`)
	if !ch.Spec.Rich {
		return
	}
	c.Psql(tb, "postgres", `
CREATE TABLE drop_me AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g;
CREATE TABLE truncate_me AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g;
CREATE TABLE vacfull_me AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g;`)
	ch.createTablespace(tb, "ts1")
	c.Psql(tb, "postgres", `
CREATE TABLE ts_tab (id int PRIMARY KEY USING INDEX TABLESPACE ts1, v text) TABLESPACE ts1;
INSERT INTO ts_tab SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CREATE INDEX ts_tab_v ON ts_tab (v) TABLESPACE ts1;`)
}

// workload changes the data between backup i-1 and backup i.
func (ch *Chain) workload(tb testing.TB, i int) {
	tb.Helper()
	c := ch.Cluster
	// At full speed pgbench changed 88% of pgbench_accounts' blocks in 3 s
	// here, and over 90% pg_basebackup sends a relation whole, so one chain
	// in four had no reconstructed pgbench_accounts. The rate keeps it
	// near 40% whatever the machine.
	c.Pgbench(tb, "-T", strconv.Itoa(ch.Spec.PgbenchSeconds), "-c", "2", "-j", "2", "-R", "1500")
	c.Psql(tb, "postgres", fmt.Sprintf("INSERT INTO sample_table VALUES (%d, 'point %d')", i+1, i))
	if ch.Spec.Rich {
		ch.richWorkload(tb, i)
	}
	if ch.Spec.BigRelation {
		ch.bigWorkload(tb, i)
	}
}

// richWorkload: after the full backup, drop, truncate, rewrite, a new
// database and a new tablespace; after the first incremental, a table moved
// between tablespaces and a truncation inside one; then small changes.
func (ch *Chain) richWorkload(tb testing.TB, i int) {
	tb.Helper()
	c := ch.Cluster
	switch i {
	case 1:
		c.Psql(tb, "postgres", `
DROP TABLE drop_me;
TRUNCATE truncate_me;
INSERT INTO truncate_me VALUES (1, 'after truncate'), (2, 'after truncate');
DELETE FROM vacfull_me WHERE id % 2 = 0;
VACUUM FULL vacfull_me;
UPDATE ts_tab SET v = upper(v) WHERE id % 10 = 0;`)
		c.CreateDatabase(tb, "db2")
		c.Psql(tb, "db2", `
CREATE TABLE t2 (id int PRIMARY KEY, v text);
INSERT INTO t2 SELECT g, md5(g::text) FROM generate_series(1, 5000) g;`)
		ch.createTablespace(tb, "ts2")
		c.Psql(tb, "postgres", `
CREATE TABLE ts2_tab (id int, v text) TABLESPACE ts2;
INSERT INTO ts2_tab SELECT g, md5(g::text) FROM generate_series(1, 5000) g;`)
	case 2:
		c.Psql(tb, "postgres", `
ALTER TABLE vacfull_me SET TABLESPACE ts2;
UPDATE ts2_tab SET v = 'changed' WHERE id <= 100;
DELETE FROM ts_tab WHERE id > 15000;
VACUUM ts_tab;`)
		c.Psql(tb, "db2", "INSERT INTO t2 SELECT g, md5(g::text) FROM generate_series(5001, 6000) g")
	default:
		c.Psql(tb, "postgres", fmt.Sprintf("UPDATE ts_tab SET v = 'point %d' WHERE id %% 1000 = %d", i, i))
		c.Psql(tb, "db2", fmt.Sprintf("INSERT INTO t2 VALUES (%d, 'point %d')", 10000+i, i))
	}
}

// bigWorkload: after the full backup a few rows change in both segments
// (HOT updates, same blocks); after the first incremental the tail is
// deleted and VACUUM truncates the relation inside its second segment.
func (ch *Chain) bigWorkload(tb testing.TB, i int) {
	tb.Helper()
	c := ch.Cluster
	switch i {
	case 1:
		c.Psql(tb, "postgres", "UPDATE big SET pad = upper(pad) WHERE id IN (10, 140000, 150000, 159999)")
	case 2:
		const keep = 155000
		c.Psql(tb, "postgres", fmt.Sprintf("DELETE FROM big WHERE id > %d; VACUUM big;", keep))
		if got := c.Psql(tb, "postgres", "SELECT pg_relation_size('big') / 8192"); got != strconv.Itoa(keep) {
			c.fatalf(tb, "VACUUM did not truncate big to %d blocks: %s blocks", keep, got)
		}
	default:
		c.Psql(tb, "postgres", fmt.Sprintf("UPDATE big SET pad = 'point %d' WHERE id = %d", i, segmentBlocks+100+i))
	}
}

// backup snapshots the server and takes backup i; the data does not change
// in between.
func (ch *Chain) backup(tb testing.TB, i int) {
	tb.Helper()
	c := ch.Cluster
	dest := path.Join(ch.Dir, backupName(i))
	var maps []Mapping
	var args []string
	for _, ts := range ch.tablespaces {
		m := Mapping{Old: ch.liveTablespace(ts), New: path.Join(ch.Dir, backupName(i)+"-"+ts)}
		maps = append(maps, m)
		args = append(args, "-T", m.String())
	}
	snap := c.Snapshot(tb)
	if got, ok := snap.Table("postgres", "public.sample_table"); !ok || got.Rows != int64(i+1) {
		tb.Fatalf("sample_table has %d rows before backup %d, want %d", got.Rows, i, i+1)
	}
	if ch.Spec.BigRelation {
		n, _ := strconv.ParseInt(c.Psql(tb, "postgres", "SELECT pg_relation_size('big') / 8192"), 10, 64)
		ch.BigRelationBlocks = append(ch.BigRelationBlocks, n)
	}
	manifest := ""
	if i > 0 {
		manifest = path.Join(ch.Backups[i-1], "backup_manifest")
	}
	c.BaseBackup(tb, dest, manifest, args...)
	ch.Backups = append(ch.Backups, dest)
	ch.Snapshots = append(ch.Snapshots, snap)
	ch.Mappings = append(ch.Mappings, maps)
}

// String describes the chain for logs.
func (ch *Chain) String() string {
	return fmt.Sprintf("chain of %d backups in %s: %s", len(ch.Backups), ch.Dir, strings.Join(ch.Backups, " "))
}
