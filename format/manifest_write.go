package format

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ManifestWriter writes a version 2 backup_manifest byte for byte as
// pg_combinebackup's write_manifest.c does, so combinefs output is
// interchangeable with pg_combinebackup's. Errors are sticky and returned by
// Finish.
type ManifestWriter struct {
	w     *bufio.Writer
	sum   hash.Hash // SHA-256 of everything before the Manifest-Checksum line
	first bool
	err   error
	buf   []byte
}

// NewManifestWriter starts a manifest for the cluster systemID on w.
func NewManifestWriter(w io.Writer, systemID uint64) *ManifestWriter {
	m := &ManifestWriter{w: bufio.NewWriterSize(w, 256<<10), sum: sha256.New(), first: true}
	m.write(fmt.Appendf(nil, "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": %d,\n\"Files\": [", systemID))
	return m
}

func (m *ManifestWriter) write(b []byte) {
	if m.err != nil {
		return
	}
	m.sum.Write(b)
	_, m.err = m.w.Write(b)
}

// AddFile appends the entry of one file. sum is ignored when algo is
// ChecksumNone; an empty sum writes no checksum fields, as PostgreSQL does
// for pg_wal files.
func (m *ManifestWriter) AddFile(path string, size int64, mtime time.Time, algo ChecksumType, sum []byte) {
	b := m.buf[:0]
	if m.first {
		b = append(b, '\n')
		m.first = false
	} else {
		b = append(b, ",\n"...)
	}
	// A NUL can't be in a C path but can be in a Go string: hex-encode such
	// a name rather than write an unparsable \u0000.
	if utf8.ValidString(path) && !strings.Contains(path, "\x00") {
		b = append(b, `{ "Path": `...)
		b = appendJSONString(b, path)
		b = append(b, ", "...)
	} else {
		b = append(b, `{ "Encoded-Path": "`...)
		b = hex.AppendEncode(b, []byte(path))
		b = append(b, `", `...)
	}
	b = append(b, `"Size": `...)
	b = strconv.AppendInt(b, size, 10)
	b = append(b, `, "Last-Modified": "`...)
	b = mtime.UTC().AppendFormat(b, "2006-01-02 15:04:05")
	b = append(b, ` GMT"`...)
	if algo != ChecksumNone && len(sum) > 0 {
		b = append(b, `, "Checksum-Algorithm": "`...)
		b = append(b, algo.String()...)
		b = append(b, `", "Checksum": "`...)
		b = hex.AppendEncode(b, sum)
		b = append(b, '"')
	}
	b = append(b, " }"...)
	m.write(b)
	m.buf = b
}

// Finish writes the WAL ranges and the Manifest-Checksum and flushes.
func (m *ManifestWriter) Finish(ranges []WALRange) error {
	b := []byte("\n],\n\"WAL-Ranges\": [\n")
	for i, r := range ranges {
		if i > 0 {
			b = append(b, ",\n"...)
		}
		b = fmt.Appendf(b, `{ "Timeline": %d, "Start-LSN": "%s", "End-LSN": "%s" }`, r.TLI, r.Start, r.End)
	}
	b = append(b, "\n],\n"...)
	m.write(b)
	if m.err != nil {
		return m.err
	}
	tail := fmt.Appendf(nil, "\"Manifest-Checksum\": \"%x\"}\n", m.sum.Sum(nil))
	if _, err := m.w.Write(tail); err != nil {
		return err
	}
	return m.w.Flush()
}

// appendJSONString quotes s the way PostgreSQL's escape_json does: the
// two-character escapes for \b \f \n \r \t " \, \u00xx for other control
// characters, every other byte as is.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\b':
			b = append(b, `\b`...)
		case '\f':
			b = append(b, `\f`...)
		case '\n':
			b = append(b, `\n`...)
		case '\r':
			b = append(b, `\r`...)
		case '\t':
			b = append(b, `\t`...)
		case '"':
			b = append(b, `\"`...)
		case '\\':
			b = append(b, `\\`...)
		default:
			if c < ' ' {
				b = fmt.Appendf(b, `\u%04x`, c)
			} else {
				b = append(b, c)
			}
		}
	}
	return append(b, '"')
}
