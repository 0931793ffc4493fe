// Package mountctl is how combinefs finds and controls its running mounts:
// the state file a mount writes while it serves (its process, mount point,
// backups, upper directory), the stats file the process writes on SIGUSR1,
// and unmount, which touches combinefs mounts only.
//
// A mount's files are named after a hash of its mount point in Dir, so a
// command given only the mount point finds them. The command line, the
// benchmark and the integration tests all go through this package; the
// latter two run combinefs inside a PostgreSQL root and prefix the paths
// returned here with that root.
package mountctl

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FSType is the type /proc/self/mountinfo shows for a combinefs mount.
const FSType = "fuse.combinefs"

// State is what the commands need to know about a running mount.
type State struct {
	PID        int      `json:"pid"`
	Mountpoint string   `json:"mountpoint"`
	Backups    []string `json:"backups"`
	Stats      string   `json:"stats"`           // written on SIGUSR1 and at unmount
	Upper      string   `json:"upper,omitempty"` // copy-on-write mounts
}

// Dir is where mounts keep their state files: /run/combinefs for root, else
// the user's runtime directory.
func Dir() string {
	if os.Geteuid() == 0 {
		return "/run/combinefs"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "combinefs")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("combinefs-%d", os.Geteuid()))
}

func pathFor(mp, suffix string) string {
	h := sha256.Sum256([]byte(mp))
	return filepath.Join(Dir(), "mnt-"+hex.EncodeToString(h[:8])+suffix)
}

// StatePath is the state file of the mount at mp (an absolute path).
func StatePath(mp string) string { return pathFor(mp, ".json") }

// StatsPath is the stats file of the mount at mp.
func StatsPath(mp string) string { return pathFor(mp, ".stats.json") }

// Write records s in its mount point's state file.
func (s *State) Write() error {
	if err := os.MkdirAll(Dir(), 0o700); err != nil {
		return err
	}
	return WriteJSON(StatePath(s.Mountpoint), s)
}

// Remove removes the state and stats files of s.
func (s *State) Remove() {
	os.Remove(StatePath(s.Mountpoint))
	if s.Stats != "" {
		os.Remove(s.Stats)
	}
}

// Read reads the state file of the mount at mp.
func Read(mp string) (*State, error) { return ReadFile(StatePath(mp)) }

// ReadFile reads a state file.
func ReadFile(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	return &s, nil
}

// WriteJSON writes v to path atomically (a temporary file renamed over it),
// so a reader sees the old content or the new, never part of it.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RequestStats has the process pid write its counters to statsPath
// (SIGUSR1) and decodes them into v, waiting up to timeout for the file.
// The signal is sent again every second: a process that has not set up its
// handler yet drops it.
func RequestStats(pid int, statsPath string, timeout time.Duration, v any) error {
	os.Remove(statsPath)
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return fmt.Errorf("the mount's process %d: %w", pid, err)
	}
	resend := time.Now().Add(time.Second)
	for deadline := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(resend) {
			syscall.Kill(pid, syscall.SIGUSR1)
			resend = time.Now().Add(time.Second)
		}
		data, err := os.ReadFile(statsPath)
		if err == nil {
			if err := json.Unmarshal(data, v); err != nil {
				return fmt.Errorf("stats file %s: %w", statsPath, err)
			}
			return nil
		}
		if !ProcessAlive(pid) {
			return fmt.Errorf("the mount's process %d exited", pid)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the mount's process %d wrote no stats to %s within %s", pid, statsPath, timeout)
		}
	}
}

// ProcessAlive reports whether pid runs; a zombie (exited, not yet reaped
// by whoever adopted it) counts as gone.
func ProcessAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	if i := strings.LastIndexByte(string(data), ')'); i >= 0 && i+2 < len(data) {
		return data[i+2] != 'Z'
	}
	return true
}

// FSTypeAt is the file system type of the visible mount at mp (the last
// one mounted there), from /proc/self/mountinfo; ok is false when mp is not
// a mount point.
func FSTypeAt(mp string) (fstype string, ok bool) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint options [optional...] - type source superoptions
		f := strings.Fields(line)
		if len(f) < 5 || Unescape(f[4]) != mp {
			continue
		}
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" {
				fstype, ok = f[i+1], true
				break
			}
		}
	}
	return fstype, ok
}

// IsMounted reports whether mp is a mount point.
func IsMounted(mp string) bool {
	_, ok := FSTypeAt(mp)
	return ok
}

// Unescape undoes the octal escapes of /proc/self/mounts and mountinfo
// (\040 for a space).
func Unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ErrNotMounted is returned by Unmount for a path that is not a mount point.
var ErrNotMounted = errors.New("not mounted")

// Unmount unmounts the combinefs mount at mp (lazily: detach it even while
// busy). Anything else mounted there (a bind mount, another file system) is
// refused and left mounted, as is a FUSE mount whose state file names
// another mount point.
func Unmount(mp string, lazy bool) error {
	fstype, ok := FSTypeAt(mp)
	if !ok {
		return fmt.Errorf("%s is %w", mp, ErrNotMounted)
	}
	if fstype != FSType {
		return fmt.Errorf("%s is a %s mount, not a combinefs mount: not unmounting it", mp, fstype)
	}
	if st, err := Read(mp); err == nil && st.Mountpoint != mp {
		return fmt.Errorf("%s: its state file %s names %s: not unmounting it", mp, StatePath(mp), st.Mountpoint)
	}
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = syscall.MNT_DETACH
		}
		if err := syscall.Unmount(mp, flags); err != nil {
			if errors.Is(err, syscall.EBUSY) {
				return fmt.Errorf("%s is busy (a server or shell still uses it); stop it first or use --lazy", mp)
			}
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
		return nil
	}
	args := []string{"-u", mp}
	if lazy {
		args = []string{"-u", "-z", mp}
	}
	out, err := exec.Command("fusermount3", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -u %s: %s", mp, strings.TrimSpace(string(out)))
	}
	return nil
}
