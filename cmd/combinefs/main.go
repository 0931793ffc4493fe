// Command combinefs takes, mounts, flattens and verifies PostgreSQL 17+
// block-level incremental backups. Invoked through a link named
// pg_combinebackup it behaves as that program (see flatten.go).
//
// This package is the only one that prints to the user or chooses exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// command is one subcommand: its flags are bound to a fresh FlagSet by setup,
// which returns the function that runs it with the remaining arguments.
type command struct {
	name  string
	usage string
	short string
	setup func(f *pflag.FlagSet) func(ctx context.Context, args []string) error
}

// commands lists the subcommands in the order the help shows them.
var commands = []command{
	{"capture", "capture [flags] (-D OUTDIR [-i PRIOR_MANIFEST] | --repo DIR)", "take a full or incremental base backup over the replication protocol", setupCapture},
	{"archive", "archive --repo DIR [-d CONNSTR] [--slot NAME [--create-slot]] [--synchronous]", "stream WAL into a repository continuously, like pg_receivewal", setupArchive},
	{"wal-get", "wal-get --repo DIR FILE PATH", "restore_command: copy an archived WAL file to PATH", setupWALGet},
	{"list", "list --repo DIR", "show the backups of a repository and check its chains", setupList},
	{"mount", "mount [--cow UPPERDIR] [flags] (BACKUP... | --repo DIR --point NAME) MOUNTPOINT", "present a chain point as a data directory through FUSE, read-only or copy-on-write", setupMount},
	{"exec", "exec [flags] (BACKUP... | --repo DIR (--point NAME | --target-time T | --target-lsn L | --target-xid X | --target-name N)) -- CMD [ARG...]", "run a command against a private server on a copy-on-write mount of a point, then remove it all", setupExec},
	{"umount", "umount MOUNTPOINT", "unmount a combinefs mount", setupUmount},
	{"status", "status [--wait] MOUNTPOINT", "show a mount's hydration progress, or wait for it to complete", setupStatus},
	{"detach", "detach [--owner USER[:GROUP]] UPPERDIR", "turn the hydrated upper directory of an unmounted copy-on-write mount into a plain data directory", setupDetach},
	{"flatten", "flatten [flags] -o OUTDIR (BACKUP... | --repo DIR --point NAME)", "combine a chain into a full backup, like pg_combinebackup", setupFlatten},
	{"verify", "verify [--chain] BACKUP... | verify --repo DIR", "check backups against their manifests, like pg_verifybackup", setupVerify},
	{"expire", "expire --repo DIR --keep-full N [--keep-within DURATION] [--dry-run]", "remove a repository's chains older than those kept", setupExpire},
	{"compact", "compact --repo DIR --point NAME", "roll a repository chain up to a point into a new full point", setupCompact},
}

// stderr is where commands report; run sets it.
var stderr io.Writer = os.Stderr

// usageError marks a bad command line: exit status 2 and a usage hint.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// optionError is a bad option value: a usage error for combinefs, but one
// pg_combinebackup reports without its usage hint (pg_fatal), so its mode
// keeps that.
type optionError struct{ msg string }

func (e optionError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, filepath.Base(os.Args[0]), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches on the program name (pg_combinebackup) or the first argument
// and turns the outcome into an exit status.
func run(ctx context.Context, prog string, args []string, w io.Writer) int {
	stderr = w
	if prog == "pg_combinebackup" {
		return runPgCombinebackup(ctx, args, stderr)
	}
	// What was asked for goes to stdout, as every PostgreSQL program does;
	// a bad command line gets the same text on stderr and exit 2.
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(os.Stdout)
		return 0
	}
	if args[0] == "--version" || args[0] == "version" {
		fmt.Fprintln(os.Stdout, "combinefs", version)
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		f := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
		f.SetOutput(stderr)
		f.SortFlags = false
		// pflag calls Usage only for --help (ContinueOnError).
		f.Usage = func() {
			fmt.Fprintf(os.Stdout, "%s\n\nUsage:\n  combinefs %s\n\nFlags:\n%s", c.short, c.usage, f.FlagUsages())
		}
		runFn := c.setup(f)
		if err := f.Parse(args[1:]); err != nil {
			if errors.Is(err, pflag.ErrHelp) {
				return 0
			}
			fmt.Fprintf(stderr, "combinefs %s: %v\nTry \"combinefs %s --help\".\n", c.name, err, c.name)
			return 2
		}
		return exitCode(stderr, c.name, runFn(ctx, f.Args()))
	}
	if isFstabSource(args[0]) {
		return runFstab(ctx, args) // run by mount.fuse3 for an fstab line
	}
	fmt.Fprintf(stderr, "combinefs: unknown command %q\nTry \"combinefs --help\".\n", args[0])
	return 2
}

// exitCode prints err (one line) and maps it to an exit status.
func exitCode(stderr io.Writer, name string, err error) int {
	if err == nil {
		return 0
	}
	msg := oneLine(err.Error())
	var ue usageError
	var oe optionError
	if cs, ok := err.(commandStatus); ok {
		return int(cs) // exec's command said why, if it wanted to
	}
	if errors.As(err, &ue) || errors.As(err, &oe) {
		fmt.Fprintf(stderr, "combinefs %s: %s\nTry \"combinefs %s --help\".\n", name, msg, name)
		return 2
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "combinefs %s: interrupted\n", name)
		return 130
	}
	fmt.Fprintf(stderr, "combinefs %s: %s\n", name, msg)
	return 1
}

// oneLine folds a multi-line error into the one line a failure prints (the
// PostgreSQL driver, for one, lists every address it tried on a line of its
// own, the same one twice when it tried with and without TLS).
func oneLine(msg string) string {
	var out strings.Builder
	var seen []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || slices.Contains(seen, l) {
			continue
		}
		if len(seen) > 0 {
			if strings.HasSuffix(seen[len(seen)-1], ":") {
				out.WriteString(" ")
			} else {
				out.WriteString("; ")
			}
		}
		seen = append(seen, l)
		out.WriteString(l)
	}
	return out.String()
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "combinefs: PostgreSQL 17+ incremental backups: capture, mount, flatten, verify\n\nUsage:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  combinefs %-9s %s\n", c.name, c.short)
	}
	fmt.Fprintf(w, "\nRun \"combinefs COMMAND --help\" for the flags of a command.\n")
}

// version is stamped by the Makefile.
var version = "dev"
