package format_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/combinefs/combinefs/format"
)

func lsn(hi, lo uint32) format.LSN { return format.LSN(uint64(hi)<<32 | uint64(lo)) }

func TestParseBackupLabelReal(t *testing.T) {
	tests := []struct {
		fixture     string
		start       format.LSN
		tli         uint32
		incremental bool
		prevLSN     format.LSN
		prevTLI     uint32
	}{
		{"pg17/backup_label.full", lsn(0, 0x6000028), 1, false, 0, 0},
		{"pg17/backup_label.inc1", lsn(0, 0xA000028), 1, true, lsn(0, 0x6000028), 1},
		{"pg17/backup_label.inc2", lsn(0, 0xF0000D8), 1, true, lsn(0, 0xA000028), 1},
		{"pg17/backup_label.comb2", lsn(0, 0xF0000D8), 1, false, 0, 0},
		{"pg18/backup_label.full", lsn(0, 0x4000028), 1, false, 0, 0},
		{"pg18/backup_label.inc1", lsn(0, 0x6000028), 1, true, lsn(0, 0x4000028), 1},
		{"pg18/backup_label.comb1", lsn(0, 0x6000028), 1, false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			l, err := format.ParseBackupLabel(fixture(t, tt.fixture), tt.fixture)
			if err != nil {
				t.Fatal(err)
			}
			want := format.BackupLabel{StartLSN: tt.start, StartTLI: tt.tli, Incremental: tt.incremental, PrevLSN: tt.prevLSN, PrevTLI: tt.prevTLI}
			if *l != want {
				t.Errorf("got %+v, want %+v", *l, want)
			}
		})
	}
}

const (
	startLine = "START WAL LOCATION: 0/A000028 (file 00000001000000000000000A)\n"
	tliLine   = "START TIMELINE: 1\n"
	incLSN    = "INCREMENTAL FROM LSN: 0/6000028\n"
	incTLI    = "INCREMENTAL FROM TLI: 1\n"
	otherHead = "CHECKPOINT LOCATION: 0/A000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-26 07:57:19 UTC\nLABEL: pg_basebackup base backup\n"
)

func TestParseBackupLabel(t *testing.T) {
	tests := []struct {
		name  string
		label string
		want  format.BackupLabel
	}{
		{"full", startLine + otherHead + tliLine, format.BackupLabel{StartLSN: lsn(0, 0xA000028), StartTLI: 1}},
		{"incremental", startLine + tliLine + incLSN + incTLI, format.BackupLabel{StartLSN: lsn(0, 0xA000028), StartTLI: 1, Incremental: true, PrevLSN: lsn(0, 0x6000028), PrevTLI: 1}},
		{"other order", incTLI + tliLine + incLSN + otherHead + startLine, format.BackupLabel{StartLSN: lsn(0, 0xA000028), StartTLI: 1, Incremental: true, PrevLSN: lsn(0, 0x6000028), PrevTLI: 1}},
		{"unknown lines ignored", "FOO: bar\n" + startLine + "garbage\x00\xff\n" + tliLine + "x", format.BackupLabel{StartLSN: lsn(0, 0xA000028), StartTLI: 1}},
		{"later line wins", startLine + tliLine + "START TIMELINE: 7\n", format.BackupLabel{StartLSN: lsn(0, 0xA000028), StartTLI: 7}},
		{"minimal", "START WAL LOCATION: 1/2 \nSTART TIMELINE: 3\n", format.BackupLabel{StartLSN: lsn(1, 2), StartTLI: 3}},
		{"big values", "START WAL LOCATION: FFFFFFFF/FFFFFFFF x\nSTART TIMELINE: 4294967295\nINCREMENTAL FROM LSN: ffffffff/0\nINCREMENTAL FROM TLI: 2\n", format.BackupLabel{StartLSN: lsn(0xffffffff, 0xffffffff), StartTLI: 0xffffffff, Incremental: true, PrevLSN: lsn(0xffffffff, 0), PrevTLI: 2}},
		// sscanf("%X/%X") and sscanf("%u") quirks, checked against glibc 2.36.
		{"0x prefixes", "START WAL LOCATION: 0x0/0X6000028 (file)\nSTART TIMELINE: 1\n", format.BackupLabel{StartLSN: lsn(0, 0x6000028), StartTLI: 1}},
		{"blanks before numbers", "START WAL LOCATION:  \t0/ 6000028 (file)\nSTART TIMELINE:   +2\n", format.BackupLabel{StartLSN: lsn(0, 0x6000028), StartTLI: 2}},
		{"negative numbers wrap", "START WAL LOCATION: -1/-2 (file)\nSTART TIMELINE: -1\n", format.BackupLabel{StartLSN: lsn(0xffffffff, 0xfffffffe), StartTLI: 0xffffffff}},
		{"hex overflow wraps", "START WAL LOCATION: 100000000/1 (file)\nSTART TIMELINE: 4294967297\n", format.BackupLabel{StartLSN: lsn(0, 1), StartTLI: 1}},
		{"huge saturates", "START WAL LOCATION: 0/1 (file)\nSTART TIMELINE: 99999999999999999999\n", format.BackupLabel{StartLSN: lsn(0, 1), StartTLI: 0xffffffff}},
		{"leading zero TLI", "START WAL LOCATION: 0/1 (file)\nSTART TIMELINE: 01\n", format.BackupLabel{StartLSN: lsn(0, 1), StartTLI: 1}},
		{"CR kept in other lines", "START WAL LOCATION: 0/1 (file)\r\nSTART TIMELINE: 1\n", format.BackupLabel{StartLSN: lsn(0, 1), StartTLI: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := format.ParseBackupLabel([]byte(tt.label), "b/backup_label")
			if err != nil {
				t.Fatal(err)
			}
			if *l != tt.want {
				t.Errorf("got %+v, want %+v", *l, tt.want)
			}
		})
	}
}

