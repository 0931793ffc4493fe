package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/flatten"
	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/repo"
	"github.com/combinefs/combinefs/resolver"
)

// flattenOptions are pg_combinebackup's options plus combinefs's own.
type flattenOptions struct {
	output     string
	dryRun     bool
	noSync     bool
	debug      bool
	mappings   []string
	checksums  string
	noManifest bool
	syncMethod string
	jobs       int
	progress   bool
	copyMethod flatten.CopyMethod // the last of the copy flags given wins
	repo       string
	point      string
	s3         *repo.S3Options
}

// copyFlag is one of --clone, --copy, --copy-file-range, --link: a boolean
// flag that sets the copy method when given, so the last one wins as with
// getopt.
type copyFlag struct {
	dst *flatten.CopyMethod
	m   flatten.CopyMethod
}

func (c copyFlag) String() string   { return "false" }
func (c copyFlag) Type() string     { return "bool" }
func (c copyFlag) IsBoolFlag() bool { return true }
func (c copyFlag) Set(v string) error {
	if v == "true" {
		*c.dst = c.m
	}
	return nil
}

func (o *flattenOptions) addFlags(f *pflag.FlagSet, native bool) {
	f.StringVarP(&o.output, "output", "o", "", "output `DIRECTORY`")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "do not actually do anything")
	f.BoolVarP(&o.noSync, "no-sync", "N", false, "do not wait for changes to be written safely to disk")
	f.BoolVarP(&o.debug, "debug", "d", false, "generate lots of debugging output")
	f.StringArrayVarP(&o.mappings, "tablespace-mapping", "T", nil, "relocate tablespace in `OLDDIR=NEWDIR`")
	for _, c := range []struct {
		name, short, usage string
		m                  flatten.CopyMethod
	}{
		{"clone", "", "clone (reflink) files instead of copying", flatten.Clone},
		{"copy", "", "copy files (default)", flatten.Copy},
		{"copy-file-range", "", "copy using copy_file_range() system call", flatten.CopyFileRange},
		{"link", "k", "link files instead of copying (a server started on the output modifies the inputs)", flatten.Link},
	} {
		f.VarPF(copyFlag{&o.copyMethod, c.m}, c.name, c.short, c.usage).NoOptDefVal = "true"
	}
	f.StringVar(&o.checksums, "manifest-checksums", "CRC32C", "use `SHA{224,256,384,512}|CRC32C|NONE` for manifest checksums")
	f.BoolVar(&o.noManifest, "no-manifest", false, "suppress generation of backup manifest")
	f.StringVar(&o.syncMethod, "sync-method", "fsync", "set `METHOD` (fsync or syncfs) for syncing files to disk")
	if native {
		f.IntVarP(&o.jobs, "jobs", "j", 2*runtime.NumCPU(), "files written at once")
		f.BoolVarP(&o.progress, "progress", "P", false, "show a progress bar (default: when stderr is a terminal)")
		f.StringVar(&o.repo, "repo", "", "backup repository `DIR` or s3://BUCKET/PREFIX (with --point, instead of BACKUP...)")
		o.s3 = s3Flags(f)
		f.StringVar(&o.point, "point", "", "`NAME` (or a unique prefix) of the repository point to flatten")
	}
}

// flattenConfig turns parsed options into flatten.Options, with
// pg_combinebackup's checks and messages.
func (o *flattenOptions) config(args []string) (flatten.Options, error) {
	opts := flatten.Options{Output: o.output, DryRun: o.dryRun, NoSync: o.noSync, NoManifest: o.noManifest,
		SyncMethod: o.syncMethod, CopyMethod: o.copyMethod, Jobs: o.jobs}
	if len(args) == 0 {
		return opts, usageError{"no input directories specified"}
	}
	if o.output == "" {
		return opts, optionError{"no output directory specified"}
	}
	t, ok := format.ParseChecksumType(o.checksums)
	if !ok {
		return opts, optionError{fmt.Sprintf("unrecognized checksum algorithm: %q", o.checksums)}
	}
	opts.ManifestChecksums = t
	if o.syncMethod != "fsync" && o.syncMethod != "syncfs" {
		return opts, optionError{fmt.Sprintf("unrecognized sync method: %s", o.syncMethod)}
	}
	for _, m := range o.mappings {
		mp, err := flatten.ParseMapping(m)
		if err != nil {
			return opts, optionError{err.Error()}
		}
		opts.Mappings = append([]flatten.Mapping{mp}, opts.Mappings...)
	}
	return opts, nil
}

