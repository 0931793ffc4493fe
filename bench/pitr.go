package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/combinefs/combinefs/internal/s3test"
)

// pitrLoadSec is the pgbench WAL after the backup that recovery replays:
// "one minute of pgbench WAL after the last backup" (issue 16).
const pitrLoadSec = 60

// redoElapsedRe is the server's "redo done at ... elapsed: N s" line.
var redoElapsedRe = regexp.MustCompile(`redo done at .*elapsed: ([0-9.]+) s`)

// 8. Time to a promoted server at a target time one minute of pgbench WAL
// after the backup: combinefs mount --cow --waldir --repo --target-time
// (promote) + start + replay, the WAL in a local directory as the copy's, vs pg_combinebackup + the same recovery settings with a
// cp restore_command + start + replay. Setup (untimed, once): combinefs
// archive runs on the source while capture --repo takes a full backup and
// pgbench runs for a minute; the target is then, and a few seconds more of
// load give recovery a commit after it. Replay is the same work on both
// sides, so each side's replay time (the server's "redo done ... elapsed")
// is reported as a part: it bounds the ratio.
func (b *bench) figPITR(t *benchTB) {
	dir := b.scratchDir(t, "pitr")
	repoDir := path.Join(dir, "repo")
	port := strconv.Itoa(b.src.Port)
	conn := []string{"-h", "127.0.0.1", "-p", port, "-U", b.e.User}

	b.progressf(t, "PITR setup: combinefs archive, capture --repo (full), %d s of pgbench, the target, 3 s more", pitrLoadSec)
	arch := b.cfs(false, append([]string{"archive", "--repo", repoDir, "-s", "1"}, conn...)...)
	archLog, err := os.Create(b.e.Host(path.Join(dir, "archive.log")))
	if err != nil {
		t.Fatal(err)
	}
	defer archLog.Close()
	arch.Stdout, arch.Stderr = archLog, archLog
	if err := arch.Start(); err != nil {
		t.Fatal(err)
	}
	archDone := make(chan struct{})
	go func() { arch.Wait(); close(archDone) }()
	stopArchive := func() {
		arch.Process.Signal(syscall.SIGTERM)
		<-archDone
	}
	t.Cleanup(stopArchive)
	runCmd(t, b.cfs(false, append([]string{"capture", "--repo", repoDir, "-c", "fast", "--progress=false"}, conn...)...))
	b.src.Pgbench(t, "-n", "-T", strconv.Itoa(pitrLoadSec), "-c", "2", "-j", "2")
	// As recovery_target_time reads it (it takes no "T" or "Z").
	target := b.src.Psql(t, "postgres", `SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US"+00"')`)
	time.Sleep(10 * time.Millisecond)
	b.src.Pgbench(t, "-n", "-T", "3", "-c", "2", "-j", "2")
	seg := b.src.Psql(t, "postgres", "SELECT pg_walfile_name(pg_switch_wal())")
	tli := b.src.Psql(t, "postgres", "SELECT timeline_id FROM pg_control_checkpoint()")
	tliDir := fmt.Sprintf("%08X", mustAtoi(t, tli))
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(b.e.Host(path.Join(repoDir, "wal", tliDir, seg))); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("segment %s not archived after 5 minutes (log %s)", seg, path.Join(dir, "archive.log"))
		}
	}
	stopArchive()
	ents, err := os.ReadDir(b.e.Host(repoDir))
	if err != nil {
		t.Fatal(err)
	}
	point := ""
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), "-FULL") {
			point = e.Name()
		}
	}
	if point == "" {
		t.Fatalf("no full point in %s", repoDir)
	}

	settings := map[string]string{"recovery_init_sync_method": "syncfs"}
	ourGet := fmt.Sprintf("%s wal-get --repo %s %%f %%p", b.bin, repoDir)
	refGet := fmt.Sprintf("cp %s/%%f %%p", path.Join(repoDir, "wal", tliDir))
	withRestore := func(cmd string) map[string]string { return settings }
	if os.Getenv("COMBINEFS_BENCH_STACKS") != "" {
		withRestore = b.timedRestore(t, dir, settings)
	}
	var srv *server
	var m *mnt
	var out, upper, walDir string
	var rows [2]string // pgbench_history rows after recovery, per side
	promoted := func(t *benchTB) {
		srv.waitReady(t, 30*time.Minute)
		for deadline := time.Now().Add(30 * time.Minute); ; time.Sleep(5 * time.Millisecond) {
			if v, err := querySelect(srv, "SELECT pg_is_in_recovery()"); err == nil && v == "f" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the server on %s was not promoted within 30 minutes; log tail:\n%s", srv.dataDir, srv.logTail())
			}
		}
	}
	replaySec := func() float64 {
		data, _ := os.ReadFile(b.e.Host(srv.logFile))
		if m := redoElapsedRe.FindSubmatch(data); m != nil {
			v, _ := strconv.ParseFloat(string(m[1]), 64)
			return v
		}
		return 0
	}
	check := func(t *benchTB, side int) {
		if srv == nil {
			return
		}
		v, err := querySelect(srv, "SELECT count(*) FROM pgbench_history")
		if err != nil {
			t.Fatalf("pgbench_history on %s: %v %s", srv.dataDir, err, v)
		}
		if rows[side] == "" {
			rows[side] = v
		}
		if rows[side] != v || rows[0] != "" && rows[1] != "" && rows[0] != rows[1] {
			t.Fatalf("recovered servers disagree: pgbench_history has %q rows (ours) and %q (reference), this run %q", rows[0], rows[1], v)
		}
	}
	ours := &variant{
		setup: func(t *benchTB, run int) {
			n := b.seq()
			private := b.e.PrivateDir(t)
			out, upper, walDir = path.Join(dir, fmt.Sprintf("mnt-%d", n)), path.Join(private, fmt.Sprintf("upper-%d", n)), path.Join(private, fmt.Sprintf("wal-%d", n))
			b.e.MkdirAll(t, out)
			srv, m = nil, nil
		},
		timed: func(t *benchTB, run int) sample {
			t0 := time.Now()
			runCmd(t, b.cfs(true, "mount", "--daemon", "--log", out+".mount.log", "--cow", upper, "--waldir", walDir, "--repo", repoDir,
				"--target-time", target, "--target-action", "promote", out))
			t1 := time.Now()
			m = b.attach(t, out)
			srv = startServer(t, b.e, out, withRestore(ourGet))
			prof := b.profileReplay(srv, m)
			promoted(t)
			t2 := time.Now()
			prof(t, fmt.Sprintf("ours-%d", run))
			return sample{v: t2.Sub(t0).Seconds(), parts: map[string]float64{"mount_s": t1.Sub(t0).Seconds(), "start_and_replay_s": t2.Sub(t1).Seconds(), "replay_s": replaySec()}}
		},
		teardown: func(t *benchTB, run int) {
			check(t, 0)
			if srv != nil {
				srv.stop(t)
			}
			if m != nil {
				m.umount(t)
			}
			b.rm(t, upper)
			b.rm(t, walDir)
			os.Remove(b.e.Host(out + ".log"))
			os.Remove(b.e.Host(out + ".mount.log"))
		},
	}
	ref := &variant{
		setup: func(t *benchTB, run int) {
			out = path.Join(dir, fmt.Sprintf("combined-%d", b.seq()))
			srv = nil
		},
		timed: func(t *benchTB, run int) sample {
			t0 := time.Now()
			runCmd(t, b.pgTool("pg_combinebackup", "-o", out, path.Join(repoDir, point)))
			conf := fmt.Sprintf("\nrestore_command = '%s'\nrecovery_target_time = '%s'\nrecovery_target_action = 'promote'\nrecovery_target_timeline = '%s'\n",
				refGet, target, tli)
			f, err := os.OpenFile(b.e.Host(path.Join(out, "postgresql.auto.conf")), os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				_, err = f.WriteString(conf)
				f.Close()
			}
			if err == nil {
				err = os.WriteFile(b.e.Host(path.Join(out, "recovery.signal")), nil, 0o600)
				os.Chown(b.e.Host(path.Join(out, "recovery.signal")), b.e.UID, b.e.GID)
			}
			if err != nil {
				t.Fatal(err)
			}
			t1 := time.Now()
			srv = startServer(t, b.e, out, withRestore(refGet))
			prof := b.profileReplay(srv, nil)
			promoted(t)
			t2 := time.Now()
			prof(t, fmt.Sprintf("ref-%d", run))
			return sample{v: t2.Sub(t0).Seconds(), parts: map[string]float64{"combine_s": t1.Sub(t0).Seconds(), "start_and_replay_s": t2.Sub(t1).Seconds(), "replay_s": replaySec()}}
		},
		teardown: func(t *benchTB, run int) {
			check(t, 1)
			if srv != nil {
				srv.stop(t)
			}
			b.rm(t, out)
			os.Remove(b.e.Host(out + ".log"))
		},
	}
	b.progressf(t, "time to a promoted server at a target %d s of pgbench after the backup: mount --target-time vs pg_combinebackup + cp restore_command", pitrLoadSec)
	fig, _ := b.compare(t, figSpec{id: "pitr", name: "time to a promoted server at a target time (PITR)", unit: "s", cold: true,
		target: ">= 1.7x at 1.5 GB, >= 4x at 6 GB; replay on the mount >= 0.9x of replay on the copy", targetMet: ratioAtLeast(1.7)}, ours, ref, nil)
	fig.OursLabel = "combinefs mount --daemon --cow UPPER --waldir WALDIR --repo REPO --target-time T --target-action promote MP; postgres -D MP until promoted"
	fig.RefLabel = "pg_combinebackup -o DIR REPO/FULL; recovery.signal and the same settings with restore_command 'cp REPO/wal/TLI/%f %p'; postgres -D DIR until promoted"
	fig.Note = "one full point (the chain's points were taken without an archive); the parts show each side's replay (the server's redo elapsed), the same work on both sides"
	b.add(t, fig)
}

