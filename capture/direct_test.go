package capture

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"unsafe"
)

// A large file goes direct up to its last aligned byte and buffered for the
// tail; a small one, or any once direct writes were refused, is buffered.
// Either way the file holds exactly what was written.
func TestDirectWrites(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 2*directMin+dioAlign+777)
	rand.New(rand.NewSource(1)).Read(data)
	buf := alignedBuf(directMin)
	if p := uintptr(unsafe.Pointer(unsafe.SliceData(buf))); p%dioAlign != 0 || len(buf) != directMin {
		t.Fatalf("alignedBuf: address %#x, length %d", p, len(buf))
	}
	for _, tc := range []struct {
		name      string
		size      int
		off       bool
		mayDirect bool
	}{
		{"large", len(data), false, true},
		{"small", directMin - 1, false, false},
		{"refused before", len(data), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d directIO
			d.off.Store(tc.off)
			path := filepath.Join(dir, tc.name)
			f, err := d.create(path, 0o600, int64(tc.size))
			if err != nil {
				t.Fatal(err)
			}
			if f.direct && !tc.mayDirect {
				t.Fatalf("opened with O_DIRECT")
			}
			startedDirect := f.direct
			for rest := data[:tc.size]; len(rest) > 0; {
				n := copy(buf, rest)
				if err := f.write(buf[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if startedDirect && tc.size%dioAlign != 0 && f.direct {
				t.Errorf("still O_DIRECT after the unaligned tail")
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[:tc.size]) {
				t.Fatalf("file holds %d bytes, not the %d written", len(got), tc.size)
			}
			t.Logf("direct: %v", startedDirect)
		})
	}
}
