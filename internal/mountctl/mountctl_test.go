package mountctl

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/x\011y\134z`: "/x\ty\\z", `/plain`: "/plain", `/end\04`: `/end\04`} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	mp := t.TempDir() // a name no real mount has
	s := &State{PID: 42, Mountpoint: mp, Backups: []string{"/b1"}, Stats: StatsPath(mp), Upper: "/u"}
	if err := s.Write(); err != nil {
		t.Fatal(err)
	}
	got, err := Read(mp)
	if err != nil || got.PID != 42 || got.Upper != "/u" || got.Stats != s.Stats {
		t.Fatalf("Read: %+v, %v", got, err)
	}
	s.Remove()
	if _, err := Read(mp); err == nil {
		t.Error("state file still there after Remove")
	}
}

func TestProcessAlive(t *testing.T) {
	if !ProcessAlive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if ProcessAlive(0) || ProcessAlive(-1) {
		t.Error("pid 0 or -1 alive")
	}
}

// TestUnmountRefusesOtherMounts: a bind mount is refused, named, and stays.
func TestUnmountRefusesOtherMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a bind mount needs root")
	}
	dir := t.TempDir()
	src, mp := filepath.Join(dir, "src"), filepath.Join(dir, "mnt")
	for _, d := range []string{src, mp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := Unmount(mp, false); err == nil || !strings.Contains(err.Error(), "not mounted") {
		t.Errorf("Unmount of a plain directory: %v", err)
	}
	if err := syscall.Mount(src, mp, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	defer syscall.Unmount(mp, syscall.MNT_DETACH)
	fstype, ok := FSTypeAt(mp)
	if !ok || fstype == FSType {
		t.Fatalf("FSTypeAt(%s) = %q, %v", mp, fstype, ok)
	}
	err := Unmount(mp, true)
	if err == nil || !strings.Contains(err.Error(), "not a combinefs mount") || !strings.Contains(err.Error(), mp) {
		t.Errorf("Unmount of a bind mount: %v", err)
	}
	if !IsMounted(mp) {
		t.Error("the bind mount was unmounted")
	}
}
