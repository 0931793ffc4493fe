package capture

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ConnConfig builds a replication connection config from a libpq connection
// string or URL (empty for none) and the usual environment (PGHOST, PGPORT,
// PGUSER, PGPASSWORD, PGSSLMODE, ...) and ~/.pgpass, which pgconn reads. The
// non-empty values of host, port and user override the connection string,
// as pg_basebackup's -h, -p and -U do.
func ConnConfig(connString, host, port, user string) (*pgconn.Config, error) {
	over := map[string]string{}
	if host != "" {
		over["host"] = host
	}
	if port != "" {
		over["port"] = port
	}
	if user != "" {
		over["user"] = user
	}
	// A physical replication connection; a "replication=database" given by
	// the user would work too, but it is not what BASE_BACKUP needs.
	over["replication"] = "true"
	s, err := mergeConnString(connString, over)
	if err != nil {
		return nil, err
	}
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		return nil, fmt.Errorf("connection settings: %w", err)
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "combinefs"
	}
	cfg.BuildFrontend = bufferedFrontend
	return cfg, nil
}

// socketBuffer is how much one read of the connection may take.
const socketBuffer = 256 << 10

// bufferedFrontend puts a buffer under pgconn's message reader, which reads
// the socket through an 8 kB buffer of its own: a 6 GB backup in 32 kB
// CopyData messages took 390k reads of 16 kB where pg_basebackup made 208k
// of 29 kB.
func bufferedFrontend(r io.Reader, w io.Writer) *pgproto3.Frontend {
	return pgproto3.NewFrontend(bufio.NewReaderSize(r, socketBuffer), w)
}

// mergeConnString adds settings to a connection string in either of its two
// forms, later settings winning.
func mergeConnString(s string, over map[string]string) (string, error) {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("connection string: %w", err)
		}
		q := u.Query()
		for k, v := range over {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	var b strings.Builder
	b.WriteString(s)
	for _, k := range []string{"host", "port", "user", "replication"} {
		v, ok := over[k]
		if !ok {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'")
	}
	return b.String(), nil
}

// connect opens a replication connection.
func connect(ctx context.Context, cfg *pgconn.Config) (*pgconn.PgConn, error) {
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// system is the answer to IDENTIFY_SYSTEM.
type system struct {
	ID       uint64
	Timeline uint32
	XLogPos  LSN
}

// simpleQuery runs one replication command that answers with at most one
// result set and returns its rows.
func simpleQuery(ctx context.Context, conn *pgconn.PgConn, sql string) ([][][]byte, error) {
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows [][][]byte
	for _, r := range results {
		if r.Err != nil {
			return nil, r.Err
		}
		rows = append(rows, r.Rows...)
	}
	return rows, nil
}

// identifySystem runs IDENTIFY_SYSTEM.
func identifySystem(ctx context.Context, conn *pgconn.PgConn) (system, error) {
	rows, err := simpleQuery(ctx, conn, "IDENTIFY_SYSTEM")
	if err != nil {
		return system{}, classify(err, "IDENTIFY_SYSTEM")
	}
	if len(rows) != 1 || len(rows[0]) < 3 {
		return system{}, protocolErrorf("IDENTIFY_SYSTEM returned %d rows, want 1 with at least 3 fields", len(rows))
	}
	var s system
	if s.ID, err = strconv.ParseUint(string(rows[0][0]), 10, 64); err != nil {
		return system{}, protocolErrorf("IDENTIFY_SYSTEM: bad system identifier %q", rows[0][0])
	}
	tli, err := strconv.ParseUint(string(rows[0][1]), 10, 32)
	if err != nil || tli == 0 {
		return system{}, protocolErrorf("IDENTIFY_SYSTEM: bad timeline %q", rows[0][1])
	}
	s.Timeline = uint32(tli)
	if s.XLogPos, err = ParseLSN(string(rows[0][2])); err != nil {
		return system{}, protocolErrorf("IDENTIFY_SYSTEM: %v", err)
	}
	return s, nil
}

// show runs SHOW name on a replication connection.
func show(ctx context.Context, conn *pgconn.PgConn, name string) (string, error) {
	rows, err := simpleQuery(ctx, conn, "SHOW "+name)
	if err != nil {
		return "", classify(err, "SHOW "+name)
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return "", protocolErrorf("SHOW %s returned %d rows, want 1", name, len(rows))
	}
	return string(rows[0][0]), nil
}

// walSegmentSize reads and checks wal_segment_size, as pg_basebackup's
// RetrieveWalSegSize does.
func walSegmentSize(ctx context.Context, conn *pgconn.PgConn) (int64, error) {
	v, err := show(ctx, conn, "wal_segment_size")
	if err != nil {
		return 0, err
	}
	n, err := parseSize(v)
	if err != nil || n < 1<<20 || n > 1<<30 || n&(n-1) != 0 {
		return 0, protocolErrorf("server reports wal_segment_size %q, want a power of two between 1MB and 1GB", v)
	}
	return n, nil
}

// parseSize reads a GUC memory value such as "16MB".
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, err
	}
	return n * mult, nil
}

// serverMajor is the server's major version (17 for 17.2), from the
// server_version parameter reported at connection start.
func serverMajor(conn *pgconn.PgConn) (int, error) {
	v := conn.ParameterStatus("server_version")
	digits := v
	if i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = v[:i]
	}
	n, err := strconv.Atoi(digits)
	if err != nil {
		return 0, fmt.Errorf("%w: cannot read server_version %q", ErrUnsupportedServer, v)
	}
	return n, nil
}

// quoteLiteral quotes s as a replication-command string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteIdent quotes s as an identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
