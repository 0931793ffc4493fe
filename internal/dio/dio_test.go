package dio

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
	data := make([]byte, 2*MinSize+Align+777)
	rand.New(rand.NewSource(1)).Read(data)
	buf := AlignedBuf(MinSize)
	if p := uintptr(unsafe.Pointer(unsafe.SliceData(buf))); p%Align != 0 || len(buf) != MinSize {
		t.Fatalf("AlignedBuf: address %#x, length %d", p, len(buf))
	}
	for _, tc := range []struct {
		name      string
		size      int
		off       bool
		mayDirect bool
	}{
		{"large", len(data), false, true},
		{"small", MinSize - 1, false, false},
		{"refused before", len(data), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d Creator
			if tc.off {
				d.Disable()
			}
			path := filepath.Join(dir, tc.name)
			f, err := d.Create(path, 0o600, int64(tc.size))
			if err != nil {
				t.Fatal(err)
			}
			if f.Direct() && !tc.mayDirect {
				t.Fatalf("opened with O_DIRECT")
			}
			startedDirect := f.Direct()
			off := int64(0)
			for rest := data[:tc.size]; len(rest) > 0; {
				n := copy(buf, rest)
				if m, err := f.WriteAt(buf[:n], off); err != nil || m != n {
					t.Fatalf("WriteAt %d at %d: %d, %v", n, off, m, err)
				}
				rest, off = rest[n:], off+int64(n)
			}
			if startedDirect && tc.size%Align != 0 && f.Direct() {
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

// OpenRead opens direct where it can; ClearDirect then allows reads at any
// alignment on the same descriptor.
func TestOpenReadClearDirect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, 3*Align)
	rand.New(rand.NewSource(2)).Read(data)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, direct, err := OpenRead(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := AlignedBuf(2 * Align)
	if n, err := f.ReadAt(buf, Align); err != nil || !bytes.Equal(buf[:n], data[Align:]) {
		t.Fatalf("aligned read: %d, %v", n, err)
	}
	if err := ClearDirect(f); err != nil {
		t.Fatal(err)
	}
	odd := make([]byte, 100)
	if n, err := f.ReadAt(odd, 7); err != nil || !bytes.Equal(odd[:n], data[7:107]) {
		t.Fatalf("unaligned read after ClearDirect: %d, %v", n, err)
	}
	t.Logf("direct: %v", direct)
}
