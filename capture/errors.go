package capture

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Errors a caller may want to tell apart; test with errors.Is. The error
// returned by Capture wraps one of these and carries the server's own words.
var (
	// ErrConnLost means a connection to the server broke during the capture.
	ErrConnLost = errors.New("lost connection to the server")
	// ErrProtocol means the server sent something the replication protocol
	// does not allow at that point (a malformed or unexpected message).
	ErrProtocol = errors.New("protocol violation")
	// ErrSummarizeWALOff means the server cannot take incremental backups
	// because summarize_wal is off.
	ErrSummarizeWALOff = errors.New("server has summarize_wal = off; incremental backups need WAL summarization (set summarize_wal = on, then take a new full backup)")
	// ErrMissingWALSummaries means the server no longer (or never) had the WAL
	// summaries that cover the time since the prior backup.
	ErrMissingWALSummaries = errors.New("server lacks the WAL summaries since the prior backup (it was taken before summarize_wal was on, or wal_summary_keep_time expired them); take a full backup")
	// ErrOtherCluster means the prior backup was taken from another cluster.
	ErrOtherCluster = errors.New("prior backup is from another cluster")
	// ErrUnsupportedServer means the server is too old for what was asked.
	ErrUnsupportedServer = errors.New("unsupported server version")
)

// protocolErrorf returns an error wrapping ErrProtocol.
func protocolErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// classify turns an error from a connection into one of ours: server errors
// whose meaning we know get our sentinel (the server's text is kept), broken
// connections get ErrConnLost. what names the step, e.g. "base backup".
func classify(err error, what string) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		msg := pgErr.Message
		switch {
		case strings.Contains(msg, "unless WAL summarization is enabled"):
			return fmt.Errorf("%w (server: %s)", ErrSummarizeWALOff, msg)
		case strings.HasPrefix(msg, "WAL summaries are required on timeline"):
			return fmt.Errorf("%w (server: %s)", ErrMissingWALSummaries, msg)
		case strings.Contains(msg, "system identifier") && strings.Contains(msg, "manifest"):
			return fmt.Errorf("%w (server: %s)", ErrOtherCluster, msg)
		}
		return fmt.Errorf("%s: server error: %s (SQLSTATE %s)", what, oneLine(pgErrorText(pgErr)), pgErr.Code)
	}
	if errors.Is(err, ErrProtocol) || errors.Is(err, ErrConnLost) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if isConnError(err) {
		return fmt.Errorf("%s: %w: %v", what, ErrConnLost, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// pgErrorText is the message of a server error with its detail and hint.
func pgErrorText(e *pgconn.PgError) string {
	s := e.Message
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Hint != "" {
		s += " (hint: " + e.Hint + ")"
	}
	return s
}

// isConnError reports whether err means the connection itself failed.
func isConnError(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	// pgconn wraps read failures as "receive message failed" and closed
	// connections as "conn closed" without exporting a type for either.
	s := err.Error()
	return strings.Contains(s, "receive message failed") || strings.Contains(s, "conn closed") ||
		strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
}

// isNetError reports whether err comes from the connection rather than from
// decoding what arrived on it.
func isNetError(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}

// oneLine folds a multi-line text into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
