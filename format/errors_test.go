package format_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/combinefs/combinefs/format"
)

func TestError(t *testing.T) {
	e := &format.Error{Path: "a/b", Off: 7, Msg: `file "a/b" is broken`}
	if e.Error() != e.Msg {
		t.Errorf("Error() = %q", e.Error())
	}
	wrapped := fmt.Errorf("reading chain: %w", e)
	if !errors.Is(wrapped, format.ErrCorrupt) {
		t.Errorf("errors.Is(wrapped, ErrCorrupt) = false")
	}
	var fe *format.Error
	if !errors.As(wrapped, &fe) || fe != e {
		t.Errorf("errors.As failed")
	}
	if errors.Is(e, io.EOF) || errors.Is(format.ErrCorrupt, e) {
		t.Errorf("*Error matches unrelated errors")
	}
}

// TestErrorsNameTheFile runs one failing input through every parser and
// checks the common contract: a *format.Error, ErrCorrupt, the path in the
// message.
func TestErrorsNameTheFile(t *testing.T) {
	const p = "/some/where/file with spaces"
	for name, parse := range map[string]func() error{
		"incremental": func() error { _, err := format.ParseIncremental(errReaderAt{nil, io.EOF}, 0, p); return err },
		"label":       func() error { _, err := format.ParseBackupLabel(nil, p); return err },
		"manifest":    func() error { _, err := format.ParseManifest([]byte("{}"), p); return err },
		"control":     func() error { _, err := format.ParseControlFile(make([]byte, 8192), p); return err },
		"pg_version":  func() error { _, err := format.ParsePGVersion(nil, p); return err },
	} {
		t.Run(name, func(t *testing.T) { checkFormatError(t, parse(), p, "") })
	}
}
