package format_test

import (
	"bytes"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/combinefs/combinefs/format"
)

// Fuzz targets. Each checks that the parser does not panic, that any error
// is a *format.Error naming the file, that small inputs do not make it
// allocate much, and the round trips that exist.

// allocBound fails when fn allocates more than a megabyte plus 64 times the
// input for an input under 64 KiB: a length field must not drive an
// allocation the input does not back.
func allocBound(t *testing.T, inputLen int, fn func()) {
	t.Helper()
	if inputLen >= 64<<10 {
		fn()
		return
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20+64*uint64(inputLen) {
		t.Fatalf("%d bytes of input made the parser allocate %d bytes", inputLen, n)
	}
}

func checkFuzzError(t *testing.T, err error, path string) {
	t.Helper()
	var fe *format.Error
	if !errors.As(err, &fe) || !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("error %q (%T) is not a *format.Error", err, err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q does not name %q", err, path)
	}
}

func FuzzParseIncremental(f *testing.F) {
	for _, name := range []string{
		"pg17/INCREMENTAL.6002", "pg17/INCREMENTAL.1249.inc1", "pg17/INCREMENTAL.1249.inc2",
		"pg17/INCREMENTAL.2619.inc1", "pg18/INCREMENTAL.16388.inc1", "pg17/INCREMENTAL.16396.inc1.head",
	} {
		f.Add(fixture(f, name))
	}
	f.Add(incFile(3, []uint32{1, 9}))
	f.Add(incFile(0, nil))
	f.Add(incFile(2045, seq(0, 2045))[:8192])
	f.Add(rawHeader(format.IncrementalMagic, format.RelSegSize+1, 0))
	f.Add(rawHeader(format.IncrementalMagic, 0, format.RelSegSize+1))
	f.Add(rawHeader(format.IncrementalMagic, 1, 5, format.RelSegSize))
	f.Add(rawHeader(format.IncrementalMagic, 0xffffffff, 0xffffffff))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "base/1/INCREMENTAL.1"
		var inc *format.Incremental
		var err error
		allocBound(t, len(data), func() {
			inc, err = format.ParseIncremental(bytes.NewReader(data), int64(len(data)), path)
		})
		if err != nil {
			checkFuzzError(t, err, path)
		} else {
			n := len(inc.Blocks)
			if inc.HeaderLength != format.IncrementalHeaderLength(n) || inc.FileSize() > int64(len(data)) {
				t.Fatalf("header %d for %d blocks, file size %d of %d", inc.HeaderLength, n, inc.FileSize(), len(data))
			}
			if inc.TruncationBlockLength > format.RelSegSize || inc.BlockLength() > format.RelSegSize || inc.BlockLength() < inc.TruncationBlockLength {
				t.Fatalf("tbl %d, block length %d", inc.TruncationBlockLength, inc.BlockLength())
			}
			for _, b := range inc.Blocks {
				if b >= inc.BlockLength() {
					t.Fatalf("block %d beyond block length %d", b, inc.BlockLength())
				}
			}
			// Re-encoding gives the input's header (the padding's contents
			// are not checked by the parser, so compare up to it).
			hdr := format.AppendIncrementalHeader(nil, inc.TruncationBlockLength, inc.Blocks)
			if int64(len(hdr)) != inc.HeaderLength || !bytes.Equal(hdr[:12+4*n], data[:12+4*n]) {
				t.Fatalf("re-encoded header differs")
			}
		}
		// A size larger than the data (a lying stat, a file that shrank)
		// must fail cleanly, not read or allocate past what is there.
		allocBound(t, len(data), func() {
			inc2, err := format.ParseIncremental(bytes.NewReader(data), int64(len(data))+1<<30, path)
			if err != nil {
				checkFuzzError(t, err, path)
			} else if inc != nil && !equalInc(inc, inc2) {
				t.Fatalf("size changed the parse: %+v vs %+v", inc, inc2)
			}
		})
	})
}

func equalInc(a, b *format.Incremental) bool {
	return a.TruncationBlockLength == b.TruncationBlockLength && a.HeaderLength == b.HeaderLength && slices.Equal(a.Blocks, b.Blocks)
}

