package verify

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// TestVerifyLargeFiles: files of dio.MinSize and more are read direct (an
// odd size, so the last read is short); their checksums are checked as the
// small files' are, and a damaged byte near the end is found.
func TestVerifyLargeFiles(t *testing.T) {
	dir, big := largeFileBackup(t, 3<<20+123)
	res, err := Backup(context.Background(), dir, Options{SkipWAL: true, Jobs: 2})
	if err != nil || len(res.Problems) != 0 || res.Bytes < int64(len(big)) {
		t.Fatalf("intact backup: %+v, %v", res, err)
	}
	p := filepath.Join(dir, "base/5/16384")
	big[len(big)-5] ^= 1
	if err := os.WriteFile(p, big, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err = Backup(context.Background(), dir, Options{SkipWAL: true})
	if err != nil || len(res.Problems) != 1 || !strings.Contains(res.Problems[0], `checksum mismatch for file "base/5/16384"`) {
		t.Fatalf("damaged backup: %+v, %v", res, err)
	}
	if err := os.Truncate(p, int64(len(big)-1)); err != nil {
		t.Fatal(err)
	}
	res, _ = Backup(context.Background(), dir, Options{SkipWAL: true})
	if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "has size 3145850 on disk") {
		t.Fatalf("short file: %+v", res.Problems)
	}
}

// largeFileBackup makes a backup whose base/5/16384 has size bytes (read
// direct when large) next to a small base/5/16385, and returns its
// directory and the large file's contents.
func largeFileBackup(t *testing.T, size int) (string, []byte) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	big := make([]byte, size)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	full.File("base/5/16384", big)
	full.File("base/5/16385", []byte("small relation"))
	full.File("base/5/PG_VERSION", []byte("17\n"))
	return c.Dirs()[0], big
}
