package format_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
)

// fixture returns the contents of testdata/name, unpacking name.gz if only
// the gzip'd copy exists.
func fixture(tb testing.TB, name string) []byte {
	tb.Helper()
	p := filepath.Join("testdata", name)
	data, err := os.ReadFile(p)
	if err == nil {
		return data
	}
	if !errors.Is(err, os.ErrNotExist) {
		tb.Fatal(err)
	}
	gz, err := os.ReadFile(p + ".gz")
	if err != nil {
		tb.Fatalf("fixture %s: %v", name, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		tb.Fatalf("fixture %s.gz: %v", name, err)
	}
	data, err = io.ReadAll(zr)
	if err != nil {
		tb.Fatalf("fixture %s.gz: %v", name, err)
	}
	return data
}

// checkFormatError asserts err is a *format.Error matching ErrCorrupt whose
// message names path and contains want.
func checkFormatError(tb testing.TB, err error, path, want string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("no error, want one containing %q", want)
	}
	var fe *format.Error
	if !errors.As(err, &fe) {
		tb.Fatalf("error %q (%T) is not a *format.Error", err, err)
	}
	if !errors.Is(err, format.ErrCorrupt) {
		tb.Errorf("errors.Is(%q, ErrCorrupt) = false", err)
	}
	if fe.Path != path {
		tb.Errorf("Error.Path = %q, want %q", fe.Path, path)
	}
	if !strings.Contains(err.Error(), path) {
		tb.Errorf("error %q does not name the file %q", err, path)
	}
	if !strings.Contains(err.Error(), want) {
		tb.Errorf("error %q does not contain %q", err, want)
	}
	if fe.Msg != err.Error() {
		tb.Errorf("Error() = %q, Msg = %q", err.Error(), fe.Msg)
	}
}