// TestParseBackupLabelHexPrefixWithoutDigits: glibc's %X consumes a "0x"
// that has no hex digit after it and converts it as 0, so
// sscanf("0x/28 ", "%X/%X%n") succeeds with 0/28 and "0/0x (file" leaves
// " (file" (checked with glibc 2.36). pg_combinebackup therefore accepts
// these labels.
func TestParseBackupLabelHexPrefixWithoutDigits(t *testing.T) {
	for label, want := range map[string]format.LSN{
		"START WAL LOCATION: 0x/28 (file)\nSTART TIMELINE: 1\n":  lsn(0, 0x28),
		"START WAL LOCATION: 5/0x (file)\nSTART TIMELINE: 1\n":   lsn(5, 0),
		"START WAL LOCATION: 0X/0X1 (file)\nSTART TIMELINE: 1\n": lsn(0, 1),
	} {
		l, err := format.ParseBackupLabel([]byte(label), "backup_label")
		if err != nil {
			t.Errorf("BUG: format.scanUint does not treat a bare \"0x\" as glibc's %%X does (value 0, prefix consumed): ParseBackupLabel(%q): %v", label, err)
			continue
		}
		if l.StartLSN != want {
			t.Errorf("ParseBackupLabel(%q).StartLSN = %v, want %v", label, l.StartLSN, want)
		}
	}
}

