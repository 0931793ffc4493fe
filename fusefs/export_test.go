package fusefs

import "time"

// SetDirectGrace sets directGrace for a test and returns the old value.
func SetDirectGrace(d time.Duration) time.Duration {
	return time.Duration(directGrace.Swap(int64(d)))
}
