package capture

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/combinefs/combinefs/format"
)

// LSN is a position in the write-ahead log, the type format uses for the
// LSNs of labels and manifests.
type LSN = format.LSN

// ParseLSN parses the text form of an LSN the server sends, "HI/LO" in
// hexadecimal with at most eight digits each side (PostgreSQL 18 pads the
// low half to eight). It is stricter than format.ParseLSN, which reads
// labels as sscanf does: a server's answer that is not an LSN is an error.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	return LSN(h<<32 | l), nil
}
