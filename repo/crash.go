package repo

import (
	"os"
	"syscall"
)

// CrashEnv names the phase at which a command kills itself with SIGKILL:
// the hook the kill -9 tests of expire and compact use to stop them between
// any two of their steps. Unset, it costs a getenv per phase.
const CrashEnv = "COMBINEFS_CRASH_AT"

// phase marks a point between two steps of a command that changes the
// repository.
func phase(name string) {
	if os.Getenv(CrashEnv) == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
