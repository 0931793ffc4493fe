package main

import (
	"context"
	"errors"

	"github.com/spf13/pflag"
)

// setupVerify is a placeholder until the verify command lands.
func setupVerify(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		return errors.New("not implemented yet")
	}
}
