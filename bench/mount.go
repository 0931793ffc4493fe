package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/combinefs/combinefs/fusefs"
	"github.com/combinefs/combinefs/integration"
	"github.com/combinefs/combinefs/internal/mountctl"
)

// mnt is a combinefs mount --daemon the benchmark made.
type mnt struct {
	b     *bench
	dir   string // in-root mount point
	pid   int    // serving process
	stats string // host path of its stats file
	gone  bool
}

// mountArgs is the command line of a daemon mount of the chain at mp
// (copy-on-write into upper when upper is not "").
func (b *bench) mountArgs(mp, upper string) []string {
	args := []string{"mount", "--daemon", "--log", mp + ".mount.log"}
	if upper != "" {
		args = append(args, "--cow", upper)
	}
	return append(append(args, b.chain...), mp)
}

// attach finds the serving process of a mount combinefs mount --daemon
// just made, and makes sure the mount goes away at cleanup.
func (b *bench) attach(t *benchTB, mp string) *mnt {
	m := &mnt{b: b, dir: mp}
	t.Cleanup(func() { m.umount(t) })
	statePath := b.e.Host(mountctl.StatePath(mp))
	st, err := mountctl.ReadFile(statePath)
	if err != nil || st.PID == 0 {
		t.Fatalf("state file of the mount at %s: %v", mp, err)
	}
	m.pid, m.stats = st.PID, b.e.Host(st.Stats)
	return m
}

// mount mounts the chain at mp (made if need be) and waits for it.
func (b *bench) mount(t *benchTB, mp, upper string) (*mnt, time.Duration) {
	b.e.MkdirAll(t, mp)
	d, _ := runCmd(t, b.cfs(true, b.mountArgs(mp, upper)...))
	return b.attach(t, mp), d
}

// Stats asks the mount process for its counters (SIGUSR1).
func (m *mnt) Stats(t *benchTB) fusefs.Stats { return integration.MountStats(t, m.pid, m.stats) }

// waitHydrated polls the mount's stats until hydration is complete, and
// fails the figure if hydration reports an error.
func (m *mnt) waitHydrated(t *benchTB) {
	for {
		if h := m.Stats(t).Hydration; h != nil && h.Complete {
			return
		} else if h != nil && h.Error != "" {
			t.Fatalf("hydration of %s failed: %s", m.dir, h.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// HWM is the mount process's peak RSS (VmHWM) in kB.
func (m *mnt) HWM(t *benchTB) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.pid))
	if err != nil {
		t.Fatalf("mount process %d: %v", m.pid, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", m.pid)
	return 0
}

// umount unmounts with combinefs umount (which waits for the process),
// lazily if that fails; idempotent.
func (m *mnt) umount(t *benchTB) {
	if m.gone {
		return
	}
	m.gone = true
	out, err := m.b.cfs(true, "umount", m.dir).CombinedOutput()
	if err != nil {
		t.Logf("combinefs umount %s: %v: %s; unmounting lazily", m.dir, err, out)
		syscall.Unmount(m.b.e.Host(m.dir), syscall.MNT_DETACH)
		deadline := time.Now().Add(30 * time.Second)
		for mountctl.ProcessAlive(m.pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// pointFiles lists the regular files of a data directory (relative
// paths, sorted), without backup_manifest: a mount builds its own on first
// read by checksumming the point, which is not a read of the point.
func pointFiles(t *benchTB, hostDir string) (files []string, total int64, largest string) {
	var most int64
	err := filepath.WalkDir(hostDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(hostDir, p)
		if rel == "backup_manifest" {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		files = append(files, rel)
		total += fi.Size()
		if fi.Size() > most {
			most, largest = fi.Size(), rel
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing %s: %v", hostDir, err)
	}
	sort.Strings(files)
	return files, total, largest
}

// readFiles reads every file in turn, start to end, in 1 MiB reads, and
// returns the bytes read and the time it took.
func readFiles(t *benchTB, hostDir string, files []string) (int64, time.Duration) {
	buf := make([]byte, 1<<20)
	var total int64
	t0 := time.Now()
	for _, rel := range files {
		f, err := os.Open(filepath.Join(hostDir, rel))
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		total += readAll(t, f, buf)
		f.Close()
	}
	return total, time.Since(t0)
}

// openFiles opens every file of files below hostDir.
func openFiles(t *benchTB, hostDir string, files []string) []*os.File {
	open := make([]*os.File, 0, len(files))
	for _, rel := range files {
		f, err := os.Open(filepath.Join(hostDir, rel))
		if err != nil {
			for _, f := range open {
				f.Close()
			}
			t.Fatalf("open: %v", err)
		}
		open = append(open, f)
	}
	return open
}

// readOpen reads every file of open from its start.
func readOpen(t *benchTB, open []*os.File) (int64, time.Duration) {
	buf := make([]byte, 1<<20)
	var total int64
	t0 := time.Now()
	for _, f := range open {
		total += readAll(t, f, buf)
	}
	return total, time.Since(t0)
}

// readAll reads f from its start to its end, len(buf) bytes at a time.
func readAll(t *benchTB, f *os.File, buf []byte) int64 {
	var off int64
	for {
		n, err := f.ReadAt(buf, off)
		off += int64(n)
		if err == io.EOF {
			return off
		}
		if err != nil {
			f.Close()
			t.Fatalf("read %s: %v", f.Name(), err)
		}
	}
}

// prewarm reads every regular file below hostDir (errors ignored: a
// running server renames and removes files), to fill the page cache.
func prewarm(hostDir string) {
	buf := make([]byte, 1<<20)
	filepath.WalkDir(hostDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		for {
			if _, err := f.Read(buf); err != nil {
				return nil
			}
		}
	})
}
