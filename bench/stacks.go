package main

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// stackSampler is a wall-clock profile of one server process (for the
// PITR figure, the startup process that replays): every millisecond it
// reads the process's state and kernel stack from /proc, so the report
// says where replay spends its time, running or waiting in the kernel (a
// FUSE round trip, dirty-page throttling, a restore_command child, disk
// reads). Enabled by COMBINEFS_BENCH_STACKS=DIR: one report per timed run.
type stackSampler struct {
	counts map[string]int
	total  int
	stop   chan struct{}
	done   chan struct{}
}

var frameOffsetRe = regexp.MustCompile(`^\[<[0-9a-f]+>\] ([^+ ]+).*$`)

// startStackSampler samples the first child of postmaster ppid whose
// command line starts with prefix (waiting up to a minute for it) until
// stop is called.
func startStackSampler(ppid int, prefix string) *stackSampler {
	s := &stackSampler{counts: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		pid := 0
		for deadline := time.Now().Add(time.Minute); pid == 0 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			select {
			case <-s.stop:
				return
			default:
			}
			pid = findChild(ppid, prefix)
		}
		if pid == 0 {
			return
		}
		stat, stack := fmt.Sprintf("/proc/%d/stat", pid), fmt.Sprintf("/proc/%d/stack", pid)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(time.Millisecond):
			}
			st, err := os.ReadFile(stat)
			if err != nil {
				return // the process ended
			}
			state := "?"
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) {
				state = string(st[i+2])
			}
			data, _ := os.ReadFile(stack)
			var frames []string
			for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				if m := frameOffsetRe.FindStringSubmatch(l); m != nil {
					frames = append(frames, m[1])
				}
			}
			if len(frames) > 6 {
				frames = frames[:6]
			}
			key := state + " " + strings.Join(frames, " < ")
			if state == "R" && len(frames) == 0 {
				key = "R (user)"
			}
			s.counts[key]++
			s.total++
		}
	}()
	return s
}

// findChild is the pid of a child of ppid whose cmdline starts with prefix.
func findChild(ppid int, prefix string) int {
	ents, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range ents {
		st, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(st), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(st[i+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(ppid) {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		if strings.HasPrefix(string(cmd), prefix) {
			n, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return n
		}
	}
	return 0
}

// finish stops sampling and writes the report to path: each state and
// stack with its share of the samples, largest first.
func (s *stackSampler) finish(path string) {
	close(s.stop)
	<-s.done
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range s.counts {
		all = append(all, kv{k, n})
	}
	slices.SortFunc(all, func(a, b kv) int { return cmp.Compare(b.n, a.n) })
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d samples (1 ms apart)\n", s.total)
	for _, e := range all {
		fmt.Fprintf(&sb, "%6.2f%% %6d  %s\n", 100*float64(e.n)/float64(max(s.total, 1)), e.n, e.k)
	}
	os.WriteFile(path, []byte(sb.String()), 0o644)
}

// restoreLog is the in-root log the timed restore_command wrapper appends
// to (see timedRestore), summarised and emptied after each profiled run.
var restoreLog string

// restoreWrapper runs restore_command's command and logs its start and end
// (ns since the epoch), exit status and arguments: the wall time each
// restore takes as the server sees it, fork and exec included.
const restoreWrapper = `#!/bin/sh
log=$1; shift
s=$(date +%s%N)
"$@"; rc=$?
echo "$s $(date +%s%N) $rc $*" >>"$log"
exit $rc
`

// timedRestore writes the wrapper into the in-root dir and returns the
// server settings that make restore_command cmd run through it (a -c
// setting overrides postgresql.auto.conf's), for both sides alike.
func (b *bench) timedRestore(t *benchTB, dir string, settings map[string]string) func(cmd string) map[string]string {
	wrap := path.Join(dir, "restore-wrap.sh")
	restoreLog = path.Join(dir, "restore.log")
	if err := os.WriteFile(b.e.Host(wrap), []byte(restoreWrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	lf, err := os.OpenFile(b.e.Host(restoreLog), os.O_CREATE|os.O_WRONLY, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	lf.Chown(b.e.UID, b.e.GID)
	lf.Close()
	return func(cmd string) map[string]string {
		s := maps.Clone(settings)
		s["restore_command"] = "/bin/sh " + wrap + " " + restoreLog + " " + cmd
		return s
	}
}

// restoreSummary reads and empties the wrapper's log: the restores' count,
// total, mean and largest wall time, then each line as ms from the first.
func (b *bench) restoreSummary() string {
	if restoreLog == "" {
		return ""
	}
	data, _ := os.ReadFile(b.e.Host(restoreLog))
	os.Truncate(b.e.Host(restoreLog), 0)
	var sb strings.Builder
	var n int
	var first, total, most float64
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		s, _ := strconv.ParseFloat(f[0], 64)
		e, _ := strconv.ParseFloat(f[1], 64)
		if n == 0 {
			first = s
		}
		n++
		d := (e - s) / 1e6
		total += d
		most = max(most, d)
		fmt.Fprintf(&sb, "%9.1f %7.1f ms rc %s %s\n", (s-first)/1e6, d, f[2], f[len(f)-2])
	}
	return fmt.Sprintf("restore_command: %d runs, %.0f ms in all, mean %.1f ms, largest %.1f ms\n(start ms from the first, wall ms, exit status, file)\n%s",
		n, total, total/float64(max(n, 1)), most, sb.String())
}
