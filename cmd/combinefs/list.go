package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/repo"
)

func setupList(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var dir string
	var verbose, asJSON bool
	f.StringVar(&dir, "repo", "", "the repository `DIR` (or s3://BUCKET/PREFIX) to list")
	s3o := s3Flags(f)
	f.BoolVarP(&verbose, "verbose", "v", false, "also show each point's chain and system identifier")
	f.BoolVar(&asJSON, "json", false, "print the same facts as JSON (for monitoring)")
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
		r, err := repo.OpenWith(ctx, dir, false, *s3o)
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
		if asJSON {
			var wal *walJSON
			wal, err = archiveJSON(ctx, r, points)
			if err != nil {
				return err
			}
			return printPointsJSON(os.Stdout, r.Dir, points, leftovers, wal)
		}
		perr := printPoints(os.Stdout, points, leftovers, verbose)
		if err := printArchive(ctx, os.Stdout, r, points); err != nil {
			return err
		}
		return perr
	}
}

// printPoints writes the table of list; a chain problem makes the command
// fail after the table, so that scripts notice.
func printPoints(w io.Writer, points []*repo.Point, leftovers []string, verbose bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tPARENT\tTLI\tSTART LSN\tEND LSN\tSIZE\tSTATUS")
	for _, p := range points {
		parent := p.Parent
		if parent == "" {
			parent = "-"
		}
		status := "intact"
		if p.Problem != "" {
			status = "BROKEN: " + p.Problem
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
		fmt.Fprintf(w, "%s: left by an interrupted command (not a backup; the next capture, expire or compact of this repository finishes or removes it)\n", l)
	}
	return brokenError(points)
}

// brokenError makes list fail when a point cannot be restored.
func brokenError(points []*repo.Point) error {
	broken := 0
	for _, p := range points {
		if p.Problem != "" {
			broken++
		}
	}
	if broken > 0 {
		return fmt.Errorf("%d of %d backups cannot be restored", broken, len(points))
	}
	return nil
}

// listJSON is list --json's output. The field names are part of the
// interface (README): add fields, never rename them.
type listJSON struct {
	Repository string      `json:"repository"`
	Points     []pointJSON `json:"points"`
	// Leftovers are hidden entries killed commands left (not points).
	Leftovers []string `json:"leftovers"`
	// WAL is the WAL archive, when the repository has one.
	WAL *walJSON `json:"wal,omitempty"`
}

type pointJSON struct {
	Name     string    `json:"name"`
	Kind     string    `json:"kind"` // "full" or "incremental"
	Parent   string    `json:"parent,omitempty"`
	Time     time.Time `json:"time"`
	Timeline uint32    `json:"timeline,omitempty"`
	StartLSN string    `json:"start_lsn,omitempty"`
	EndLSN   string    `json:"end_lsn,omitempty"`
	// PrevLSN and PrevTimeline are where an incremental's parent started.
	PrevLSN      string   `json:"prev_lsn,omitempty"`
	PrevTimeline uint32   `json:"prev_timeline,omitempty"`
	SystemID     string   `json:"system_identifier,omitempty"`
	Size         int64    `json:"size_bytes"`
	Chain        []string `json:"chain,omitempty"`
	OK           bool     `json:"chain_ok"`
	Problem      string   `json:"problem,omitempty"`
}

// printPointsJSON writes list --json; like the table, a broken point makes
// the command fail after the output.
func printPointsJSON(w io.Writer, dir string, points []*repo.Point, leftovers []string, wal *walJSON) error {
	out := listJSON{Repository: dir, Points: []pointJSON{}, Leftovers: leftovers, WAL: wal}
	if out.Leftovers == nil {
		out.Leftovers = []string{}
	}
	for _, p := range points {
		j := pointJSON{Name: p.Name, Kind: strings.ToLower(string(p.Kind)), Parent: p.Parent, Time: p.Time,
			Timeline: p.StartTLI, Size: p.Size, Chain: p.Chain, OK: p.Problem == "", Problem: p.Problem}
		if p.StartTLI != 0 {
			j.StartLSN = p.StartLSN.String()
		}
		if p.EndLSN != 0 {
			j.EndLSN = p.EndLSN.String()
		}
		if p.PrevTLI != 0 {
			j.PrevLSN, j.PrevTimeline = p.PrevLSN.String(), p.PrevTLI
		}
		if p.SystemID != 0 {
			j.SystemID = fmt.Sprint(p.SystemID)
		}
		out.Points = append(out.Points, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	return brokenError(points)
}
