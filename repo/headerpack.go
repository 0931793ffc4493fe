package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"

	"github.com/combinefs/combinefs/format"
)

// A point's marker object on an object store holds its name and a line
// end, then (since headerPackVersion 1) its header pack: the header of
// every INCREMENTAL file of the point, so that a mount reads them all in
// the one GET of the marker instead of a ranged GET per file. A marker
// that holds only the name (written before packs existed) has no pack.
//
//	NAME "\n"
//	"CFHP" version(1 byte) count(uvarint)
//	count times: len(uvarint) path, len(uvarint) header
//	CRC-32C (little-endian) of everything from "CFHP" on
//
// A header is the file's exact first bytes: its magic, block count,
// truncation length and block numbers, without the padding. A reader
// trusts an entry only if it parses and implies the object's listed size
// (checkPackedHeader), and falls back to reading the object otherwise.
const (
	headerPackMagic   = "CFHP"
	headerPackVersion = 1
	// maxPackedPath bounds a path in a pack (a decoder's sanity limit).
	maxPackedPath = 4096
	// maxPackedHeader is the longest header of a segment: every block.
	maxPackedHeader = 12 + 4*format.RelSegSize
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrHeaderPackVersion is a pack of a later format: not an error of the
// point, only one this combinefs cannot use.
var ErrHeaderPackVersion = errors.New("header pack of a later format")

// HeaderPack maps each INCREMENTAL file of a point (by path in the point)
// to its header.
type HeaderPack map[string][]byte

// Add records the header h of the INCREMENTAL file path of size bytes if
// h is a well-formed header of a file of that size; it reports whether it
// did.
func (p HeaderPack) Add(path string, h []byte, size int64) bool {
	if len(path) > maxPackedPath || checkPackedHeader(h, size, path) != nil {
		return false
	}
	p[path] = bytes.Clone(h)
	return true
}

// Marker is the content of point name's marker object with the pack.
func (p HeaderPack) Marker(name string) []byte {
	return p.encode([]byte(name + "\n"))
}

// encode appends the pack to dst.
func (p HeaderPack) encode(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, headerPackMagic...)
	dst = append(dst, headerPackVersion)
	dst = binary.AppendUvarint(dst, uint64(len(p)))
	paths := make([]string, 0, len(p))
	for k := range p {
		paths = append(paths, k)
	}
	slices.Sort(paths)
	for _, k := range paths {
		dst = binary.AppendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
		dst = binary.AppendUvarint(dst, uint64(len(p[k])))
		dst = append(dst, p[k]...)
	}
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// ParseMarker reads the marker object of point name: its pack, or nil
// when it has none (a marker of a point written before packs existed).
// An error is a pack that is damaged (its checksum, its framing), or of a
// later format (ErrHeaderPackVersion).
func ParseMarker(name string, data []byte) (HeaderPack, error) {
	line, rest, ok := bytes.Cut(data, []byte("\n"))
	if !ok || string(line) != name {
		return nil, fmt.Errorf("marker of point %s does not start with its name", name)
	}
	if len(rest) == 0 {
		return nil, nil
	}
	return decodeHeaderPack(rest)
}

// decodeHeaderPack decodes a pack; it never panics on any input.
func decodeHeaderPack(b []byte) (HeaderPack, error) {
	if len(b) < len(headerPackMagic)+1+4 || string(b[:len(headerPackMagic)]) != headerPackMagic {
		return nil, errors.New("header pack: no pack header")
	}
	if v := b[len(headerPackMagic)]; v != headerPackVersion {
		return nil, fmt.Errorf("%w (version %d)", ErrHeaderPackVersion, v)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[len(body):]) {
		return nil, errors.New("header pack: checksum mismatch")
	}
	d := body[len(headerPackMagic)+1:]
	next := func(limit uint64) ([]byte, error) {
		n, k := binary.Uvarint(d)
		if k <= 0 || n > limit || n > uint64(len(d)-k) {
			return nil, errors.New("header pack: bad length")
		}
		v := d[k : k+int(n)]
		d = d[k+int(n):]
		return v, nil
	}
	count, k := binary.Uvarint(d)
	if k <= 0 || count > uint64(len(d)) {
		return nil, errors.New("header pack: bad count")
	}
	d = d[k:]
	p := make(HeaderPack, count)
	for range count {
		path, err := next(maxPackedPath)
		if err != nil {
			return nil, err
		}
		h, err := next(maxPackedHeader)
		if err != nil {
			return nil, err
		}
		if _, dup := p[string(path)]; dup {
			return nil, fmt.Errorf("header pack: %q twice", path)
		}
		p[string(path)] = bytes.Clone(h)
	}
	if len(d) != 0 {
		return nil, errors.New("header pack: bytes after the last entry")
	}
	return p, nil
}

// checkPackedHeader checks that h is exactly the header of an INCREMENTAL
// file of size bytes: it parses, has no bytes past its block numbers, and
// its blocks end the file.
func checkPackedHeader(h []byte, size int64, path string) error {
	inc, err := format.ParseIncremental(bytes.NewReader(h), size, path)
	if err != nil {
		return err
	}
	if want := 12 + 4*len(inc.Blocks); len(h) != want {
		return fmt.Errorf("%s: packed header of %d bytes, %d blocks need %d", path, len(h), len(inc.Blocks), want)
	}
	if inc.FileSize() != size {
		return fmt.Errorf("%s: its packed header implies %d bytes, the object has %d", path, inc.FileSize(), size)
	}
	return nil
}

// HeaderTap collects the header of an INCREMENTAL file from its first
// bytes as they are written or read: a capture and an upload see each
// file's start pass.
type HeaderTap struct {
	buf  []byte
	want int // the header's length once its fixed part is in; 0 before
	bad  bool
}

// NewHeaderTap returns a tap for the file path, or nil unless it is an
// INCREMENTAL file.
func NewHeaderTap(path string) *HeaderTap {
	base := path[strings.LastIndexByte(path, '/')+1:]
	if _, ok := format.IsIncrementalName(base); !ok {
		return nil
	}
	return &HeaderTap{}
}

// Write takes the next bytes of the file (a nil tap takes nothing).
func (t *HeaderTap) Write(p []byte) {
	if t == nil || t.bad {
		return
	}
	for len(p) > 0 && (t.want == 0 || len(t.buf) < t.want) {
		need := 12
		if t.want > 0 {
			need = t.want
		}
		k := min(need-len(t.buf), len(p))
		t.buf = append(t.buf, p[:k]...)
		p = p[k:]
		if t.want == 0 && len(t.buf) == 12 {
			n := binary.NativeEndian.Uint32(t.buf[4:])
			if n > format.RelSegSize {
				t.bad = true
				return
			}
			t.want = 12 + 4*int(n)
		}
	}
}

// Header is the header collected, if all of it passed.
func (t *HeaderTap) Header() ([]byte, bool) {
	if t == nil || t.bad || t.want == 0 || len(t.buf) < t.want {
		return nil, false
	}
	return t.buf, true
}

// PointHeaders is the header pack in point name's marker, for verify to
// check the point's INCREMENTAL files against: nil for a local
// repository, a marker without a pack, or a pack of a later format; an
// error for a damaged one.
func (r *Repo) PointHeaders(ctx context.Context, name string) (HeaderPack, error) {
	if !r.remote() {
		return nil, nil
	}
	data, err := r.Store.ReadRange(ctx, MarkerName(name), 0, -1)
	if err != nil {
		return nil, err
	}
	pack, err := ParseMarker(name, data)
	if errors.Is(err, ErrHeaderPackVersion) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", r.Dir, MarkerName(name), err)
	}
	return pack, nil
}
