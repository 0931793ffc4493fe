package fusefs

import "time"

// SetDirectGrace sets directGrace for a test and returns the old value.
func SetDirectGrace(d time.Duration) time.Duration {
	return time.Duration(directGrace.Swap(int64(d)))
}

// SetOpenWait sets the mount's Options.HydrateOpenWait for a test (its
// hydration must be running).
func (m *Mount) SetOpenWait(d time.Duration) { m.hyd.wait.Store(int64(d)) }

// SetDirectMin sets the size from which hydration writes direct, for a
// test, and returns the old value.
func SetDirectMin(n int64) int64 { return directMin.Swap(n) }