func setupFlatten(f *pflag.FlagSet) func(ctx context.Context, args []string) error {
	var o flattenOptions
	o.addFlags(f, true)
	return func(ctx context.Context, args []string) error {
		return runFlatten(ctx, &o, args, stderr, false)
	}
}

// runFlatten checks the chain and writes the output. In pg mode messages
// keep pg_combinebackup's wording and prefixes.
func runFlatten(ctx context.Context, o *flattenOptions, args []string, w io.Writer, pgMode bool) error {
	copts := resolver.ChainOptions{RequireV2Manifests: true}
	if o.repo != "" || o.point != "" {
		if o.repo == "" || o.point == "" {
			return usageError{"--repo and --point go together"}
		}
		if len(args) > 0 {
			return usageError{fmt.Sprintf("with --repo, give no backup directories (first is %q)", args[0])}
		}
		if o.output == "" {
			return optionError{"no output directory specified"}
		}
		dirs, ro, hold, err := repoChainWith(ctx, "flatten", o.repo, o.point, *o.s3)
		if err != nil {
			return err
		}
		defer hold.Release()
		if !resolver.IsLocal(ro.Source) && o.copyMethod != flatten.Copy {
			return optionError{fmt.Sprintf("--%s needs the backups on a local file system; %s is an object store (its files are copied)", o.copyMethod, o.repo)}
		}
		args, copts = dirs, ro
	}
	opts, err := o.config(args)
	if err != nil {
		return err
	}
	lg := logger{w: w, pg: pgMode, debug: o.debug}
	opts.Log = lg.log
	start := time.Now()
	chain, err := resolver.OpenChain(args, copts)
	if err != nil {
		return err
	}
	for _, wn := range chain.Warnings {
		if strings.HasPrefix(wn, "hint: ") {
			lg.log(hint, strings.TrimPrefix(wn, "hint: "))
			continue
		}
		lg.log(flatten.Warning, wn)
	}
	lg.log(flatten.Debug, fmt.Sprintf("system identifier is %d", chain.SystemIdentifier))
	point, err := resolver.NewTree(chain)
	if err != nil {
		return err
	}
	for _, wn := range point.Warnings {
		lg.log(flatten.Warning, wn)
	}
	bar := newProgress(w, !pgMode && (o.progress || isTerminal(w)), "flatten")
	opts.Progress = bar.Set
	reported := false
	if pgMode {
		// pg_combinebackup's error comes before its exit handler's
		// "removing output directory".
		opts.OnFailure = func(err error) { pgError(w, err); reported = true }
	}
	res, err := flatten.Run(ctx, point, opts)
	bar.Finish()
	if err != nil && reported {
		return reportedError{err}
	}
	if err != nil {
		return err
	}
	if !pgMode && !o.dryRun {
		fmt.Fprintf(w, "combinefs flatten: wrote %s in %d files (%d reconstructed, %d copied whole from an older backup) to %s in %.1fs\n",
			humanBytes(res.Bytes), res.Files, res.Reconstructed, res.WholeFromOlder, o.output, time.Since(start).Seconds())
	}
	return nil
}

// reportedError is an error already printed.
type reportedError struct{ error }

func (e reportedError) Unwrap() error { return e.error }

// pgError prints err as pg_combinebackup's pg_fatal would.
func pgError(w io.Writer, err error) {
	fmt.Fprintf(w, "pg_combinebackup: error: %s\n", oneLine(resolver.PgMessage(err)))
}

