package format

import (
	"errors"
	"fmt"
)

// ErrCorrupt matches every *Error: the contents of a backup file are not what
// PostgreSQL writes.
var ErrCorrupt = errors.New("format: corrupt backup file")

// Error reports a problem with the contents of one file.
type Error struct {
	Path string // the file, as the caller named it
	Off  int64  // byte offset of the problem, or -1 when it has none
	Msg  string // the whole message; it names Path
	// Bare is the message without the file name where pg_combinebackup
	// says it that way (manifest problems); empty otherwise.
	Bare string
}

func (e *Error) Error() string { return e.Msg }

// Is makes errors.Is(err, ErrCorrupt) true for every *Error.
func (e *Error) Is(target error) bool { return target == ErrCorrupt }

func errorf(path string, off int64, format string, args ...any) *Error {
	return &Error{Path: path, Off: off, Msg: fmt.Sprintf(format, args...)}
}
