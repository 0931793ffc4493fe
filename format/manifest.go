package format

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Manifest is a parsed backup_manifest.
type Manifest struct {
	Version int // 1 or 2
	// SystemIdentifier is only in version 2 manifests.
	SystemIdentifier    uint64
	HasSystemIdentifier bool
	Files               []ManifestFile // in manifest order
	WALRanges           []WALRange
	Checksum            [sha256.Size]byte // the Manifest-Checksum, verified

	index map[string]int
}

// ManifestFile is one entry of the Files list.
type ManifestFile struct {
	Path         string // decoded from Encoded-Path when the name is not UTF-8
	Size         int64
	LastModified string // as written; PostgreSQL never checks it
	Algorithm    ChecksumType
	Checksum     []byte // nil when Algorithm is ChecksumNone
}

// WALRange is one entry of WAL-Ranges.
type WALRange struct {
	TLI        uint32
	Start, End LSN
}

// Lookup finds the entry for path.
func (m *Manifest) Lookup(path string) (*ManifestFile, bool) {
	i, ok := m.index[path]
	if !ok {
		return nil, false
	}
	return &m.Files[i], true
}

// ParseManifest parses and checks the backup_manifest at path with the rules
// of PostgreSQL's parse_manifest.c: the same structure, the same required
// fields, no duplicate paths, and a Manifest-Checksum that matches.
func ParseManifest(data []byte, path string) (*Manifest, error) {
	p := manifestParser{lex: jsonLexer{data: data}, path: path, m: &Manifest{index: map[string]int{}}}
	if err := p.parse(); err != nil {
		return nil, err
	}
	if err := p.verifyChecksum(); err != nil {
		return nil, err
	}
	return p.m, nil
}

type manifestParser struct {
	lex      jsonLexer
	path     string
	m        *Manifest
	checksum *string
}

func (p *manifestParser) fail(off int, msg string) error {
	return p.errf(off, "could not parse backup manifest: %s", msg)
}

// errf makes an error about the manifest: the message names the file, and
// Bare has pg_combinebackup's wording, which does not.
func (p *manifestParser) errf(off int, format string, args ...any) *Error {
	bare := fmt.Sprintf(format, args...)
	return &Error{Path: p.path, Off: int64(off), Msg: p.path + ": " + bare, Bare: bare}
}

// parse walks the fixed document shape: an object whose first field is the
// version, then System-Identifier, Files, WAL-Ranges and Manifest-Checksum
// in any order, nothing after it.
func (p *manifestParser) parse() error {
	if err := p.expect('{'); err != nil {
		return err
	}
	sawVersion := false
	for {
		t, err := p.lex.next()
		if err != nil {
			return p.fail(t.off, err.Error())
		}
		if t.kind == '}' || t.kind == 0 {
			return p.fail(t.off, "manifest ended unexpectedly")
		}
		if t.kind != 's' {
			return p.fail(t.off, "expected object field name")
		}
		if err := p.expect(':'); err != nil {
			return err
		}
		name := t.text
		switch {
		case !sawVersion:
			if name != "PostgreSQL-Backup-Manifest-Version" {
				return p.fail(t.off, "expected version indicator")
			}
			sawVersion = true
			v, off, err := p.scalar()
			if err != nil {
				return err
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return p.fail(off, "manifest version not an integer")
			}
			if n != 1 && n != 2 {
				return p.fail(off, "unexpected manifest version")
			}
			p.m.Version = int(n)
		case name == "System-Identifier":
			v, off, err := p.scalar()
			if err != nil {
				return err
			}
			id, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return p.fail(off, "manifest system identifier not an integer")
			}
			p.m.SystemIdentifier, p.m.HasSystemIdentifier = id, true
		case name == "Files":
			if err := p.array(p.file); err != nil {
				return err
			}
		case name == "WAL-Ranges":
			if err := p.array(p.walRange); err != nil {
				return err
			}
		case name == "Manifest-Checksum":
			v, _, err := p.scalar()
			if err != nil {
				return err
			}
			p.checksum = &v
			// The checksum must be the last field.
			t, err := p.lex.next()
			if err != nil {
				return p.fail(t.off, err.Error())
			}
			if t.kind != '}' {
				return p.fail(t.off, "expected end of manifest after Manifest-Checksum")
			}
			t, err = p.lex.next()
			if err != nil {
				return p.fail(t.off, err.Error())
			}
			if t.kind != 0 {
				return p.fail(t.off, "unexpected data after end of manifest")
			}
			return nil
		default:
			return p.fail(t.off, "unrecognized top-level field")
		}
		t, err = p.lex.next()
		if err != nil {
			return p.fail(t.off, err.Error())
		}
		if t.kind == '}' {
			return p.fail(t.off, "manifest ended unexpectedly")
		}
		if t.kind != ',' {
			return p.fail(t.off, "expected \",\" or \"}\"")
		}
	}
}