func mustAtoi(t *benchTB, s string) int {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

// profileReplay starts a wall-clock profile of srv's startup process and checkpointer when
// COMBINEFS_BENCH_STACKS names a directory (see stackSampler), and with a
// mount m a perf profile of its daemon (perf record -g, when perf is
// installed); the function it returns writes them there as pitr-NAME.txt
// (with the mount's counters and the daemon's CPU time) and
// perf-NAME.data.
func (b *bench) profileReplay(srv *server, m *mnt) func(t *benchTB, name string) {
	dir := os.Getenv("COMBINEFS_BENCH_STACKS")
	if dir == "" {
		return func(*benchTB, string) {}
	}
	s := startStackSampler(srv.pid, "postgres: startup")
	ckpt := startStackSampler(srv.pid, "postgres: checkpointer")
	var perf *exec.Cmd
	var cpu0 float64
	perfOut := path.Join(dir, fmt.Sprintf("perf-%d.data", srv.pid))
	if m != nil {
		cpu0 = s3test.ProcCPU(m.pid).Seconds()
		perf = exec.Command("perf", "record", "-q", "-F", "499", "-g", "-p", strconv.Itoa(m.pid), "-o", perfOut)
		if perf.Start() != nil {
			perf = nil
		}
	}
	var sched *exec.Cmd
	schedOut := path.Join(dir, fmt.Sprintf("sched-%d.data", srv.pid))
	if os.Getenv("COMBINEFS_BENCH_SCHED") != "" {
		sched = exec.Command("perf", "sched", "record", "-a", "-q", "-o", schedOut)
		if sched.Start() != nil {
			sched = nil
		}
	}
	var strace *exec.Cmd
	straceOut := path.Join(dir, fmt.Sprintf("strace-%d.txt", srv.pid))
	if os.Getenv("COMBINEFS_BENCH_STRACE") != "" {
		// The startup process and its restore_command children, the
		// replay's page reads and writes left out.
		for deadline := time.Now().Add(time.Minute); strace == nil && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if pid := findChild(srv.pid, "postgres: startup"); pid != 0 {
				strace = exec.Command("strace", "-f", "-tt", "-T", "-o", straceOut, "-p", strconv.Itoa(pid),
					"-e", "trace=!pread64,pwrite64,read,write,lseek,fadvise64,kill,getppid,epoll_wait,epoll_ctl,epoll_create1")
				if strace.Start() != nil {
					strace = nil
				}
			}
		}
	}
	return func(t *benchTB, name string) {
		if strace != nil {
			strace.Process.Signal(os.Interrupt)
			strace.Wait()
			os.Rename(straceOut, path.Join(dir, "strace-"+name+".txt"))
		}
		p := path.Join(dir, "pitr-"+name+".txt")
		s.finish(p)
		ckpt.finish(path.Join(dir, "pitr-"+name+"-checkpointer.txt"))
		if sched != nil {
			sched.Process.Signal(os.Interrupt)
			sched.Wait()
			os.Rename(schedOut, path.Join(dir, "sched-"+name+".data"))
		}
		os.WriteFile(path.Join(dir, "pitr-"+name+"-restore.txt"), []byte(b.restoreSummary()), 0o644)
		if m == nil {
			return
		}
		cpu := s3test.ProcCPU(m.pid).Seconds() - cpu0
		if perf != nil {
			perf.Process.Signal(os.Interrupt)
			perf.Wait()
			os.Rename(perfOut, path.Join(dir, "perf-"+name+".data"))
		}
		st, err := json.MarshalIndent(m.Stats(t), "", "  ")
		if err == nil {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				fmt.Fprintf(f, "daemon CPU during replay: %.2f s\nmount counters after promotion:\n%s\n", cpu, st)
				f.Close()
			}
		}
	}
}