const hint flatten.Level = 100

// logger prints flatten's log messages: pg_combinebackup's "prog: level:
// msg" in pg mode, "combinefs flatten: ..." otherwise. Debug only with -d.
type logger struct {
	w     io.Writer
	pg    bool
	debug bool
}

func (l logger) log(level flatten.Level, msg string) {
	// pg_combinebackup reports removing a failed output; combinefs keeps
	// its failures to the one error line unless asked for more.
	if (level == flatten.Debug || level == flatten.Info && !l.pg) && !l.debug {
		return
	}
	prefix := "combinefs flatten: "
	if l.pg {
		prefix = "pg_combinebackup: "
	}
	switch level {
	case flatten.Debug:
		prefix += "debug: "
	case flatten.Warning:
		prefix += "warning: "
	case hint:
		prefix += "hint: "
	}
	fmt.Fprintf(l.w, "%s%s\n", prefix, msg)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// runPgCombinebackup is combinefs invoked as pg_combinebackup: the same
// command line, output and messages ("pg_combinebackup: error: ...", exit 1).
func runPgCombinebackup(ctx context.Context, args []string, w io.Writer) int {
	f := pflag.NewFlagSet("pg_combinebackup", pflag.ContinueOnError)
	f.SetOutput(io.Discard)
	var o flattenOptions
	o.addFlags(f, false)
	help := f.BoolP("help", "?", false, "show this help, then exit")
	ver := f.BoolP("version", "V", false, "output version information, then exit")
	if err := f.Parse(args); err != nil {
		fmt.Fprintf(w, "pg_combinebackup: %v\npg_combinebackup: hint: Try \"pg_combinebackup --help\" for more information.\n", err)
		return 1
	}
	if *help {
		fmt.Fprint(os.Stdout, pgCombinebackupHelp)
		return 0
	}
	if *ver {
		fmt.Fprintln(os.Stdout, pgCombinebackupVersion())
		return 0
	}
	o.jobs = 2 * runtime.NumCPU()
	err := runFlatten(ctx, &o, f.Args(), w, true)
	if err == nil {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(w, "pg_combinebackup: error: %s\npg_combinebackup: hint: Try \"pg_combinebackup --help\" for more information.\n", ue.msg)
		return 1
	}
	if !errors.As(err, new(reportedError)) {
		pgError(w, err)
	}
	return 1
}

// pgCompatRelease is the PostgreSQL release whose pg_combinebackup this one
// stands in for: the newest major it combines, at the newest minor it was
// checked against. Tools read the major from "(PostgreSQL) N" of --version.
const pgCompatRelease = "18.6"

// pgCombinebackupVersion has the form PostgreSQL's programs print (a
// distribution appends its own package version the same way).
func pgCombinebackupVersion() string {
	return fmt.Sprintf("pg_combinebackup (PostgreSQL) %s (combinefs %s)", pgCompatRelease, version)
}

const pgCombinebackupHelp = `pg_combinebackup reconstructs full backups from incrementals.

Usage:
  pg_combinebackup [OPTION]... DIRECTORY...

Options:
  -d, --debug               generate lots of debugging output
  -k, --link                link files instead of copying
  -n, --dry-run             do not actually do anything
  -N, --no-sync             do not wait for changes to be written safely to disk
  -o, --output=DIRECTORY    output directory
  -T, --tablespace-mapping=OLDDIR=NEWDIR
                            relocate tablespace in OLDDIR to NEWDIR
      --clone               clone (reflink) files instead of copying
      --copy                copy files (default)
      --copy-file-range     copy using copy_file_range() system call
      --manifest-checksums=SHA{224,256,384,512}|CRC32C|NONE
                            use algorithm for manifest checksums
      --no-manifest         suppress generation of backup manifest
      --sync-method=METHOD  set method for syncing files to disk
  -V, --version             output version information, then exit
  -?, --help                show this help, then exit

This pg_combinebackup is combinefs; it combines PostgreSQL 17 and 18 backups.
`