func (p *manifestParser) expect(kind byte) error {
	t, err := p.lex.next()
	if err != nil {
		return p.fail(t.off, err.Error())
	}
	if t.kind != kind {
		if t.kind == 0 {
			return p.fail(t.off, "manifest ended unexpectedly")
		}
		if msg, ok := unexpectedValue(t.kind); ok && (kind == '{' || kind == '[') {
			return p.fail(t.off, msg)
		}
		return p.fail(t.off, fmt.Sprintf("expected %q", kind))
	}
	return nil
}

// unexpectedValue is PostgreSQL's message for a value of the wrong kind
// where the manifest's shape wants another (parse_manifest.c's semantic
// callbacks fail on the value's first token: "unexpected array start" for
// "Files": [[...]], "unexpected scalar" for "Files": [1]); ok is false for
// a token that starts no value, a syntax error.
func unexpectedValue(kind byte) (msg string, ok bool) {
	switch kind {
	case '{':
		return "unexpected object start", true
	case '[':
		return "unexpected array start", true
	case 's', 'n', 'l':
		return "unexpected scalar", true
	}
	return "", false
}

// scalar reads a string or number value and returns its text.
func (p *manifestParser) scalar() (string, int, error) {
	t, err := p.lex.next()
	if err != nil {
		return "", t.off, p.fail(t.off, err.Error())
	}
	switch t.kind {
	case 's', 'n':
		return t.text, t.off, nil
	case 0:
		return "", t.off, p.fail(t.off, "manifest ended unexpectedly")
	}
	if msg, ok := unexpectedValue(t.kind); ok {
		return "", t.off, p.fail(t.off, msg)
	}
	return "", t.off, p.fail(t.off, "unexpected scalar")
}

// array reads "[ obj, obj, ... ]", calling each for every object.
func (p *manifestParser) array(each func(start int, fields map[string]string) error) error {
	if err := p.expect('['); err != nil {
		return err
	}
	for first := true; ; first = false {
		t, err := p.lex.next()
		if err != nil {
			return p.fail(t.off, err.Error())
		}
		if t.kind == ']' && first {
			return nil
		}
		if !first {
			if t.kind == ']' {
				return nil
			}
			if t.kind != ',' {
				return p.fail(t.off, "expected \",\" or \"]\"")
			}
			if t, err = p.lex.next(); err != nil {
				return p.fail(t.off, err.Error())
			}
		}
		if t.kind != '{' {
			if msg, ok := unexpectedValue(t.kind); ok {
				return p.fail(t.off, msg)
			}
			return p.fail(t.off, "unexpected scalar")
		}
		fields, err := p.object()
		if err != nil {
			return err
		}
		if err := each(t.off, fields); err != nil {
			return err
		}
	}
}

// object reads the fields of a flat object whose '{' was consumed.
func (p *manifestParser) object() (map[string]string, error) {
	fields := map[string]string{}
	for first := true; ; first = false {
		t, err := p.lex.next()
		if err != nil {
			return nil, p.fail(t.off, err.Error())
		}
		if t.kind == '}' {
			return fields, nil
		}
		if !first {
			if t.kind != ',' {
				return nil, p.fail(t.off, "expected \",\" or \"}\"")
			}
			if t, err = p.lex.next(); err != nil {
				return nil, p.fail(t.off, err.Error())
			}
		}
		if t.kind != 's' {
			return nil, p.fail(t.off, "expected object field name")
		}
		if err := p.expect(':'); err != nil {
			return nil, err
		}
		v, _, err := p.scalar()
		if err != nil {
			return nil, err
		}
		fields[t.text] = v
	}
}

