package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
	"testing"
)

type errnoCase struct {
	err  error
	want syscall.Errno
	logs bool
}

// TestErrno checks the one mapping from errors to the kernel's errnos, and
// that only what becomes EIO is logged and counted; and readErrno, for a
// read of the chain's data: a vanished or refused backup file is EIO to
// the reader, logged and counted, never ENOENT.
func TestErrno(t *testing.T) {
	var logged []string
	m := &Mount{opts: Options{Log: func(s string) { logged = append(logged, s) }}}
	for _, f := range []struct {
		name  string
		fn    func(error, string, ...any) syscall.Errno
		cases []errnoCase
	}{
		{"errno", m.errno, []errnoCase{
			{nil, 0, false},
			{context.Canceled, syscall.EINTR, false},
			{fmt.Errorf("read: %w", context.DeadlineExceeded), syscall.EINTR, false},
			{fmt.Errorf("write: %w", syscall.ENOSPC), syscall.ENOSPC, false},
			{fmt.Errorf("open: %w", fs.ErrNotExist), syscall.ENOENT, false},
			{syscall.EIO, syscall.EIO, true},
			{errors.New("short read: 3 of 8192 bytes"), syscall.EIO, true},
		}},
		{"readErrno", m.readErrno, []errnoCase{
			{nil, 0, false},
			{context.Canceled, syscall.EINTR, false},
			{fmt.Errorf("open: %w", fs.ErrNotExist), syscall.EIO, true},
			{fmt.Errorf("open: %w", syscall.EACCES), syscall.EIO, true},
			{errors.New("short read: 3 of 8192 bytes"), syscall.EIO, true},
		}},
	} {
		for _, c := range f.cases {
			logged = nil
			before := m.stats.ioErrors.Load()
			if got := f.fn(c.err, "read %s at %d", "base/5/16384", 8192); got != c.want {
				t.Errorf("%s(%v) = %v, want %v", f.name, c.err, got, c.want)
			}
			counted := m.stats.ioErrors.Load() - before
			if c.logs != (len(logged) == 1) || c.logs != (counted == 1) {
				t.Errorf("%s(%v): logged %q, counted %d; want logged and counted: %v", f.name, c.err, logged, counted, c.logs)
			}
			if c.logs && !strings.Contains(logged[0], "read base/5/16384 at 8192: ") {
				t.Errorf("%s(%v) logged %q, which does not say what failed", f.name, c.err, logged[0])
			}
		}
	}
}
