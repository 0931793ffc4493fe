package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/repo"
)

func setupList(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var dir string
	var verbose bool
	f.StringVar(&dir, "repo", "", "the repository `DIR` to list")
	f.BoolVarP(&verbose, "verbose", "v", false, "also show each point's chain and system identifier")
	return func(ctx context.Context, args []string) error {
		if dir == "" && len(args) == 1 {
			dir, args = args[0], nil
		}
		if len(args) > 0 {
			return usageError{fmt.Sprintf("too many command-line arguments (first is %q)", args[0])}
		}
		if dir == "" {
			return usageError{"no repository specified (--repo DIR)"}
		}
		r, err := repo.Open(dir, false)
		if err != nil {
			return err
		}
		points, err := r.Points(ctx)
		if err != nil {
			return err
		}
		leftovers, err := r.Leftovers()
		if err != nil {
			return err
		}
		return printPoints(os.Stdout, points, leftovers, verbose)
	}
}

// printPoints writes the table of list; a chain problem makes the command
// fail after the table, so that scripts notice.
func printPoints(w io.Writer, points []*repo.Point, leftovers []string, verbose bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tPARENT\tTLI\tSTART LSN\tEND LSN\tSIZE\tSTATUS")
	broken := 0
	for _, p := range points {
		parent := p.Parent
		if parent == "" {
			parent = "-"
		}
		status := "intact"
		if p.Problem != "" {
			status = "BROKEN: " + p.Problem
			broken++
		}
		start, end := "-", "-"
		if p.StartTLI != 0 {
			start = p.StartLSN.String()
		}
		if p.EndLSN != 0 {
			end = p.EndLSN.String()
		}
		tli := "-"
		if p.StartTLI != 0 {
			tli = fmt.Sprint(p.StartTLI)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, strings.ToLower(string(p.Kind)), parent, tli, start, end, humanBytes(p.Size), status)
		if verbose {
			if len(p.Chain) > 0 {
				fmt.Fprintf(tw, "\tchain: %s\t\t\t\t\t\t\n", strings.Join(p.Chain, " <- "))
			}
			if p.SystemID != 0 {
				fmt.Fprintf(tw, "\tsystem identifier: %d\t\t\t\t\t\t\n", p.SystemID)
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(points) == 0 {
		fmt.Fprintln(w, "(no backups)")
	}
	for _, l := range leftovers {
		fmt.Fprintf(w, "%s: left by an interrupted capture (not a backup; the next capture into this repository removes it)\n", l)
	}
	if broken > 0 {
		return fmt.Errorf("%d of %d backups cannot be restored", broken, len(points))
	}
	return nil
}
