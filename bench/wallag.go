package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// wallagLoadSec is how long each run's pgbench load lasts.
const wallagLoadSec = 20

// 9. WAL lag of combinefs archive against pg_receivewal under the same
// pgbench load: the mean, over samples every 100 ms, of the bytes between
// the server's flush LSN and the write LSN the receiver last reported
// (pg_stat_replication). Both report every second (-s 1) and when the
// server asks; each run streams into a fresh directory.
func (b *bench) figWALLag(t *benchTB) {
	dir := b.scratchDir(t, "wallag")
	conn := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(b.src.Port), "-U", b.e.User}
	db, err := pgconn.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", b.src.Port, b.e.User))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	query := func(sql string) string {
		res, err := db.Exec(context.Background(), sql).ReadAll()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
			return ""
		}
		return string(res[0].Rows[0][0])
	}
	mk := func(ours bool) *variant {
		var recv *exec.Cmd
		var done chan struct{}
		var out, app string
		return &variant{
			setup: func(t *benchTB, run int) {
				out = path.Join(dir, fmt.Sprintf("wal-%d", b.seq()))
				b.e.MkdirAll(t, out)
				if ours {
					app = "combinefs"
					recv = b.cfs(false, append([]string{"archive", "--repo", out, "-s", "1"}, conn...)...)
				} else {
					app = "pg_receivewal"
					recv = b.pgTool("pg_receivewal", append([]string{"-D", out, "-s", "1", "--no-loop"}, conn...)...)
				}
				if err := recv.Start(); err != nil {
					t.Fatal(err)
				}
				done = make(chan struct{})
				go func() { recv.Wait(); close(done) }()
				for deadline := time.Now().Add(time.Minute); query(fmt.Sprintf("SELECT state FROM pg_stat_replication WHERE application_name = '%s'", app)) != "streaming"; time.Sleep(50 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%s is not streaming after a minute", app)
					}
				}
			},
			timed: func(t *benchTB, run int) sample {
				load := b.pgTool("pgbench", "-h", "127.0.0.1", "-p", strconv.Itoa(b.src.Port), "-n", "-T", strconv.Itoa(wallagLoadSec), "-c", "2", "-j", "2", "postgres")
				if err := load.Start(); err != nil {
					t.Fatal(err)
				}
				loadDone := make(chan error, 1)
				go func() { loadDone <- load.Wait() }()
				var sum, n, peak float64
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case err := <-loadDone:
						if err != nil {
							t.Fatalf("pgbench: %v", err)
						}
						if n == 0 {
							t.Fatalf("no lag sample of %s", app)
						}
						return sample{v: sum / n / 1024, parts: map[string]float64{"peak_KiB": peak / 1024, "samples": n}}
					case <-tick.C:
						v, err := strconv.ParseFloat(query(fmt.Sprintf("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), write_lsn) FROM pg_stat_replication WHERE application_name = '%s'", app)), 64)
						if err == nil {
							sum, n, peak = sum+v, n+1, max(peak, v)
						}
					case <-done:
						t.Fatalf("%s exited during the load", app)
					}
				}
			},
			teardown: func(t *benchTB, run int) {
				recv.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(time.Minute):
					recv.Process.Kill()
					<-done
				}
				b.rm(t, out)
				os.Remove(b.e.Host(out))
			},
		}
	}
	b.progressf(t, "WAL lag under %d s of pgbench: combinefs archive vs pg_receivewal (%d runs each, plus A/A)", wallagLoadSec, b.runs)
	fig, _ := b.compare(t, figSpec{id: "wallag", name: "WAL lag under pgbench (mean bytes behind the flush LSN)", unit: "KiB",
		target: "at most pg_receivewal's (ratio >= 1)", targetMet: ratioAtLeast(1)}, mk(true), mk(false), nil)
	fig.OursLabel = "combinefs archive --repo DIR -s 1"
	fig.RefLabel = "pg_receivewal -D DIR -s 1"
	fig.Note = "sampled every 100 ms from pg_stat_replication: the server's flush LSN minus the receiver's reported write LSN, during pgbench -c 2"
	b.add(t, fig)
}
