package format

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"strings"
)

// ChecksumType is a per-file manifest checksum algorithm.
type ChecksumType int

// The algorithms PostgreSQL offers (src/common/checksum_helper.c).
const (
	ChecksumNone ChecksumType = iota
	ChecksumCRC32C
	ChecksumSHA224
	ChecksumSHA256
	ChecksumSHA384
	ChecksumSHA512
)

var checksumNames = [...]string{"NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"}

// String is the name used in manifests.
func (t ChecksumType) String() string {
	if t < 0 || int(t) >= len(checksumNames) {
		return fmt.Sprintf("ChecksumType(%d)", int(t))
	}
	return checksumNames[t]
}

// ParseChecksumType accepts the names case-insensitively, as
// pg_checksum_parse_type does.
func ParseChecksumType(s string) (ChecksumType, bool) {
	for i, n := range checksumNames {
		if strings.EqualFold(s, n) {
			return ChecksumType(i), true
		}
	}
	return ChecksumNone, false
}

// Size is the length of a checksum of this type in bytes.
func (t ChecksumType) Size() int {
	switch t {
	case ChecksumCRC32C:
		return 4
	case ChecksumSHA224:
		return sha256.Size224
	case ChecksumSHA256:
		return sha256.Size
	case ChecksumSHA384:
		return sha512.Size384
	case ChecksumSHA512:
		return sha512.Size
	}
	return 0
}

// New returns a hash computing this checksum, or nil for ChecksumNone.
// CRC-32C sums come out as the uint32 in host byte order, because
// PostgreSQL prints the memcpy of the host-order value.
func (t ChecksumType) New() hash.Hash {
	switch t {
	case ChecksumCRC32C:
		return &crc32cLE{}
	case ChecksumSHA224:
		return sha256.New224()
	case ChecksumSHA256:
		return sha256.New()
	case ChecksumSHA384:
		return sha512.New384()
	case ChecksumSHA512:
		return sha512.New()
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32cLE is CRC-32C whose Sum is in host byte order, unlike hash/crc32 (big-endian).
type crc32cLE struct{ crc uint32 }

func (c *crc32cLE) Write(p []byte) (int, error) {
	c.crc = crc32.Update(c.crc, castagnoli, p)
	return len(p), nil
}
func (c *crc32cLE) Sum(b []byte) []byte { return binary.NativeEndian.AppendUint32(b, c.crc) }
func (c *crc32cLE) Reset()              { c.crc = 0 }
func (c *crc32cLE) Size() int           { return 4 }
func (c *crc32cLE) BlockSize() int      { return 1 }

// CRC32C is PostgreSQL's COMP_CRC32C over p (used for pg_control).
func CRC32C(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }
