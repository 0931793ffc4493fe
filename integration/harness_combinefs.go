package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildErr  error
)

// combinefsPaths are the in-root paths of the combinefs binary and of the
// pg_combinebackup link to it. Inside a chroot they are system paths of
// this source tree; with PG_BINDIR (no chroot) they live in a per-user temp
// directory so the host's /usr/local is left alone.
func (e *Env) combinefsPaths() (bin, link string) {
	if e.Root == "/" {
		dir := filepath.Join(os.TempDir(), "combinefs-"+strconv.Itoa(os.Getuid()))
		return filepath.Join(dir, "bin", "combinefs"), filepath.Join(dir, "lib", "pg_combinebackup")
	}
	// One directory per source tree: helpers testing other trees of the
	// module at the same time in the same root would otherwise swap the
	// binary under each other's tests.
	mod, _ := moduleRoot()
	h := sha256.Sum256([]byte(mod))
	dir := "/usr/local/lib/combinefs-test/" + hex.EncodeToString(h[:6])
	return dir + "/combinefs", dir + "/pg_combinebackup"
}

// CombinefsPath builds ./cmd/combinefs (once per process), installs it in
// the root and returns its in-root path. A build failure fails the test.
func (e *Env) CombinefsPath(tb testing.TB) string {
	tb.Helper()
	if err := e.buildCombinefs(); err != nil {
		tb.Fatal(err)
	}
	bin, _ := e.combinefsPaths()
	return bin
}

// CombinefsAsPgCombinebackup returns the in-root path of a link named
// pg_combinebackup to the combinefs binary: invoked through it, combinefs
// behaves as pg_combinebackup. A build failure surfaces when a command made
// by Command runs it.
func (e *Env) CombinefsAsPgCombinebackup() string {
	_ = e.buildCombinefs()
	_, link := e.combinefsPaths()
	return link
}

// Combinefs prepares combinefs to run inside the root as root (the FUSE
// mount and flatten of root-owned trees need it). A build failure is
// reported by the command's Start/Run.
func (e *Env) Combinefs(ctx context.Context, args ...string) *exec.Cmd {
	bin, _ := e.combinefsPaths()
	return e.Command(ctx, true, bin, args...)
}

// combinefsBuildErr is the build error when name is the combinefs binary or
// its pg_combinebackup link, building on first use.
func combinefsBuildErr(name string, e *Env) error {
	bin, link := e.combinefsPaths()
	if name != bin && name != link {
		return nil
	}
	return e.buildCombinefs()
}

func (e *Env) buildCombinefs() error {
	buildOnce.Do(func() { buildErr = e.installCombinefs() })
	return buildErr
}

// installCombinefs builds with CGO_ENABLED=0 (the binary must run in a root
// with another libc) straight into the destination directory and renames it
// into place, so a concurrent reader never sees a partial binary; the link is
// replaced the same way.
func (e *Env) installCombinefs() error {
	mod, err := moduleRoot()
	if err != nil {
		return err
	}
	bin, link := e.combinefsPaths()
	hostBin, hostLink := e.Host(bin), e.Host(link)
	for _, d := range []string{filepath.Dir(hostBin), filepath.Dir(hostLink)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	tmp := fmt.Sprintf("%s.tmp%d", hostBin, os.Getpid())
	cmd := exec.Command(goTool(), "build", "-o", tmp, "./cmd/combinefs")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("building combinefs: %v\n%s", err, out)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, hostBin); err != nil {
		return err
	}
	tmpLink := fmt.Sprintf("%s.tmp%d", hostLink, os.Getpid())
	os.Remove(tmpLink)
	if err := os.Symlink(bin, tmpLink); err != nil {
		return err
	}
	return os.Rename(tmpLink, hostLink)
}
