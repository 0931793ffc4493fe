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
	c := resolvertest.NewChain(t)
	full := c.Full()
	big := make([]byte, 3<<20+123)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	full.File("base/5/16384", big)
	full.File("base/5/PG_VERSION", []byte("17\n"))
	dir := c.Dirs()[0]
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
