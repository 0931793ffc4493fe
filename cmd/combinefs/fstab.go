package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// An /etc/fstab line of type fuse.combinefs (or "combinefs#SOURCE" with
// type fuse) makes mount(8) run mount.fuse3, which runs, through /bin/sh,
//
//	combinefs SOURCE MOUNTPOINT -o OPTIONS
//
// (libfuse's util/mount.fuse.c: the type, the source, the mount point, then
// -o and the options but for user, nofail, auto and the like, with dev and
// suid added unless nodev or nosuid were given). SOURCE is
// "repo=DIR,point=NAME" or the chain's backups joined by colons, oldest
// first. The mount goes to the background once ready, as mount --daemon.

// isFstabSource reports whether a first argument is a mount source rather
// than a subcommand: a path or repo=...
func isFstabSource(arg string) bool {
	return strings.Contains(arg, "/") || strings.HasPrefix(arg, "repo=")
}

// fstabIgnored are the options mount(8) and mount.fuse3 pass for every
// file system; the kernel applies them or they mean nothing to a FUSE
// mount.
var fstabIgnored = map[string]bool{
	"rw": true, "defaults": true, "dev": true, "nodev": true, "suid": true, "nosuid": true,
	"exec": true, "noexec": true, "atime": true, "noatime": true, "relatime": true,
	"norelatime": true, "strictatime": true, "nostrictatime": true, "diratime": true,
	"nodiratime": true, "lazytime": true, "nolazytime": true, "sync": true, "async": true,
	"dirsync": true, "silent": true, "loud": true, "auto": true, "noauto": true,
	"user": true, "nouser": true, "users": true, "nofail": true, "_netdev": true,
}

// fstabOptions names the options setFstabOption takes, for its error.
const fstabOptions = "cow=UPPERDIR, owner=, cache_size=, log=, hydrate, hydrate_rate=, hydrate_open_wait=, waldir=, cache_dir=, cache_dir_size=, s3_endpoint=, allow_other, default_permissions, no_passthrough, writeback_cache[=auto|true|false], no_writeback_cache, ro"

// runFstab mounts as mount.fuse3 asks.
func runFstab(ctx context.Context, args []string) int {
	o, rest, err := parseFstab(args)
	if err != nil {
		return exitCode(stderr, "mount", err)
	}
	return exitCode(stderr, "mount", runMount(ctx, o, rest))
}

// parseFstab turns SOURCE MOUNTPOINT [-o OPTS]... (and the -s -f -n -v
// -t TYPE flags mount(8) gives its helpers) into mount's options and
// operands.
func parseFstab(args []string) (*mountOptions, []string, error) {
	o := &mountOptions{}
	o.addFlags(pflag.NewFlagSet("mount", pflag.ContinueOnError)) // the defaults
	o.daemon = true
	var operands, opts []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-o", "-t", "-N":
			if i+1 == len(args) {
				return nil, nil, usageError{a + " needs an argument"}
			}
			if a == "-o" {
				opts = append(opts, strings.Split(args[i+1], ",")...)
			}
			i++
		case "-s", "-f", "-n", "-v":
		default:
			operands = append(operands, a)
		}
	}
	if len(operands) != 2 {
		return nil, nil, usageError{fmt.Sprintf("as a mount helper: give SOURCE MOUNTPOINT [-o OPTIONS], not %q", operands)}
	}
	ro := false
	for _, opt := range opts {
		if opt == "ro" {
			ro = true
		} else if err := o.setFstabOption(opt); err != nil {
			return nil, nil, err
		}
	}
	if ro && o.cow != "" {
		return nil, nil, usageError{"options ro and cow= together"}
	}
	src, mp := operands[0], operands[1]
	if !strings.HasPrefix(src, "repo=") {
		return o, append(strings.Split(src, ":"), mp), nil
	}
	for _, kv := range strings.Split(src, ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "repo":
			o.repo = v
		case "point":
			o.point = v
		default:
			return nil, nil, usageError{fmt.Sprintf("source %s: %q is neither repo= nor point=", src, kv)}
		}
	}
	if o.point == "" {
		return nil, nil, usageError{fmt.Sprintf("source %s: give repo=DIR,point=NAME", src)}
	}
	return o, []string{mp}, nil
}

// setFstabOption applies one -o option: combinefs's own (mount's flags,
// spelled with underscores), libfuse's allow_other and
// default_permissions, or a generic one. Without cow= the mount is
// read-only, so ro needs nothing.
func (o *mountOptions) setFstabOption(opt string) error {
	k, v, hasValue := strings.Cut(opt, "=")
	// The options that set a flag's value: mount's flag of the same name.
	values := map[string]*string{"writeback_cache": &o.writeback, "hydrate_rate": &o.hydrateRate,
		"cow": &o.cow, "owner": &o.owner, "cache_size": &o.cacheSize, "log": &o.logFile,
		"waldir": &o.walDir, "cache_dir": &o.cacheDir, "cache_dir_size": &o.cacheDirSize,
		"s3_endpoint": &o.s3.Endpoint}
	switch {
	case fstabIgnored[opt] || strings.HasPrefix(opt, "x-") || k == "comment":
	case opt == "allow_other":
		o.allowOther = true
	case opt == "default_permissions":
		o.defaultPerms = true
	case opt == "no_passthrough":
		o.noPassthrough = true
	case opt == "no_writeback_cache":
		o.writeback = "false"
	case opt == "writeback_cache":
		o.writeback = "true"
	case opt == "hydrate":
		o.hydrate = true
	case k == "hydrate_open_wait" && hasValue:
		d, err := time.ParseDuration(v)
		if err != nil {
			return usageError{fmt.Sprintf("mount option %s: %v", opt, err)}
		}
		o.hydrateWait = d
	case hasValue && v != "" && values[k] != nil:
		*values[k] = v
	default:
		return usageError{fmt.Sprintf("unknown mount option %q (combinefs takes %s)", opt, fstabOptions)}
	}
	return nil
}
