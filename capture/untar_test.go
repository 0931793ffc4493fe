package capture

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/combinefs/combinefs/internal/dio"
)

// The streaming untar extracts what archive/tar wrote, whatever the sizes
// of the pieces the archive arrives in: files around the block, buffer and
// direct-write boundaries, empty files, directories, modes.
func TestUntarPieces(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	sizes := []int{0, 1, 511, 512, 513, 8192, writeSize - 1, writeSize, writeSize + 1, dio.MinSize + dio.Align + 77, 2*writeSize + 5}
	var entries []tarEntry
	want := map[string][]byte{}
	entries = append(entries, tarEntry{name: "base", dir: true}, tarEntry{name: "base/5", dir: true})
	for i, n := range sizes {
		body := make([]byte, n)
		rng.Read(body)
		name := filepath.Join("base/5", strings.Repeat("f", i+1))
		entries = append(entries, tarEntry{name: name, body: string(body)})
		want[name] = body
	}
	archive := buildTar(t, entries...)
	// GNU tar pads archives to 10 kB records with zeros.
	archive = append(archive, make([]byte, 10240-len(archive)%10240)...)
	for _, piece := range []int{1, 7, 512, 1000, 32 << 10, len(archive)} {
		dir := t.TempDir()
		x := &extractor{layout: &layout{root: dir}, out: &localOut{sync: newSyncer(true)}}
		u := newUntar(x, dir, true)
		for p := archive; len(p) > 0; {
			n := min(len(p), 1+rng.Intn(piece))
			if err := u.push(p[:n]); err != nil {
				t.Fatalf("pieces of up to %d: %v", piece, err)
			}
			p = p[n:]
		}
		if err := u.finish(); err != nil {
			t.Fatalf("pieces of up to %d: finish: %v", piece, err)
		}
		if err := x.out.(*localOut).sync.wait(); err != nil {
			t.Fatal(err)
		}
		for name, body := range want {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("pieces of up to %d: %s: %d bytes, want %d (%v)", piece, name, len(got), len(body), err)
			}
			if fi, _ := os.Stat(filepath.Join(dir, name)); fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v", name, fi.Mode())
			}
		}
	}
}

// Headers that are damaged, or that PostgreSQL never writes, are refused.
func TestUntarRefuses(t *testing.T) {
	good := buildTar(t, tarEntry{name: "PG_VERSION", body: "17\n"})
	damage := func(f func(h []byte)) []byte {
		b := bytes.Clone(good)
		f(b[:tarBlock])
		return b
	}
	fixSum := func(h []byte) {
		copy(h[148:156], "        ")
		var sum int64
		for _, c := range h {
			sum += int64(c)
		}
		copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	}
	for _, tc := range []struct {
		name, want string
		archive    []byte
	}{
		{"bad checksum", "checksum", damage(func(h []byte) { h[0] = 'Q' })},
		{"PAX header", "PAX", damage(func(h []byte) { h[156] = 'x'; fixSum(h) })},
		{"GNU long name", "unsupported type", damage(func(h []byte) { h[156] = 'L'; fixSum(h) })},
		{"bad size", "invalid mode or size", damage(func(h []byte) { copy(h[124:], "9x"); fixSum(h) })},
		{"zero block inside", "zero block inside", append(make([]byte, tarBlock), good...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			x := &extractor{layout: &layout{root: dir}, out: &localOut{sync: newSyncer(true)}}
			u := newUntar(x, dir, true)
			err := u.push(tc.archive)
			if err == nil {
				err = u.finish()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			u.abort()
		})
	}
}

func TestTarNumber(t *testing.T) {
	for _, tc := range []struct {
		field []byte
		want  int64
		ok    bool
	}{
		{[]byte("00000000644\x00"), 0o644, true},
		{[]byte("   644 \x00"), 0o644, true},
		{[]byte("\x00\x00\x00"), 0, true},
		{[]byte{0x80, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0}, 2 << 16, true}, // base-256, 128 kB
		{[]byte{0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, 0, false},      // 2^64
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0, false},
		{[]byte("12x"), 0, false},
	} {
		got, err := tarNumber(tc.field)
		if (err == nil) != tc.ok || tc.ok && got != tc.want {
			t.Errorf("tarNumber(%q) = %d, %v; want %d (ok %v)", tc.field, got, err, tc.want, tc.ok)
		}
	}
}
