package capture

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/repo"
)

// objectStore is a local directory that the repository takes for an
// object store (it is not a repo.Local), so that a capture into it goes
// through storeOut: the same Storage calls as on S3, without a server.
type objectStore struct{ repo.Local }

// storeManifest is a manifest of baseTar's files; bad names a file whose
// checksum it gets wrong, extra one it lists that the server never sends.
func storeManifest(bad, extra string) []byte {
	files := map[string]string{
		"backup_label": "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nCHECKPOINT LOCATION: 0/3000080\nSTART TIMELINE: 1\n",
		"PG_VERSION":   "17\n", "base/1/1259": strings.Repeat("x", 100000), "global/pg_control": "control",
	}
	if extra != "" {
		files[extra] = ""
	}
	var lines []string
	for _, name := range []string{"backup_label", "PG_VERSION", "base/1/1259", "global/pg_control", extra} {
		body, ok := files[name]
		if !ok {
			continue
		}
		h := format.ChecksumCRC32C.New()
		h.Write([]byte(body))
		if name == bad {
			h.Write([]byte("!"))
		}
		lines = append(lines, fmt.Sprintf(`{ "Path": %q, "Size": %d, "Last-Modified": "2026-11-26 07:57:14 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": %q }`,
			name, len(body), hex.EncodeToString(h.Sum(nil))))
	}
	body := "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7000000000000000001,\n\"Files\": [\n" +
		strings.Join(lines, ",\n") + "\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/3000028\", \"End-LSN\": \"0/3000100\" }\n],\n"
	sum := sha256.Sum256([]byte(body))
	return []byte(body + `"Manifest-Checksum": "` + hex.EncodeToString(sum[:]) + "\"}\n")
}

// TestRepoCaptureObjectStore: a capture into an object store publishes
// the point by its marker only after the manifest matched what went up
// (sizes and checksums computed as the files streamed), keeps empty
// directories as markers, and otherwise fails naming the file and leaves
// neither a marker nor the point's objects.
func TestRepoCaptureObjectStore(t *testing.T) {
	for _, tc := range []struct {
		name, bad, extra, want string
	}{
		{name: "ok"},
		{name: "checksum", bad: "PG_VERSION", want: "PG_VERSION went up with a CRC32C checksum other than the manifest's"},
		{name: "missing", extra: "base/1/2600", want: "the manifest lists base/1/2600, which the server did not send"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := storeManifest(tc.bad, tc.extra)
			base := baseTar(t)
			_, o := newBackupServer(t, func(s *fakeSession) {
				s.backupStart("0/3000028", "")
				s.send(newArchive("base.tar", ""))
				s.sendChunks(base, 1000)
				s.send(progressMsg(int64(len(base))), manifestStart(), archiveData(m))
				s.backupEnd("0/3000100")
			}, nil)
			dir := t.TempDir()
			r := &repo.Repo{Dir: dir, Store: objectStore{repo.Local{Root: dir}}}
			name, _, err := RepoCapture(context.Background(), r, o, true, nil)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("capture: %v, want %q", err, tc.want)
				}
				ents, _ := os.ReadDir(dir)
				for _, e := range ents {
					if repo.IsPointName(e.Name()) {
						if files, _ := (repo.Local{Root: dir}).List(context.Background(), e.Name()+"/"); len(files) > 0 {
							t.Errorf("a failed capture left %d objects of %s", len(files), e.Name())
						}
					}
					if e.Name() == ".points" {
						if markers, _ := os.ReadDir(filepath.Join(dir, e.Name())); len(markers) > 0 {
							t.Errorf("a failed capture left the marker %s", markers[0].Name())
						}
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{repo.MarkerName(name), name + "/backup_manifest", name + "/base/1/1259"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Error(err)
				}
			}
			if fi, err := os.Stat(filepath.Join(dir, name, "pg_wal", "archive_status")); err != nil || !fi.IsDir() {
				t.Errorf("the empty directory pg_wal/archive_status: %v", err)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, name, "backup_manifest")); string(got) != string(m) {
				t.Error("backup_manifest is not the server's manifest")
			}
		})
	}
}

// TestStoreHeaderPack: the marker's header pack of a capture into an
// object store holds the header of each INCREMENTAL file as it streamed up
// (in writes of any size), and nothing for other files or for an
// INCREMENTAL file whose blocks do not end it.
func TestStoreHeaderPack(t *testing.T) {
	dir := t.TempDir()
	r := &repo.Repo{Dir: dir, Store: objectStore{repo.Local{Root: dir}}}
	o := newStoreOut(context.Background(), r, "P", format.ChecksumNone)
	blocks := []uint32{3, 9, 4000}
	file := format.AppendIncrementalHeader(nil, 5000, blocks)
	file = append(file, make([]byte, len(blocks)*format.BlockSize)...)
	put := func(rel string, data []byte, step int) {
		f, err := o.newFile("/P/"+rel, 0)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); off += step {
			if _, err := f.WriteAt(data[off:min(off+step, len(data))], int64(off)); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.close(); err != nil {
			t.Fatal(err)
		}
	}
	put("base/5/INCREMENTAL.16384", file, 7)
	put("base/5/INCREMENTAL.16385", file[:len(file)-1], 4096) // cut short
	put("base/5/16386", file, 1<<20)
	if err := o.wait(); err != nil {
		t.Fatal(err)
	}
	pack, err := repo.ParseMarker("P", o.headerPack().Marker("P"))
	want := file[:12+4*len(blocks)]
	if err != nil || len(pack) != 1 || string(pack["base/5/INCREMENTAL.16384"]) != string(want) {
		t.Errorf("the capture's pack: %v, %x; want only base/5/INCREMENTAL.16384's header %x", err, pack, want)
	}
}