func TestParseBackupLabelErrors(t *testing.T) {
	const p = "/backups/inc1/backup_label"
	tests := []struct {
		name, label, want string
	}{
		{"empty", "", p + ": could not find START WAL LOCATION"},
		{"no start", otherHead + tliLine, p + ": could not find START WAL LOCATION"},
		{"no start no timeline", otherHead, p + ": could not find START WAL LOCATION"},
		{"no timeline", startLine + otherHead, p + ": could not find START TIMELINE"},
		{"start not at line start", " " + startLine + tliLine, p + ": could not find START WAL LOCATION"},
		{"start unparsable", "START WAL LOCATION: xyz (file)\n" + tliLine, p + ": could not parse START WAL LOCATION"},
		{"start without slash", "START WAL LOCATION: 0 /A000028 (file)\n" + tliLine, p + ": could not parse START WAL LOCATION"},
		{"start empty", "START WAL LOCATION: \n" + tliLine, p + ": could not parse START WAL LOCATION"},
		{"start no terminator", "START WAL LOCATION: 0/A000028\n" + tliLine, p + ": improper terminator for START WAL LOCATION"},
		{"start at EOF", tliLine + "START WAL LOCATION: 0/A000028", p + ": improper terminator for START WAL LOCATION"},
		{"start bad terminator", "START WAL LOCATION: 0/A000028(file)\n" + tliLine, p + ": improper terminator for START WAL LOCATION"},
		{"start 0x without digit", "START WAL LOCATION: 0/0xg (file)\n" + tliLine, p + ": improper terminator for START WAL LOCATION"},
		{"timeline unparsable", startLine + "START TIMELINE: one\n", p + ": could not parse TLI for START TIMELINE"},
		{"timeline without newline", startLine + "START TIMELINE: 1", p + ": could not parse TLI for START TIMELINE"},
		{"timeline trailing blank", startLine + "START TIMELINE: 1 \n", p + ": could not parse TLI for START TIMELINE"},
		{"timeline CRLF", startLine + "START TIMELINE: 1\r\n", p + ": could not parse TLI for START TIMELINE"},
		{"timeline hex", startLine + "START TIMELINE: 0x1\n", p + ": could not parse TLI for START TIMELINE"},
		{"timeline empty", startLine + "START TIMELINE: \n", p + ": could not parse TLI for START TIMELINE"},
		{"timeline sign only", startLine + "START TIMELINE: - 1\n", p + ": could not parse TLI for START TIMELINE"},
		{"timeline zero", startLine + "START TIMELINE: 0\n", p + ": invalid TLI"},
		{"timeline wraps to zero", startLine + "START TIMELINE: 4294967296\n", p + ": invalid TLI"},
		{"incremental lsn unparsable", startLine + tliLine + "INCREMENTAL FROM LSN: none\n" + incTLI, p + ": could not parse INCREMENTAL FROM LSN"},
		{"incremental lsn trailing blank", startLine + tliLine + "INCREMENTAL FROM LSN: 0/6000028 \n" + incTLI, p + ": improper terminator for INCREMENTAL FROM LSN"},
		{"incremental lsn at EOF", startLine + tliLine + incTLI + "INCREMENTAL FROM LSN: 0/6000028", p + ": improper terminator for INCREMENTAL FROM LSN"},
		{"incremental lsn CRLF", startLine + tliLine + "INCREMENTAL FROM LSN: 0/6000028\r\n" + incTLI, p + ": improper terminator for INCREMENTAL FROM LSN"},
		{"incremental tli unparsable", startLine + tliLine + incLSN + "INCREMENTAL FROM TLI: x\n", p + ": could not parse INCREMENTAL FROM TLI"},
		{"incremental tli at EOF", startLine + tliLine + incLSN + "INCREMENTAL FROM TLI: 1", p + ": could not parse INCREMENTAL FROM TLI"},
		{"incremental tli zero", startLine + tliLine + incLSN + "INCREMENTAL FROM TLI: 0\n", p + ": invalid TLI"},
		{"lsn requires tli", startLine + tliLine + incLSN, p + ": INCREMENTAL FROM LSN requires INCREMENTAL FROM TLI"},
		{"tli requires lsn", startLine + tliLine + incTLI, p + ": INCREMENTAL FROM TLI requires INCREMENTAL FROM LSN"},
		{"error in a repeated line", startLine + tliLine + "START TIMELINE: 0\n", p + ": invalid TLI"},
		// Parse errors come in line order, before the could-not-find checks.
		{"first bad line wins", "START TIMELINE: 0\nSTART WAL LOCATION: x\n", p + ": invalid TLI"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := format.ParseBackupLabel([]byte(tt.label), p)
			checkFormatError(t, err, p, tt.want)
			if err != nil && err.Error() != tt.want {
				t.Errorf("error %q, want exactly %q", err, tt.want)
			}
		})
	}
}