func FuzzParseBackupLabel(f *testing.F) {
	for _, name := range []string{"pg17/backup_label.full", "pg17/backup_label.inc1", "pg17/backup_label.comb2", "pg18/backup_label.inc1"} {
		f.Add(fixture(f, name))
	}
	for _, s := range []string{
		"", startLine + tliLine, startLine + tliLine + incLSN + incTLI, startLine + "START TIMELINE: 1",
		"START WAL LOCATION: 0x/0x (f)\nSTART TIMELINE: -1\n", "START TIMELINE: 4294967296\n",
		"INCREMENTAL FROM LSN: 0/1", "START WAL LOCATION: \t\n", "A\r\nINCREMENTAL FROM TLI: 1\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "x/backup_label"
		var l *format.BackupLabel
		var err error
		allocBound(t, len(data), func() { l, err = format.ParseBackupLabel(data, path) })
		stripped := format.StripIncrementalLines(data)
		if len(stripped) > len(data) || bytes.HasPrefix(stripped, []byte("INCREMENTAL FROM LSN: ")) || bytes.HasPrefix(stripped, []byte("INCREMENTAL FROM TLI: ")) ||
			bytes.Contains(stripped, []byte("\nINCREMENTAL FROM LSN: ")) || bytes.Contains(stripped, []byte("\nINCREMENTAL FROM TLI: ")) {
			t.Fatalf("StripIncrementalLines(%q) = %q", data, stripped)
		}
		if err != nil {
			checkFuzzError(t, err, path)
			return
		}
		if l.StartTLI == 0 || l.Incremental != (l.PrevTLI != 0) {
			t.Fatalf("parsed %+v", *l)
		}
		// What pg_combinebackup writes parses as the same, full, backup.
		l2, err := format.ParseBackupLabel(stripped, path)
		if err != nil {
			t.Fatalf("stripped label %q does not parse: %v", stripped, err)
		}
		if l2.StartLSN != l.StartLSN || l2.StartTLI != l.StartTLI || l2.Incremental {
			t.Fatalf("stripped label parses as %+v, original as %+v", *l2, *l)
		}
		if !l.Incremental && !bytes.Equal(stripped, data) && !bytes.Contains(data, []byte("INCREMENTAL FROM ")) {
			t.Fatalf("stripping changed a label without INCREMENTAL lines")
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	for _, name := range []string{"pg17/backup_manifest.inc2", "pg18/backup_manifest.comb1"} {
		data := fixture(f, name)
		f.Add(data)
		// A small piece of it, with a valid checksum, so the fuzzer
		// starts from short valid documents too.
		lines := bytes.SplitAfter(data, []byte("\n"))
		body := bytes.Join(lines[:6], nil)
		body = append(bytes.TrimSuffix(body, []byte(",\n")), "\n],\n\"WAL-Ranges\": [\n"...)
		body = append(body, lines[len(lines)-4]...)
		body = append(body, "],\n"...)
		f.Add(manifestWith(string(body)))
	}
	f.Add(manifestV2([]string{fileA}, []string{rangeA}))
	f.Add(manifestV2([]string{`{ "Encoded-Path": "ff00", "Size": 1 }`, `{ "Path": "\ud83d\ude00\u0001\\\"", "Size": 2, "Checksum-Algorithm": "sha256" }`}, nil))
	f.Add(manifestWith("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [],\n\"WAL-Ranges\": [],\n"))
	f.Add([]byte("{\n}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "x/backup_manifest"
		var m *format.Manifest
		var err error
		allocBound(t, len(data), func() { m, err = format.ParseManifest(data, path) })
		if err != nil {
			checkFuzzError(t, err, path)
			return
		}
		// Re-write with ManifestWriter; it must parse to the same entries.
		var buf bytes.Buffer
		w := format.NewManifestWriter(&buf, m.SystemIdentifier)
		mtimes := make([]time.Time, len(m.Files))
		for i, e := range m.Files {
			mt, err := time.Parse("2006-01-02 15:04:05 MST", e.LastModified)
			if err != nil || mt.Year() < 1 || mt.Year() > 9999 {
				mt = time.Unix(0, 0)
			}
			mtimes[i] = mt
			w.AddFile(e.Path, e.Size, mt, e.Algorithm, e.Checksum)
		}
		if err := w.Finish(m.WALRanges); err != nil {
			t.Fatal(err)
		}
		m2, err := format.ParseManifest(buf.Bytes(), path)
		if err != nil {
			t.Fatalf("re-written manifest does not parse: %v\n%s", err, buf.Bytes())
		}
		if m2.Version != 2 || !m2.HasSystemIdentifier || m2.SystemIdentifier != m.SystemIdentifier || len(m2.Files) != len(m.Files) || len(m2.WALRanges) != len(m.WALRanges) {
			t.Fatalf("re-parsed %+v, original %+v", m2, m)
		}
		for i, e := range m.Files {
			e2 := m2.Files[i]
			algo := e.Algorithm
			if len(e.Checksum) == 0 {
				algo = format.ChecksumNone // the writer omits empty checksums, as PostgreSQL does
			}
			if e2.Path != e.Path || e2.Size != e.Size || e2.Algorithm != algo || !bytes.Equal(e2.Checksum, e.Checksum) {
				t.Fatalf("entry %d: %+v became %+v", i, e, e2)
			}
			if want := mtimes[i].UTC().Format("2006-01-02 15:04:05") + " GMT"; e2.LastModified != want {
				t.Fatalf("entry %d: Last-Modified %q, want %q", i, e2.LastModified, want)
			}
		}
		for i := range m.WALRanges {
			if m.WALRanges[i] != m2.WALRanges[i] {
				t.Fatalf("WAL range %d: %v became %v", i, m.WALRanges[i], m2.WALRanges[i])
			}
		}
	})
}

func FuzzParseControlFile(f *testing.F) {
	pg17 := fixture(f, "pg17/pg_control")
	f.Add(pg17)
	f.Add(fixture(f, "pg18/pg_control"))
	f.Add(pg17[:0x124])
	f.Add(pg17[:16])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "x/global/pg_control"
		var cf *format.ControlFile
		var err error
		allocBound(t, len(data), func() { cf, err = format.ParseControlFile(data, path) })
		if err != nil {
			checkFuzzError(t, err, path)
			return
		}
		if v, ok := format.ControlVersionForMajor(cf.Major()); !ok || v != cf.Version {
			t.Fatalf("parsed version %d", cf.Version)
		}
		// Any change to the system identifier is caught by the CRC.
		c := bytes.Clone(data)
		c[0] ^= 1
		if _, err := format.ParseControlFile(c, path); err == nil || !strings.Contains(err.Error(), "CRC is incorrect") {
			t.Fatalf("flipped system identifier: %v", err)
		}
	})
}

