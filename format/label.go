package format

import (
	"bytes"
	"fmt"
)

// LSN is a WAL location (XLogRecPtr).
type LSN uint64

// String formats l as PostgreSQL 17 and 18 do: %X/%X.
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// ParseLSN parses "HI/LO" in hexadecimal, as sscanf("%X/%X") does.
func ParseLSN(s string) (LSN, bool) {
	l, rest, ok := scanLSN([]byte(s))
	return l, ok && len(rest) == 0
}

// BackupLabel holds what pg_combinebackup reads from a backup_label.
type BackupLabel struct {
	StartLSN LSN    // START WAL LOCATION
	StartTLI uint32 // START TIMELINE
	// Incremental is set when the label has INCREMENTAL FROM LSN/TLI: the
	// backup is incremental relative to a backup that started at PrevLSN on
	// timeline PrevTLI.
	Incremental bool
	PrevLSN     LSN
	PrevTLI     uint32
}

// ParseBackupLabel parses the backup_label at path the way
// pg_combinebackup's parse_backup_label does: only the four lines it needs
// are looked at, everything else is ignored; messages keep its wording.
func ParseBackupLabel(data []byte, path string) (*BackupLabel, error) {
	var l BackupLabel
	found := 0
	for off := 0; off < len(data); {
		line := data[off:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i+1]
		}
		lineOff := int64(off)
		off += len(line)
		switch {
		case bytes.HasPrefix(line, []byte("START WAL LOCATION: ")):
			lsn, rest, ok := scanLSN(line[len("START WAL LOCATION: "):])
			if !ok {
				return nil, errorf(path, lineOff, "%s: could not parse %s", path, "START WAL LOCATION")
			}
			if len(rest) == 0 || rest[0] != ' ' {
				return nil, errorf(path, lineOff, "%s: improper terminator for %s", path, "START WAL LOCATION")
			}
			l.StartLSN = lsn
			found |= 1
		case bytes.HasPrefix(line, []byte("START TIMELINE: ")):
			tli, ok := scanTLI(line[len("START TIMELINE: "):])
			if !ok {
				return nil, errorf(path, lineOff, "%s: could not parse TLI for %s", path, "START TIMELINE")
			}
			if tli == 0 {
				return nil, errorf(path, lineOff, "%s: invalid TLI", path)
			}
			l.StartTLI = tli
			found |= 2
		case bytes.HasPrefix(line, []byte("INCREMENTAL FROM LSN: ")):
			lsn, rest, ok := scanLSN(line[len("INCREMENTAL FROM LSN: "):])
			if !ok {
				return nil, errorf(path, lineOff, "%s: could not parse %s", path, "INCREMENTAL FROM LSN")
			}
			if len(rest) == 0 || rest[0] != '\n' {
				return nil, errorf(path, lineOff, "%s: improper terminator for %s", path, "INCREMENTAL FROM LSN")
			}
			l.PrevLSN = lsn
			found |= 4
		case bytes.HasPrefix(line, []byte("INCREMENTAL FROM TLI: ")):
			tli, ok := scanTLI(line[len("INCREMENTAL FROM TLI: "):])
			if !ok {
				return nil, errorf(path, lineOff, "%s: could not parse %s", path, "INCREMENTAL FROM TLI")
			}
			if tli == 0 {
				return nil, errorf(path, lineOff, "%s: invalid TLI", path)
			}
			l.PrevTLI = tli
			found |= 8
		}
	}
	switch {
	case found&1 == 0:
		return nil, errorf(path, -1, "%s: could not find %s", path, "START WAL LOCATION")
	case found&2 == 0:
		return nil, errorf(path, -1, "%s: could not find %s", path, "START TIMELINE")
	case found&4 != 0 && found&8 == 0:
		return nil, errorf(path, -1, "%s: %s requires %s", path, "INCREMENTAL FROM LSN", "INCREMENTAL FROM TLI")
	case found&8 != 0 && found&4 == 0:
		return nil, errorf(path, -1, "%s: %s requires %s", path, "INCREMENTAL FROM TLI", "INCREMENTAL FROM LSN")
	}
	l.Incremental = found&4 != 0
	return &l, nil
}

// StripIncrementalLines returns label without its INCREMENTAL FROM LSN and
// INCREMENTAL FROM TLI lines, every other byte kept: what pg_combinebackup
// writes as the output's backup_label (a server refuses to start from a label
// that still has them).
func StripIncrementalLines(label []byte) []byte {
	out := make([]byte, 0, len(label))
	for off := 0; off < len(label); {
		line := label[off:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i+1]
		}
		off += len(line)
		if bytes.HasPrefix(line, []byte("INCREMENTAL FROM LSN: ")) || bytes.HasPrefix(line, []byte("INCREMENTAL FROM TLI: ")) {
			continue
		}
		out = append(out, line...)
	}
	return out
}

// scanLSN parses "%X/%X" at the start of b like sscanf and returns the rest.
func scanLSN(b []byte) (LSN, []byte, bool) {
	hi, b, ok := scanUint(b, 16)
	if !ok || len(b) == 0 || b[0] != '/' {
		return 0, nil, false
	}
	lo, b, ok := scanUint(b[1:], 16)
	if !ok {
		return 0, nil, false
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), b, true
}

// scanTLI parses "%u" like sscanf and requires a newline right after it, as
// parse_tli does.
func scanTLI(b []byte) (uint32, bool) {
	v, rest, ok := scanUint(b, 10)
	return v, ok && len(rest) > 0 && rest[0] == '\n'
}

// scanUint mimics sscanf's %X and %u conversions into a 32-bit unsigned int:
// leading white space, an optional sign, for base 16 an optional 0x, then at
// least one digit; the value wraps like glibc's strtoul cast to unsigned int.
func scanUint(b []byte, base uint64) (uint32, []byte, bool) {
	for len(b) > 0 && (b[0] == ' ' || (b[0] >= '\t' && b[0] <= '\r')) {
		b = b[1:]
	}
	neg := false
	if len(b) > 0 && (b[0] == '+' || b[0] == '-') {
		neg = b[0] == '-'
		b = b[1:]
	}
	if base == 16 && len(b) >= 2 && b[0] == '0' && (b[1] == 'x' || b[1] == 'X') {
		if len(b) == 2 || digitValue(b[2]) >= 16 {
			// glibc reads a bare "0x" as the number 0.
			return 0, b[2:], true
		}
		b = b[2:]
	}
	var v uint64
	n := 0
	overflow := false
	for n < len(b) {
		d := digitValue(b[n])
		if d >= base {
			break
		}
		if v > (1<<64-1-d)/base {
			overflow = true
		}
		v = v*base + d
		n++
	}
	if n == 0 {
		return 0, nil, false
	}
	if overflow {
		v = 1<<64 - 1
	}
	if neg {
		v = -v
	}
	return uint32(v), b[n:], true
}

func digitValue(c byte) uint64 {
	switch {
	case c >= '0' && c <= '9':
		return uint64(c - '0')
	case c >= 'a' && c <= 'f':
		return uint64(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return uint64(c-'A') + 10
	}
	return 99
}