func TestStripIncrementalLines(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", ""},
		{"full label unchanged", startLine + otherHead + tliLine, startLine + otherHead + tliLine},
		{"incremental", startLine + otherHead + tliLine + incLSN + incTLI, startLine + otherHead + tliLine},
		{"order kept", incTLI + "B\n" + incLSN + "A\n", "B\nA\n"},
		{"CR kept", "A\r\n" + "INCREMENTAL FROM LSN: 0/1\r\n" + "B\r\n", "A\r\nB\r\n"},
		{"last line without newline kept", "A\nB", "A\nB"},
		{"last incremental line without newline dropped", "A\nINCREMENTAL FROM TLI: 1", "A\n"},
		{"prefix needs the blank", "INCREMENTAL FROM LSN:0/1\nINCREMENTAL FROM TLI:1\n", "INCREMENTAL FROM LSN:0/1\nINCREMENTAL FROM TLI:1\n"},
		{"prefix at line start only", " INCREMENTAL FROM LSN: 0/1\nX INCREMENTAL FROM TLI: 1\n", " INCREMENTAL FROM LSN: 0/1\nX INCREMENTAL FROM TLI: 1\n"},
		{"repeated lines all dropped", incLSN + incLSN + incTLI + "Z\n" + incTLI, "Z\n"},
		{"blank lines kept", "\n\n" + incLSN + "\n", "\n\n\n"},
		{"binary bytes kept", "\x00\xff\n" + incTLI + "\x01", "\x00\xff\n\x01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := format.StripIncrementalLines([]byte(tt.in)); string(got) != tt.want {
				t.Errorf("StripIncrementalLines(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestStripIncrementalLinesReal: pg_combinebackup's output label is the
// final backup's without its INCREMENTAL lines.
func TestStripIncrementalLinesReal(t *testing.T) {
	for in, want := range map[string]string{
		"pg17/backup_label.inc2": "pg17/backup_label.comb2",
		"pg18/backup_label.inc1": "pg18/backup_label.comb1",
		"pg17/backup_label.full": "pg17/backup_label.full",
	} {
		got := format.StripIncrementalLines(fixture(t, in))
		if !bytes.Equal(got, fixture(t, want)) {
			t.Errorf("StripIncrementalLines(%s) = %q, want %s's bytes", in, got, want)
		}
	}
}

func TestLSN(t *testing.T) {
	for _, tt := range []struct {
		l format.LSN
		s string
	}{
		{0, "0/0"},
		{lsn(0, 0x6000028), "0/6000028"},
		{lsn(1, 0x6B374D48), "1/6B374D48"},
		{lsn(0xffffffff, 0xffffffff), "FFFFFFFF/FFFFFFFF"},
		{lsn(0xABC, 0), "ABC/0"},
	} {
		if got := tt.l.String(); got != tt.s {
			t.Errorf("LSN(%#x).String() = %q, want %q", uint64(tt.l), got, tt.s)
		}
		if got, ok := format.ParseLSN(tt.s); !ok || got != tt.l {
			t.Errorf("ParseLSN(%q) = %v, %v", tt.s, got, ok)
		}
	}
	good := map[string]format.LSN{
		"0/6000028":  lsn(0, 0x6000028),
		"a/b":        lsn(0xa, 0xb),
		"0x1/0X2":    lsn(1, 2),
		" 1/ 2":      lsn(1, 2),
		"00000001/2": lsn(1, 2),
	}
	for s, want := range good {
		if got, ok := format.ParseLSN(s); !ok || got != want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v", s, got, ok, want)
		}
	}
	for _, s := range []string{"", "0", "0/", "/0", "0/1 ", "0/1\n", "0 /1", "g/1", "0/1/2", "0:1"} {
		if got, ok := format.ParseLSN(s); ok {
			t.Errorf("ParseLSN(%q) = %v, true; want failure", s, got)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		l := format.LSN(r.Uint64())
		if got, ok := format.ParseLSN(l.String()); !ok || got != l {
			t.Fatalf("ParseLSN(%q) = %v, %v", l.String(), got, ok)
		}
	}
}
