package main

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"time"
)

// 8. combinefs exec -- psql (a copy-on-write mount, a private server, the
// query, the server stopped, the mount gone) vs what it replaces:
// pg_combinebackup, a server started on its output, the same query through
// psql, the server stopped. Both end with nothing running; the combined
// copy is removed untimed.
func (b *bench) figExec(t *benchTB) {
	dir := b.scratchDir(t, "exec")
	const query = "SELECT count(*) FROM pgbench_branches"
	want := strconv.Itoa(b.scale)
	var got string
	check := func(t *benchTB, what string) {
		if got != want {
			t.Fatalf("%s: pgbench_branches has %q rows, want %s", what, got, want)
		}
	}
	ours := &variant{
		setup: func(t *benchTB, run int) { got = "" },
		timed: func(t *benchTB, run int) sample {
			var out bytes.Buffer
			cmd := b.cfs(true, append(append([]string{"exec"}, b.chain...), "--", "psql", "-XAtc", query, "postgres")...)
			cmd.Stdout, cmd.Stderr = &out, &out
			t0 := time.Now()
			err := cmd.Run()
			d := time.Since(t0)
			if err != nil {
				t.Fatalf("combinefs exec: %v\n%s", err, out.String())
			}
			got = strings.TrimSpace(out.String())
			return sample{v: d.Seconds()}
		},
		teardown: func(t *benchTB, run int) { check(t, "combinefs exec -- psql") },
	}
	var out string
	ref := &variant{
		setup: func(t *benchTB, run int) { out, got = path.Join(dir, fmt.Sprintf("combined-%d", b.seq())), "" },
		timed: func(t *benchTB, run int) sample {
			t0 := time.Now()
			runCmd(t, b.pgTool("pg_combinebackup", append([]string{"-o", out}, b.chain...)...))
			srv := startServer(t, b.e, out, map[string]string{"recovery_init_sync_method": "syncfs"})
			srv.waitReady(t, 30*time.Minute)
			var err error
			if got, err = querySelect(srv, query); err != nil {
				t.Fatalf("psql on %s: %v: %s", out, err, got)
			}
			srv.stop(t)
			return sample{v: time.Since(t0).Seconds()}
		},
		teardown: func(t *benchTB, run int) {
			check(t, "pg_combinebackup, start, psql")
			b.rm(t, out)
			os.Remove(b.e.Host(out + ".log"))
		},
	}
	b.progressf(t, "exec -- psql count vs pg_combinebackup + start + psql + stop (%d runs each, plus A/A)", b.runs)
	fig, _ := b.compare(t, figSpec{id: "exec", name: "exec to the count printed (time)", unit: "s", cold: true,
		target: "at least 5x faster at scale 100, 20x at scale 400 (ratio >= 5)", targetMet: ratioAtLeast(5)}, ours, ref, nil)
	fig.OursLabel = "combinefs exec FULL INC1 INC2 -- psql -Atc 'SELECT count(*) FROM pgbench_branches'"
	fig.RefLabel = "pg_combinebackup -o DIR FULL INC1 INC2; postgres -D DIR; psql -Atc (same); stop -m fast"
	b.add(t, fig)
}
