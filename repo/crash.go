package repo

import "github.com/combinefs/combinefs/internal/crashpoint"

// CrashEnv names the phase at which a command kills itself with SIGKILL:
// the hook the kill -9 tests of expire and compact use to stop them between
// any two of their steps.
const CrashEnv = crashpoint.Env

// phase marks a point between two steps of a command that changes the
// repository.
func phase(name string) { crashpoint.At(name) }
