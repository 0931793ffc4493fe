package main

import (
	"context"
	"errors"
	"io"

	"github.com/spf13/pflag"
)

// setupFlatten is a placeholder until the flatten command lands.
func setupFlatten(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		return errors.New("not implemented yet")
	}
}

func runPgCombinebackup(ctx context.Context, args []string, stderr io.Writer) int { return 1 }
