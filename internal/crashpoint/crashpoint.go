// Package crashpoint is the hook the kill -9 tests use to stop a command
// that changes state on disk between two of its steps, to show that a crash
// there leaves the old state or the new one.
package crashpoint

import (
	"os"
	"syscall"
)

// Env names the step at which a command kills itself with SIGKILL. Unset,
// it costs a getenv per step.
const Env = "COMBINEFS_CRASH_AT"

// At marks the point between two steps named name.
func At(name string) {
	if os.Getenv(Env) == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
