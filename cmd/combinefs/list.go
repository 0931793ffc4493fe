package main

import (
	"context"
	"errors"

	"github.com/spf13/pflag"
)

// setupList is a placeholder until the list command lands.
func setupList(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		return errors.New("not implemented yet")
	}
}
