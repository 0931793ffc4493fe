package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchTB is the testing.TB the integration harness needs, outside of
// go test. Fatal panics with fatalSignal, which run recovers: a failing step
// is reported and the rest of the benchmark goes on. Cleanups run in reverse
// order when the step (or the whole run) ends, and on SIGINT/SIGTERM.
//
// The embedded nil testing.TB only supplies the interface's unexported
// method; every method the harness calls is implemented here.
type benchTB struct {
	testing.TB
	name   string
	log    io.Writer
	parent *benchTB

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	errs     []string
}

type fatalSignal struct{}

func newRootTB(name string, log io.Writer) *benchTB { return &benchTB{name: name, log: log} }

// run runs fn as a step with its own cleanups; it returns the step's error
// (a Fatal, an Errorf or a panic), nil when it succeeded.
func (t *benchTB) run(name string, fn func(t *benchTB)) (err error) {
	if aborting.Load() {
		return fmt.Errorf("interrupted")
	}
	c := &benchTB{name: t.name + "/" + name, log: t.log, parent: t}
	registerActive(c)
	defer func() {
		// After a signal the handler still needs the step's cleanups.
		if !aborting.Load() {
			unregisterActive(c)
		}
	}()
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fatalSignal); !ok {
					c.mu.Lock()
					c.failed = true
					c.errs = append(c.errs, fmt.Sprintf("panic: %v\n%s", r, debug.Stack()))
					c.mu.Unlock()
				}
			}
		}()
		fn(c)
	}()
	c.runCleanups()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed {
		msg := strings.Join(c.errs, "; ")
		if msg == "" {
			msg = "failed"
		}
		return fmt.Errorf("%s", msg)
	}
	return nil
}

// runCleanups runs the step's cleanups, unless a signal arrived: then the
// signal handler runs them all (cleanupAll), and this goroutine must
// not race it to the exit.
func (t *benchTB) runCleanups() { t.runCleanupsNow(false) }

func (t *benchTB) runCleanupsNow(handler bool) {
	for {
		if aborting.Load() && !handler {
			return
		}
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		func() {
			// One cleanup at a time across goroutines: the signal
			// handler's pass waits for one in flight before exiting.
			cleanupMu.Lock()
			defer cleanupMu.Unlock()
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(fatalSignal); !ok {
						t.Logf("cleanup panicked: %v", r)
					}
				}
			}()
			f()
		}()
	}
}

func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *benchTB) Helper()      {}
func (t *benchTB) Name() string { return t.name }
func (t *benchTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *benchTB) Log(args ...any) { t.Logf("%s", fmt.Sprintln(args...)) }
func (t *benchTB) Logf(format string, args ...any) {
	fmt.Fprintf(t.log, "%s %s: %s\n", time.Now().Format("15:04:05.000"), t.name, strings.TrimRight(fmt.Sprintf(format, args...), "\n"))
}

func (t *benchTB) Error(args ...any) { t.Errorf("%s", fmt.Sprint(args...)) }
func (t *benchTB) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	t.Logf("ERROR: %s", msg)
	t.mu.Lock()
	t.failed = true
	t.errs = append(t.errs, msg)
	t.mu.Unlock()
}
func (t *benchTB) Fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}
func (t *benchTB) FailNow()                          { t.Fail(); panic(fatalSignal{}) }
func (t *benchTB) Fatal(args ...any)                 { t.Error(args...); panic(fatalSignal{}) }
func (t *benchTB) Fatalf(format string, args ...any) { t.Errorf(format, args...); panic(fatalSignal{}) }
func (t *benchTB) Skip(args ...any)                  { t.Fatal(append([]any{"skipped: "}, args...)...) }
func (t *benchTB) Skipf(format string, args ...any)  { t.Fatalf("skipped: "+format, args...) }
func (t *benchTB) SkipNow()                          { t.Fatal("skipped") }
func (t *benchTB) Skipped() bool                     { return false }
func (t *benchTB) Setenv(key, value string)          { os.Setenv(key, value) }
func (t *benchTB) Context() context.Context          { return context.Background() }
func (t *benchTB) TempDir() string {
	d, err := os.MkdirTemp("", "combinefs-bench-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// aborting is set on SIGINT/SIGTERM: no new step starts, and the signal
// handler runs every pending cleanup, then closes abortDone and exits.
var (
	aborting  atomic.Bool
	abortDone = make(chan struct{})
	cleanupMu sync.Mutex
)

// Steps in progress, innermost last, so a signal can run every pending
// cleanup before the process exits.
var (
	activeMu sync.Mutex
	active   []*benchTB
)

func registerActive(t *benchTB) {
	activeMu.Lock()
	active = append(active, t)
	activeMu.Unlock()
}

func unregisterActive(t *benchTB) {
	activeMu.Lock()
	defer activeMu.Unlock()
	for i := len(active) - 1; i >= 0; i-- {
		if active[i] == t {
			active = append(active[:i], active[i+1:]...)
			return
		}
	}
}

// cleanupAll runs the cleanups of every step in progress, innermost first
// (on a signal).
func cleanupAll() {
	activeMu.Lock()
	ts := append([]*benchTB(nil), active...)
	activeMu.Unlock()
	for i := len(ts) - 1; i >= 0; i-- {
		ts[i].runCleanupsNow(true)
	}
	// Wait for a cleanup another goroutine may be running.
	cleanupMu.Lock()
	cleanupMu.Unlock() //nolint:staticcheck // a barrier
}
