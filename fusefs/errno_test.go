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

// TestErrno checks the one mapping from errors to the kernel's errnos, and
// that only what becomes EIO is logged and counted.
func TestErrno(t *testing.T) {
	var logged []string
	m := &Mount{opts: Options{Log: func(s string) { logged = append(logged, s) }}}
	for _, c := range []struct {
		err  error
		want syscall.Errno
		logs bool
	}{
		{nil, 0, false},
		{context.Canceled, syscall.EINTR, false},
		{fmt.Errorf("read: %w", context.DeadlineExceeded), syscall.EINTR, false},
		{fmt.Errorf("write: %w", syscall.ENOSPC), syscall.ENOSPC, false},
		{fmt.Errorf("open: %w", fs.ErrNotExist), syscall.ENOENT, false},
		{syscall.EIO, syscall.EIO, true},
		{errors.New("short read: 3 of 8192 bytes"), syscall.EIO, true},
	} {
		logged = nil
		before := m.stats.ioErrors.Load()
		if got := m.errno(c.err, "read %s at %d", "base/5/16384", 8192); got != c.want {
			t.Errorf("errno(%v) = %v, want %v", c.err, got, c.want)
		}
		counted := m.stats.ioErrors.Load() - before
		if c.logs != (len(logged) == 1) || c.logs != (counted == 1) {
			t.Errorf("errno(%v): logged %q, counted %d; want logged and counted: %v", c.err, logged, counted, c.logs)
		}
		if c.logs && !strings.Contains(logged[0], "read base/5/16384 at 8192: ") {
			t.Errorf("errno(%v) logged %q, which does not say what failed", c.err, logged[0])
		}
	}

	// A read of the chain's data: a vanished backup file or a refused
	// one is EIO to the reader, logged and counted, never ENOENT.
	for _, c := range []struct {
		err  error
		want syscall.Errno
		logs bool
	}{
		{nil, 0, false},
		{context.Canceled, syscall.EINTR, false},
		{fmt.Errorf("open: %w", fs.ErrNotExist), syscall.EIO, true},
		{fmt.Errorf("open: %w", syscall.EACCES), syscall.EIO, true},
		{errors.New("short read: 3 of 8192 bytes"), syscall.EIO, true},
	} {
		logged = nil
		before := m.stats.ioErrors.Load()
		if got := m.readErrno(c.err, "read %s at %d", "base/5/16384", 8192); got != c.want {
			t.Errorf("readErrno(%v) = %v, want %v", c.err, got, c.want)
		}
		if counted := m.stats.ioErrors.Load() - before; c.logs != (len(logged) == 1) || c.logs != (counted == 1) {
			t.Errorf("readErrno(%v): logged %q, counted %d; want logged and counted: %v", c.err, logged, counted, c.logs)
		}
	}
}
