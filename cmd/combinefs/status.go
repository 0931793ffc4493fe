package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/internal/mountctl"
)

func setupStatus(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var wait bool
	var every time.Duration
	f.BoolVar(&wait, "wait", false, "block until hydration is complete (fails if the mount goes away first)")
	f.DurationVar(&every, "interval", time.Second, "with --wait: how often to print progress")
	return func(ctx context.Context, args []string) error {
		mp, err := oneMountPoint(args)
		if err != nil {
			return err
		}
		for {
			h, err := hydrationOf(mp)
			if err != nil {
				return err
			}
			fmt.Fprintln(stderr, "combinefs status: "+describeHydration(mp, h))
			if h.Error != "" {
				return fmt.Errorf("hydration of %s stopped: %s", mp, h.Error)
			}
			if !wait || h.Complete {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(every):
			}
		}
	}
}

// oneMountPoint is the absolute path of the one mount point args must be.
func oneMountPoint(args []string) (string, error) {
	if len(args) != 1 {
		return "", usageError{"give one mount point"}
	}
	return filepath.Abs(args[0])
}

// hydrationOf asks the mount at mp for its hydration progress.
func hydrationOf(mp string) (*fusefs.HydrationStats, error) {
	st, err := mountctl.Read(mp)
	if err != nil || st.Mountpoint != mp {
		if mountctl.IsMounted(mp) {
			return nil, fmt.Errorf("%s is not a combinefs mount of this user (no state file %s)", mp, mountctl.StatePath(mp))
		}
		return nil, fmt.Errorf("%s is not mounted", mp)
	}
	if !mountctl.ProcessAlive(st.PID) {
		return nil, fmt.Errorf("the process %d serving %s is gone", st.PID, mp)
	}
	var s fusefs.Stats
	// A busy disk can hold the write of the stats file for seconds.
	if err := mountctl.RequestStats(st.PID, st.Stats, time.Minute, &s); err != nil {
		if !mountctl.IsMounted(mp) {
			return nil, fmt.Errorf("%s was unmounted", mp)
		}
		return nil, err
	}
	if s.Hydration == nil {
		return nil, errors.New(mp + " is not hydrating (mount it with --cow UPPERDIR --hydrate)")
	}
	return s.Hydration, nil
}

// describeHydration is the one line status prints.
func describeHydration(mp string, h *fusefs.HydrationStats) string {
	pct := 100.0
	if h.Total > 0 {
		pct = 100 * float64(h.Done) / float64(h.Total)
	}
	if h.Complete {
		return fmt.Sprintf("%s: hydration complete, %s of %s (100%%)", mp, humanBytes(h.Done), humanBytes(h.Total))
	}
	eta := "unknown"
	if h.BytesPerSec > 0 {
		eta = (time.Duration(float64(h.Total-h.Done)/h.BytesPerSec) * time.Second).Round(time.Second).String()
	}
	return fmt.Sprintf("%s: hydrating, %s of %s (%.1f%%), %s/s, ETA %s", mp, humanBytes(h.Done), humanBytes(h.Total), pct, humanBytes(int64(h.BytesPerSec)), eta)
}
