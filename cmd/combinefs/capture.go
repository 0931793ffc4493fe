package main

import (
	"context"
	"errors"

	"github.com/spf13/pflag"
)

// setupCapture is a placeholder until the capture command lands.
func setupCapture(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		return errors.New("not implemented yet")
	}
}
