package main

import (
	"context"
	"errors"

	"github.com/spf13/pflag"
)

// setupMount is a placeholder until the mount command lands.
func setupMount(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		return errors.New("not implemented yet")
	}
}
