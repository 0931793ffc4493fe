package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/combinefs/combinefs/internal/mountctl"
)

// execDirPrefix names exec's temporary directories; execPIDFile in each
// holds the process id of the exec that made it.
const (
	execDirPrefix = "combinefs-exec-"
	execPIDFile   = "exec.pid"
)

// sweepStale removes what an exec killed with SIGKILL could not: its
// temporary directory, with the dead mount in it detached. (Its server
// got SIGQUIT when it died.) A directory is left alone while its process
// lives, before it names its process, or when it is another user's.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), execDirPrefix+"*"))
	for _, d := range dirs {
		fi, err := os.Lstat(d)
		if err != nil || !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, execPIDFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || mountctl.ProcessAlive(pid) {
			continue
		}
		data := filepath.Join(d, "data")
		if mountctl.IsMounted(data) && mountctl.Unmount(data, true) != nil {
			continue
		}
		if os.RemoveAll(d) == nil {
			fmt.Fprintf(stderr, "combinefs exec: removed %s, left by exec process %d, which was killed\n", d, pid)
		}
	}
}