func FuzzParseRelFileName(f *testing.F) {
	for _, s := range []string{"16384", "16384_fsm", "16384_vm", "16384_init", "16384.1", "16384_vm.2", "0", "016384", "16384.0",
		"16384.01", "16384_foo", "t3_16384", "16384.", "4294967296", "", "pg_internal.init", "4294967295.4294967295"} {
		f.Add(s, uint32(16384), uint8(0), uint32(0))
	}
	f.Add("", uint32(1), uint8(3), uint32(4294967295))
	f.Fuzz(func(t *testing.T, name string, number uint32, fork uint8, segno uint32) {
		if r, ok := format.ParseRelFileName(name); ok {
			// No leading zeros anywhere: the name is canonical.
			if r.String() != name || r.Number == 0 {
				t.Fatalf("ParseRelFileName(%q) = %+v, String %q", name, r, r.String())
			}
			if back, ok := format.ParseRelFileName(r.String()); !ok || back != r {
				t.Fatalf("ParseRelFileName(%q) = %+v, %v; want %+v", r.String(), back, ok, r)
			}
		}
		if number == 0 {
			return
		}
		r := format.RelFile{Number: number, Fork: format.Fork(fork % 4), Segno: segno}
		if back, ok := format.ParseRelFileName(r.String()); !ok || back != r {
			t.Fatalf("ParseRelFileName(%q) = %+v, %v; want %+v", r.String(), back, ok, r)
		}
	})
}
