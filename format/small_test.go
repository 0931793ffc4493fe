package format_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
)

// Tests of the small parsers: checksum types, pg_control, PG_VERSION,
// relation file names.

func TestParseChecksumType(t *testing.T) {
	tests := []struct {
		in   string
		want format.ChecksumType
		ok   bool
	}{
		{"NONE", format.ChecksumNone, true},
		{"none", format.ChecksumNone, true},
		{"CRC32C", format.ChecksumCRC32C, true},
		{"crc32c", format.ChecksumCRC32C, true},
		{"Crc32C", format.ChecksumCRC32C, true},
		{"SHA224", format.ChecksumSHA224, true},
		{"sha256", format.ChecksumSHA256, true},
		{"ShA384", format.ChecksumSHA384, true},
		{"sha512", format.ChecksumSHA512, true},
		{"", format.ChecksumNone, false},
		{"crc32", format.ChecksumNone, false},
		{"sha1", format.ChecksumNone, false},
		{"md5", format.ChecksumNone, false},
		{" crc32c", format.ChecksumNone, false},
		{"crc32c ", format.ChecksumNone, false},
		{"sha-256", format.ChecksumNone, false},
	}
	for _, tt := range tests {
		got, ok := format.ParseChecksumType(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseChecksumType(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestChecksumTypes(t *testing.T) {
	tests := []struct {
		t    format.ChecksumType
		name string
		size int
		abc  string // checksum of "abc" as the manifest prints it
	}{
		{format.ChecksumNone, "NONE", 0, ""},
		{format.ChecksumCRC32C, "CRC32C", 4, "b73f4b36"}, // CRC-32C("abc") = 0x364b3fb7
		{format.ChecksumSHA224, "SHA224", 28, "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"},
		{format.ChecksumSHA256, "SHA256", 32, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{format.ChecksumSHA384, "SHA384", 48, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"},
		{format.ChecksumSHA512, "SHA512", 64, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"},
	}
	for _, tt := range tests {
		if tt.t.String() != tt.name {
			t.Errorf("%d.String() = %q, want %q", int(tt.t), tt.t.String(), tt.name)
		}
		if back, ok := format.ParseChecksumType(tt.t.String()); !ok || back != tt.t {
			t.Errorf("ParseChecksumType(%q) = %v, %v", tt.t.String(), back, ok)
		}
		if tt.t.Size() != tt.size {
			t.Errorf("%v.Size() = %d, want %d", tt.t, tt.t.Size(), tt.size)
		}
		h := tt.t.New()
		if tt.t == format.ChecksumNone {
			if h != nil {
				t.Errorf("NONE.New() = %v, want nil", h)
			}
			continue
		}
		if h.Size() != tt.size {
			t.Errorf("%v.New().Size() = %d, want %d", tt.t, h.Size(), tt.size)
		}
		h.Write([]byte("a"))
		h.Write([]byte("bc"))
		if got := hex.EncodeToString(h.Sum(nil)); got != tt.abc {
			t.Errorf("%v(abc) = %s, want %s", tt.t, got, tt.abc)
		}
		// Sum appends and does not change the state.
		if got := h.Sum([]byte{0xee}); got[0] != 0xee || hex.EncodeToString(got[1:]) != tt.abc {
			t.Errorf("%v: Sum(prefix) = %x", tt.t, got)
		}
		h.Reset()
		h.Write([]byte("abc"))
		if got := hex.EncodeToString(h.Sum(nil)); got != tt.abc {
			t.Errorf("%v after Reset = %s, want %s", tt.t, got, tt.abc)
		}
	}
	if s := format.ChecksumType(9).String(); s != "ChecksumType(9)" {
		t.Errorf("ChecksumType(9).String() = %q", s)
	}
	if s := format.ChecksumType(-1).String(); s != "ChecksumType(-1)" {
		t.Errorf("ChecksumType(-1).String() = %q", s)
	}
	if format.ChecksumType(9).Size() != 0 || format.ChecksumType(9).New() != nil {
		t.Errorf("unknown type has a size or a hash")
	}
}

// TestCRC32C: the check value of CRC-32C, and PostgreSQL's way of printing
// it (the uint32's bytes in host order, i.e. little-endian).
func TestCRC32C(t *testing.T) {
	if got := format.CRC32C([]byte("123456789")); got != 0xe3069283 {
		t.Errorf("CRC32C(123456789) = %#x, want 0xe3069283", got)
	}
	h := format.ChecksumCRC32C.New()
	h.Write([]byte("123456789"))
	if got := hex.EncodeToString(h.Sum(nil)); got != "839206e3" {
		t.Errorf("manifest CRC32C of 123456789 = %s, want 839206e3", got)
	}
	h = format.ChecksumCRC32C.New()
	if got := hex.EncodeToString(h.Sum(nil)); got != "00000000" {
		t.Errorf("CRC32C of nothing = %s, want 00000000", got)
	}
	if h.BlockSize() != 1 {
		t.Errorf("BlockSize = %d", h.BlockSize())
	}
	// Chunked writes equal one write.
	data := bytes.Repeat([]byte("combinefs"), 10000)
	h.Reset()
	for i := 0; i < len(data); i += 777 {
		h.Write(data[i:min(i+777, len(data))])
	}
	if got, want := binary.LittleEndian.Uint32(h.Sum(nil)), format.CRC32C(data); got != want {
		t.Errorf("chunked %#x, one write %#x", got, want)
	}
}

// TestChecksumsOfRealFiles recomputes checksums the server and
// pg_combinebackup wrote into real manifests.
func TestChecksumsOfRealFiles(t *testing.T) {
	tests := []struct{ manifest, path, file string }{
		{"pg17/backup_manifest.full", "PG_VERSION", "pg17/PG_VERSION"},
		{"pg17/backup_manifest.full", "global/pg_control", "pg17/pg_control"},
		{"pg17/backup_manifest.full", "base/5/2619", "pg17/2619.full"},
		{"pg17/backup_manifest.full", "base/5/1249", "pg17/1249.full"},
		{"pg17/backup_manifest.inc1", "base/5/INCREMENTAL.2619", "pg17/INCREMENTAL.2619.inc1"},
		{"pg17/backup_manifest.inc2", "global/INCREMENTAL.6002", "pg17/INCREMENTAL.6002"},
		{"pg17/backup_manifest.inc2", "backup_label", "pg17/backup_label.inc2"},
		{"pg17/backup_manifest.comb2", "backup_label", "pg17/backup_label.comb2"},
		{"pg17/backup_manifest.comb2", "base/5/2619", "pg17/2619.comb2"},
		{"pg17/backup_manifest.comb2", "base/5/1249", "pg17/1249.comb2"},
		{"pg18/backup_manifest.inc1", "base/5/INCREMENTAL.16384", "pg18/INCREMENTAL.16384.inc1"},
		{"pg18/backup_manifest.comb1", "base/5/16384", "pg18/16384.comb1"},
		{"pg18/backup_manifest.comb1", "backup_label", "pg18/backup_label.comb1"},
	}
	for _, tt := range tests {
		m, err := format.ParseManifest(fixture(t, tt.manifest), tt.manifest)
		if err != nil {
			t.Fatal(err)
		}
		e, ok := m.Lookup(tt.path)
		if !ok {
			t.Errorf("%s has no %s", tt.manifest, tt.path)
			continue
		}
		data := fixture(t, tt.file)
		if e.Size != int64(len(data)) {
			t.Errorf("%s: %s size %d, file %s has %d", tt.manifest, tt.path, e.Size, tt.file, len(data))
		}
		h := e.Algorithm.New()
		h.Write(data)
		if !bytes.Equal(h.Sum(nil), e.Checksum) {
			t.Errorf("%s: %s checksum %x, computed %x over %s", tt.manifest, tt.path, e.Checksum, h.Sum(nil), tt.file)
		}
	}
}

// controlWith returns a copy of a pg_control image with a byte changed and the
// CRC recomputed as PostgreSQL does.
func controlWith(t *testing.T, data []byte, crcOff int, edit func([]byte)) []byte {
	t.Helper()
	c := bytes.Clone(data)
	edit(c)
	binary.LittleEndian.PutUint32(c[crcOff:], format.CRC32C(c[:crcOff]))
	return c
}

func TestParseControlFile(t *testing.T) {
	pg17 := fixture(t, "pg17/pg_control")
	pg18 := fixture(t, "pg18/pg_control")
	tests := []struct {
		name    string
		data    []byte
		want    format.ControlFile
		major   int
		wantErr string
	}{
		{name: "pg17", data: pg17, want: format.ControlFile{SystemIdentifier: 7712386155164846954, Version: 1700, CatalogVersion: 202406281, DataChecksumVersion: 1}, major: 17},
		{name: "pg18", data: pg18, want: format.ControlFile{SystemIdentifier: 7712386653334815083, Version: 1800, CatalogVersion: 202506291, DataChecksumVersion: 1}, major: 18},
		{name: "pg17 new sysid", data: controlWith(t, pg17, 0x120, func(c []byte) { binary.LittleEndian.PutUint64(c, 42) }), want: format.ControlFile{SystemIdentifier: 42, Version: 1700, CatalogVersion: 202406281, DataChecksumVersion: 1}, major: 17},
		{name: "pg17 checksums off", data: controlWith(t, pg17, 0x120, func(c []byte) { binary.LittleEndian.PutUint32(c[0xfc:], 0) }), want: format.ControlFile{SystemIdentifier: 7712386155164846954, Version: 1700, CatalogVersion: 202406281}, major: 17},
		{name: "pg18 new sysid", data: controlWith(t, pg18, 0x124, func(c []byte) { binary.LittleEndian.PutUint64(c, 7) }), want: format.ControlFile{SystemIdentifier: 7, Version: 1800, CatalogVersion: 202506291, DataChecksumVersion: 1}, major: 18},
		{name: "pg17 bytes after crc ignored", data: func() []byte { c := bytes.Clone(pg17); c[0x1000] ^= 1; return c }(), want: format.ControlFile{SystemIdentifier: 7712386155164846954, Version: 1700, CatalogVersion: 202406281, DataChecksumVersion: 1}, major: 17},

		{name: "flipped sysid byte", data: func() []byte { c := bytes.Clone(pg17); c[3] ^= 0x10; return c }(), wantErr: ": CRC is incorrect"},
		{name: "flipped checksum version", data: func() []byte { c := bytes.Clone(pg17); c[0xfc] ^= 1; return c }(), wantErr: ": CRC is incorrect"},
		{name: "flipped last covered byte", data: func() []byte { c := bytes.Clone(pg17); c[0x11f] ^= 0x80; return c }(), wantErr: ": CRC is incorrect"},
		{name: "flipped crc", data: func() []byte { c := bytes.Clone(pg17); c[0x121] ^= 1; return c }(), wantErr: ": CRC is incorrect"},
		{name: "pg18 flipped byte", data: func() []byte { c := bytes.Clone(pg18); c[0x40] ^= 1; return c }(), wantErr: ": CRC is incorrect"},
		{name: "pg18 labelled 1700", data: func() []byte { c := bytes.Clone(pg18); binary.LittleEndian.PutUint32(c[8:], 1700); return c }(), wantErr: ": CRC is incorrect"},
		{name: "unknown version", data: controlWith(t, pg17, 0x120, func(c []byte) { binary.LittleEndian.PutUint32(c[8:], 1300) }), wantErr: ": unexpected control file version"},
		{name: "version 1900", data: controlWith(t, pg18, 0x124, func(c []byte) { binary.LittleEndian.PutUint32(c[8:], 1900) }), wantErr: ": unexpected control file version"},
		{name: "big-endian version", data: controlWith(t, pg17, 0x120, func(c []byte) { binary.BigEndian.PutUint32(c[8:], 1700) }), wantErr: ": unexpected control file version"},
		{name: "empty", data: nil, wantErr: "could not read file"},
		{name: "15 bytes", data: pg17[:15], wantErr: "could not read file"},
		{name: "16 bytes", data: pg17[:16], wantErr: "could not read file"},
		{name: "cut before crc", data: pg17[:0x120], wantErr: "could not read file"},
		{name: "cut in crc", data: pg17[:0x122], wantErr: "could not read file"},
		{name: "pg18 cut", data: pg18[:0x123], wantErr: "could not read file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const p = "/b/full/global/pg_control"
			cf, err := format.ParseControlFile(tt.data, p)
			if tt.wantErr != "" {
				checkFormatError(t, err, p, tt.wantErr)
				if strings.HasPrefix(tt.wantErr, ":") && err != nil && err.Error() != p+tt.wantErr {
					t.Errorf("error %q, want %q", err, p+tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *cf != tt.want {
				t.Errorf("got %+v, want %+v", *cf, tt.want)
			}
			if cf.Major() != tt.major {
				t.Errorf("Major() = %d, want %d", cf.Major(), tt.major)
			}
			if s := cf.String(); !strings.Contains(s, fmt.Sprint(cf.SystemIdentifier)) {
				t.Errorf("String() = %q lacks the system identifier", s)
			}
		})
	}
}

func TestControlVersionForMajor(t *testing.T) {
	for major, want := range map[int]uint32{17: 1700, 18: 1800} {
		if v, ok := format.ControlVersionForMajor(major); !ok || v != want {
			t.Errorf("ControlVersionForMajor(%d) = %d, %v", major, v, ok)
		}
	}
	for _, major := range []int{0, 9, 16, 19, -17} {
		if v, ok := format.ControlVersionForMajor(major); ok {
			t.Errorf("ControlVersionForMajor(%d) = %d, true", major, v)
		}
	}
}

func TestParsePGVersion(t *testing.T) {
	const p = "/b/inc/PG_VERSION"
	tests := []struct {
		in      string
		want    int
		wantErr string
	}{
		{"17\n", 17, ""},
		{"18\n", 18, ""},
		{"10\n", 10, ""},
		{"17\nextra", 17, ""},
		{" 17\n", 17, ""}, // strtoul skips blanks
		{"+18\n", 18, ""},
		{"017\n", 17, ""},
		{"9.6\n", 0, p + ": server version too old"},
		{"8.4\n", 0, p + ": server version too old"},
		{"9.6", 0, p + ": server version too old"},
		{"10.5\n", 0, p + ": could not parse version number"},
		{"abc", 0, p + ": could not parse version number"},
		{"17", 0, p + ": could not parse version number"},
		{"17 \n", 0, p + ": could not parse version number"},
		{"17\r\n", 0, p + ": could not parse version number"},
		{"", 0, p + ": could not parse version number"},
		{"\n", 0, p + ": could not parse version number"},
		{"99999999999999999999\n", 0, p + ": could not parse version number"},
	}
	for _, tt := range tests {
		got, err := format.ParsePGVersion([]byte(tt.in), p)
		if tt.wantErr != "" {
			checkFormatError(t, err, p, tt.wantErr)
			if err != nil && err.Error() != tt.wantErr {
				t.Errorf("ParsePGVersion(%q): %q, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePGVersion(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, f := range []string{"pg17/PG_VERSION", "pg18/PG_VERSION"} {
		v, err := format.ParsePGVersion(fixture(t, f), f)
		if err != nil || v != int(f[2]-'0')*10+int(f[3]-'0') {
			t.Errorf("%s: %d, %v", f, v, err)
		}
	}
}

func TestParseRelFileName(t *testing.T) {
	good := []struct {
		name string
		want format.RelFile
	}{
		{"16384", format.RelFile{Number: 16384}},
		{"1", format.RelFile{Number: 1}},
		{"16384_fsm", format.RelFile{Number: 16384, Fork: format.ForkFSM}},
		{"16384_vm", format.RelFile{Number: 16384, Fork: format.ForkVM}},
		{"16384_init", format.RelFile{Number: 16384, Fork: format.ForkInit}},
		{"16384.1", format.RelFile{Number: 16384, Segno: 1}},
		{"16384_vm.2", format.RelFile{Number: 16384, Fork: format.ForkVM, Segno: 2}},
		{"16384_init.10", format.RelFile{Number: 16384, Fork: format.ForkInit, Segno: 10}},
		{"4294967295", format.RelFile{Number: 4294967295}},
		{"7.4294967295", format.RelFile{Number: 7, Segno: 4294967295}},
	}
	for _, tt := range good {
		got, ok := format.ParseRelFileName(tt.name)
		if !ok || got != tt.want {
			t.Errorf("ParseRelFileName(%q) = %+v, %v; want %+v", tt.name, got, ok, tt.want)
		}
		if s := got.String(); s != tt.name {
			t.Errorf("%+v.String() = %q, want %q", got, s, tt.name)
		}
	}
	bad := []string{
		"", "0", "016384", "00", "16384.0", "16384.01", "16384.", "16384_", "16384_foo", "16384_main",
		"16384_vmx", "16384_fsm_vm", "t3_16384", "t3_16384_vm", "4294967296", "99999999999999999999",
		"16384.4294967296", "16384.1.2", "16384 ", " 16384", "+16384", "-1", "16384.-1", "16384_vm.0",
		"pg_internal.init", "PG_VERSION", "INCREMENTAL.16384", "16384.1a", "１６３８４",
	}
	for _, name := range bad {
		if got, ok := format.ParseRelFileName(name); ok {
			t.Errorf("ParseRelFileName(%q) = %+v, true; want false", name, got)
		}
	}
	// String then parse is the identity on every valid value.
	for _, r := range []format.RelFile{{Number: 1}, {Number: 99, Fork: format.ForkFSM, Segno: 3}, {Number: 4294967295, Fork: format.ForkInit, Segno: 4294967295}} {
		if back, ok := format.ParseRelFileName(r.String()); !ok || back != r {
			t.Errorf("ParseRelFileName(%q) = %+v, %v", r.String(), back, ok)
		}
	}
}

// sha256hex is used by the manifest tests too.
func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
