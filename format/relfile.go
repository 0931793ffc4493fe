package format

import (
	"strconv"
	"strings"
)

// Fork is a relation fork.
type Fork int

// The forks, numbered as in PostgreSQL's ForkNumber.
const (
	ForkMain Fork = iota
	ForkFSM
	ForkVM
	ForkInit
)

var forkSuffixes = [...]string{"", "_fsm", "_vm", "_init"}

// RelFile names one segment of one fork of a relation.
type RelFile struct {
	Number uint32 // relfilenumber
	Fork   Fork
	Segno  uint32
}

// String is the file name: 16384, 16384_vm, 16384.2.
func (r RelFile) String() string {
	s := strconv.FormatUint(uint64(r.Number), 10) + forkSuffixes[r.Fork]
	if r.Segno > 0 {
		s += "." + strconv.FormatUint(uint64(r.Segno), 10)
	}
	return s
}

// ParseRelFileName parses a relation file name the way PostgreSQL's
// parse_filename_for_nontemp_relation does: digits without a leading zero,
// an optional _fsm/_vm/_init, an optional .N segment (no leading zero), and
// nothing else. Temporary relations (t3_16384) are not relation files here.
func ParseRelFileName(name string) (RelFile, bool) {
	var r RelFile
	n, rest, ok := leadingUint32(name)
	if !ok {
		return RelFile{}, false
	}
	r.Number = n
	if strings.HasPrefix(rest, "_") {
		r.Fork = -1
		for f := ForkFSM; f <= ForkInit; f++ {
			if strings.HasPrefix(rest, forkSuffixes[f]) {
				r.Fork = f
				rest = rest[len(forkSuffixes[f]):]
				break
			}
		}
		if r.Fork < 0 {
			return RelFile{}, false
		}
	}
	if strings.HasPrefix(rest, ".") {
		s, more, ok := leadingUint32(rest[1:])
		if !ok {
			return RelFile{}, false
		}
		r.Segno, rest = s, more
	}
	if rest != "" {
		return RelFile{}, false
	}
	return r, true
}

// leadingUint32 parses a positive decimal without a leading zero that fits
// in 32 bits at the start of s.
func leadingUint32(s string) (uint32, string, bool) {
	if s == "" || s[0] < '1' || s[0] > '9' {
		return 0, s, false
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	v, err := strconv.ParseUint(s[:i], 10, 32)
	if err != nil {
		return 0, s, false
	}
	return uint32(v), s[i:], true
}
