package format

import (
	"encoding/binary"
	"fmt"
)

// ControlFileSize is the size of global/pg_control (PG_CONTROL_FILE_SIZE).
const ControlFileSize = 8192

// ControlFile holds the fields of global/pg_control that chain checks need.
type ControlFile struct {
	SystemIdentifier    uint64
	Version             uint32 // pg_control_version: 1700 for PostgreSQL 17, 1800 for 18
	CatalogVersion      uint32
	DataChecksumVersion uint32 // 0 when data checksums are off
}

// controlLayout is where the fields after the fixed prefix sit; they move
// between majors (PostgreSQL 18 added default_char_signedness before the
// authentication nonce, which shifts the CRC).
type controlLayout struct {
	dataChecksumOff int
	crcOff          int // offsetof(ControlFileData, crc): the CRC covers the bytes before it
}

var controlLayouts = map[uint32]controlLayout{
	1700: {dataChecksumOff: 0xfc, crcOff: 0x120},
	1800: {dataChecksumOff: 0xfc, crcOff: 0x124},
}

// ControlVersionForMajor maps a PostgreSQL major to its pg_control_version.
func ControlVersionForMajor(major int) (uint32, bool) {
	v := uint32(major * 100)
	_, ok := controlLayouts[v]
	return v, ok
}

// ParseControlFile reads the pg_control at path. The layout is chosen by the
// file's own pg_control_version; an unknown version is reported as
// pg_combinebackup does ("unexpected control file version"), a CRC mismatch
// as "CRC is incorrect".
func ParseControlFile(data []byte, path string) (*ControlFile, error) {
	if len(data) < 16 {
		return nil, errorf(path, int64(len(data)), "could not read file %q: read %d of %d", path, len(data), ControlFileSize)
	}
	cf := &ControlFile{
		SystemIdentifier: binary.NativeEndian.Uint64(data[0:]),
		Version:          binary.NativeEndian.Uint32(data[8:]),
		CatalogVersion:   binary.NativeEndian.Uint32(data[12:]),
	}
	layout, ok := controlLayouts[cf.Version]
	if !ok {
		return nil, errorf(path, 8, "%s: unexpected control file version", path)
	}
	if len(data) < layout.crcOff+4 {
		return nil, errorf(path, int64(len(data)), "could not read file %q: read %d of %d", path, len(data), ControlFileSize)
	}
	want := binary.NativeEndian.Uint32(data[layout.crcOff:])
	if CRC32C(data[:layout.crcOff]) != want {
		return nil, errorf(path, int64(layout.crcOff), "%s: CRC is incorrect", path)
	}
	cf.DataChecksumVersion = binary.NativeEndian.Uint32(data[layout.dataChecksumOff:])
	return cf, nil
}

// Major is the PostgreSQL major version that writes this control file.
func (cf *ControlFile) Major() int { return int(cf.Version / 100) }

// String is for debugging.
func (cf *ControlFile) String() string {
	return fmt.Sprintf("pg_control v%d sysid %d checksums %d", cf.Version, cf.SystemIdentifier, cf.DataChecksumVersion)
}
