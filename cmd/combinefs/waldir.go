package main

import "path/filepath"

// checkWALDir checks --waldir and makes it absolute: the server's pg_wal
// becomes a symlink to it, which must lead to the same place from anywhere.
func (o *mountOptions) checkWALDir() error {
	if o.walDir == "" {
		return nil
	}
	if o.cow == "" {
		return usageError{"--waldir needs --cow UPPERDIR"}
	}
	abs, err := filepath.Abs(o.walDir)
	if err != nil {
		return err
	}
	o.walDir = abs
	return nil
}