func (p *manifestParser) file(off int, f map[string]string) error {
	for k := range f {
		switch k {
		case "Path", "Encoded-Path", "Size", "Last-Modified", "Checksum-Algorithm", "Checksum":
		default:
			return p.fail(off, "unexpected file field")
		}
	}
	path, hasPath := f["Path"]
	enc, hasEnc := f["Encoded-Path"]
	size, hasSize := f["Size"]
	algo, hasAlgo := f["Checksum-Algorithm"]
	sum, hasSum := f["Checksum"]
	switch {
	case !hasPath && !hasEnc:
		return p.fail(off, "missing path name")
	case hasPath && hasEnc:
		return p.fail(off, "both path name and encoded path name")
	case !hasSize:
		return p.fail(off, "missing size")
	case !hasAlgo && hasSum:
		return p.fail(off, "checksum without algorithm")
	}
	if hasEnc {
		b, err := hex.DecodeString(enc)
		if err != nil {
			return p.fail(off, "could not decode file name")
		}
		path = string(b)
	}
	n, err := strconv.ParseUint(size, 10, 63)
	if err != nil {
		return p.fail(off, "file size is not an integer")
	}
	mf := ManifestFile{Path: path, Size: int64(n), LastModified: f["Last-Modified"]}
	if hasAlgo {
		t, ok := ParseChecksumType(algo)
		if !ok {
			return p.errf(off, "unrecognized checksum algorithm: %q", algo)
		}
		mf.Algorithm = t
	}
	if sum != "" {
		b, err := hex.DecodeString(sum)
		if err != nil {
			return p.errf(off, "invalid checksum for file %q: %q", path, sum)
		}
		mf.Checksum = b
	}
	if _, dup := p.m.index[path]; dup {
		return p.errf(off, "duplicate path name in backup manifest: %q", path)
	}
	p.m.index[path] = len(p.m.Files)
	p.m.Files = append(p.m.Files, mf)
	return nil
}

func (p *manifestParser) walRange(off int, f map[string]string) error {
	for k := range f {
		switch k {
		case "Timeline", "Start-LSN", "End-LSN":
		default:
			return p.fail(off, "unexpected WAL range field")
		}
	}
	tli, hasTLI := f["Timeline"]
	start, hasStart := f["Start-LSN"]
	end, hasEnd := f["End-LSN"]
	switch {
	case !hasTLI:
		return p.fail(off, "missing timeline")
	case !hasStart:
		return p.fail(off, "missing start LSN")
	case !hasEnd:
		return p.fail(off, "missing end LSN")
	}
	t, err := strconv.ParseUint(tli, 10, 32)
	if err != nil {
		return p.fail(off, "timeline is not an integer")
	}
	// Like sscanf("%X/%X"), text after the LSN is ignored.
	s, _, ok := scanLSN([]byte(start))
	if !ok {
		return p.fail(off, "could not parse start LSN")
	}
	e, _, ok := scanLSN([]byte(end))
	if !ok {
		return p.fail(off, "could not parse end LSN")
	}
	p.m.WALRanges = append(p.m.WALRanges, WALRange{TLI: uint32(t), Start: s, End: e})
	return nil
}

// verifyChecksum checks the Manifest-Checksum: SHA-256 of everything up to
// and including the second-to-last newline.
func (p *manifestParser) verifyChecksum() error {
	data := p.lex.data
	last := bytes.LastIndexByte(data, '\n')
	if last < 0 || bytes.LastIndexByte(data[:last], '\n') < 0 {
		return p.fail(len(data), "expected at least 2 lines")
	}
	if last != len(data)-1 {
		return p.fail(len(data), "last line not newline-terminated")
	}
	penultimate := bytes.LastIndexByte(data[:last], '\n')
	if p.checksum == nil {
		return p.errf(-1, "manifest has no checksum")
	}
	want, err := hex.DecodeString(*p.checksum)
	if err != nil || len(want) != sha256.Size {
		return p.errf(penultimate+1, "invalid manifest checksum: %q", *p.checksum)
	}
	got := sha256.Sum256(data[:penultimate+1])
	if !bytes.Equal(got[:], want) {
		return p.errf(penultimate+1, "manifest checksum mismatch")
	}
	copy(p.m.Checksum[:], want)
	return nil
}

// jsonToken is one JSON token: kind is one of {}[]:, or 's' (string, text
// unescaped), 'n' (number, literal text), 'l' (true/false/null), 0 at EOF.
type jsonToken struct {
	kind byte
	text string
	off  int
}

type jsonLexer struct {
	data []byte
	pos  int
}

