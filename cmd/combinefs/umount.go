package main

import (
	"context"
	"errors"

	"github.com/spf13/pflag"
)

// setupUmount is a placeholder until the umount command lands.
func setupUmount(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		return errors.New("not implemented yet")
	}
}
