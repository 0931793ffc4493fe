package integration

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Snapshot is the logical content of a server: its databases and, for every
// permanent user table, a row count and an order-independent hash of the
// rows. Two servers with equal snapshots return the same data; it is how a
// server started on restored files is compared with the live server at
// backup time.
type Snapshot struct {
	Databases []string            // sorted, without template0 and template1
	Tables    map[string]TableSum // key: "database/schema.table"
}

// TableSum summarises one table's rows.
type TableSum struct {
	Rows int64
	Hash string // sum over rows of hashtextextended(row::text, 0)
}

// Table looks up one table ("public.sample_table") of one database.
func (s Snapshot) Table(db, table string) (TableSum, bool) {
	t, ok := s.Tables[db+"/"+table]
	return t, ok
}

// snapshotTablesSQL lists the tables a snapshot covers: permanent ordinary
// tables outside the system schemas. Unlogged tables are left out on
// purpose: a backup restores them empty.
const snapshotTablesSQL = `SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY 1`

// Snapshot reads the server's databases and tables. The hash is a sum, so
// it needs no sort and stays cheap on a table of more than 1 GB, yet any
// changed, added or removed row changes it.
func (c *Cluster) Snapshot(tb testing.TB) Snapshot {
	tb.Helper()
	s := Snapshot{Tables: map[string]TableSum{}}
	dbs := c.Psql(tb, "postgres", "SELECT datname FROM pg_database WHERE datname NOT IN ('template0', 'template1') ORDER BY 1")
	s.Databases = strings.Split(dbs, "\n")
	for _, db := range s.Databases {
		list := c.Psql(tb, db, snapshotTablesSQL)
		if list == "" {
			continue
		}
		var parts []string
		for _, t := range strings.Split(list, "\n") {
			parts = append(parts, fmt.Sprintf(
				"SELECT %s, count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM %s t",
				sqlString(t), t))
		}
		for _, line := range strings.Split(c.Psql(tb, db, strings.Join(parts, "\nUNION ALL\n")), "\n") {
			name, rows, hash := splitLast2(line)
			n, err := strconv.ParseInt(rows, 10, 64)
			if err != nil {
				tb.Fatalf("snapshot of %s: cannot parse %q", db, line)
			}
			s.Tables[db+"/"+name] = TableSum{Rows: n, Hash: hash}
		}
	}
	return s
}

// splitLast2 splits "a|b|c" at its last two "|" (a table name may hold one).
func splitLast2(line string) (a, b, c string) {
	i := strings.LastIndexByte(line, '|')
	if i < 0 {
		return line, "", ""
	}
	j := strings.LastIndexByte(line[:i], '|')
	if j < 0 {
		return line[:i], "", line[i+1:]
	}
	return line[:j], line[j+1 : i], line[i+1:]
}

// Diff describes how other differs from s ("" when they are equal), one
// difference a line, s being the expected side.
func (s Snapshot) Diff(other Snapshot) string {
	var d []string
	if a, b := strings.Join(s.Databases, ","), strings.Join(other.Databases, ","); a != b {
		d = append(d, fmt.Sprintf("databases: want [%s], got [%s]", a, b))
	}
	names := map[string]bool{}
	for k := range s.Tables {
		names[k] = true
	}
	for k := range other.Tables {
		names[k] = true
	}
	sorted := make([]string, 0, len(names))
	for k := range names {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		want, inS := s.Tables[k]
		got, inOther := other.Tables[k]
		switch {
		case !inOther:
			d = append(d, fmt.Sprintf("table %s: missing (want %d rows)", k, want.Rows))
		case !inS:
			d = append(d, fmt.Sprintf("table %s: unexpected (%d rows)", k, got.Rows))
		case want.Rows != got.Rows:
			d = append(d, fmt.Sprintf("table %s: %d rows, want %d", k, got.Rows, want.Rows))
		case want.Hash != got.Hash:
			d = append(d, fmt.Sprintf("table %s: same %d rows but different content (hash %s, want %s)", k, got.Rows, got.Hash, want.Hash))
		}
	}
	return strings.Join(d, "\n")
}

// sqlString quotes an SQL string literal.
func sqlString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