func (l *jsonLexer) next() (jsonToken, error) {
	for l.pos < len(l.data) {
		switch l.data[l.pos] {
		case ' ', '\t', '\n', '\r':
			l.pos++
			continue
		}
		break
	}
	start := l.pos
	if l.pos >= len(l.data) {
		return jsonToken{off: start}, nil
	}
	c := l.data[l.pos]
	switch {
	case bytes.IndexByte([]byte("{}[]:,"), c) >= 0:
		l.pos++
		return jsonToken{kind: c, off: start}, nil
	case c == '"':
		s, err := l.str()
		return jsonToken{kind: 's', text: s, off: start}, err
	case c == '-' || (c >= '0' && c <= '9'):
		s, err := l.number()
		return jsonToken{kind: 'n', text: s, off: start}, err
	}
	for _, lit := range []string{"true", "false", "null"} {
		if bytes.HasPrefix(l.data[l.pos:], []byte(lit)) {
			l.pos += len(lit)
			return jsonToken{kind: 'l', text: lit, off: start}, nil
		}
	}
	return jsonToken{off: start}, fmt.Errorf("invalid token at byte %d", start)
}

// number scans a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (l *jsonLexer) number() (string, error) {
	start := l.pos
	d := l.data
	digits := func() int {
		n := 0
		for l.pos < len(d) && d[l.pos] >= '0' && d[l.pos] <= '9' {
			l.pos++
			n++
		}
		return n
	}
	if d[l.pos] == '-' {
		l.pos++
	}
	intStart := l.pos
	if n := digits(); n == 0 || (n > 1 && d[intStart] == '0') {
		return "", fmt.Errorf("invalid number at byte %d", start)
	}
	if l.pos < len(d) && d[l.pos] == '.' {
		l.pos++
		if digits() == 0 {
			return "", fmt.Errorf("invalid number at byte %d", start)
		}
	}
	if l.pos < len(d) && (d[l.pos] == 'e' || d[l.pos] == 'E') {
		l.pos++
		if l.pos < len(d) && (d[l.pos] == '+' || d[l.pos] == '-') {
			l.pos++
		}
		if digits() == 0 {
			return "", fmt.Errorf("invalid number at byte %d", start)
		}
	}
	return string(d[start:l.pos]), nil
}

// str scans a JSON string starting at its opening quote.
func (l *jsonLexer) str() (string, error) {
	start := l.pos
	l.pos++
	var out []byte
	for {
		if l.pos >= len(l.data) {
			return "", fmt.Errorf("unterminated string at byte %d", start)
		}
		c := l.data[l.pos]
		switch {
		case c == '"':
			l.pos++
			return string(out), nil
		case c < 0x20:
			return "", fmt.Errorf("control character in string at byte %d", l.pos)
		case c != '\\':
			out = append(out, c)
			l.pos++
			continue
		}
		if l.pos+1 >= len(l.data) {
			return "", fmt.Errorf("unterminated string at byte %d", start)
		}
		e := l.data[l.pos+1]
		l.pos += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, err := l.hex4()
			if err != nil {
				return "", err
			}
			if r >= 0xd800 && r < 0xdc00 {
				// A high surrogate must be followed by an escaped low one.
				if l.pos+1 < len(l.data) && l.data[l.pos] == '\\' && l.data[l.pos+1] == 'u' {
					l.pos += 2
					lo, err := l.hex4()
					if err != nil {
						return "", err
					}
					if lo < 0xdc00 || lo > 0xdfff {
						return "", fmt.Errorf("invalid Unicode surrogate pair at byte %d", l.pos-12)
					}
					r = 0x10000 + (r-0xd800)<<10 + (lo - 0xdc00)
				} else {
					return "", fmt.Errorf("invalid Unicode surrogate pair at byte %d", l.pos-6)
				}
			} else if r >= 0xdc00 && r <= 0xdfff || r == 0 {
				return "", fmt.Errorf("unsupported Unicode escape sequence at byte %d", l.pos-6)
			}
			out = utf8.AppendRune(out, r)
		default:
			return "", fmt.Errorf("invalid escape sequence at byte %d", l.pos-2)
		}
	}
}

func (l *jsonLexer) hex4() (rune, error) {
	if l.pos+4 > len(l.data) {
		return 0, fmt.Errorf("truncated Unicode escape at byte %d", l.pos)
	}
	var r rune
	for _, c := range l.data[l.pos : l.pos+4] {
		d := digitValue(c)
		if d > 15 {
			return 0, fmt.Errorf("invalid Unicode escape at byte %d", l.pos)
		}
		r = r<<4 | rune(d)
	}
	l.pos += 4
	return r, nil
}
