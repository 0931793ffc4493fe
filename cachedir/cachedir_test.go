package cachedir

import (
	"bytes"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func key(b byte) Key { return Key{0: b, 31: b} }

// put fills k with data through Fill.
func put(t *testing.T, d *Dir, k Key, data []byte) Entry {
	t.Helper()
	e, err := d.Fill(k, int64(len(data)), func(tmp string) (uint32, error) {
		return crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)), os.WriteFile(tmp, data, 0o600)
	})
	if err != nil {
		t.Fatalf("Fill: %v", err)
	}
	return e
}

func TestOpenRefuses(t *testing.T) {
	root := t.TempDir()
	cases := []struct {
		name, want string
		make       func(p string)
	}{
		{"group-writable", "writable by group or others", func(p string) { os.Mkdir(p, 0o700); os.Chmod(p, 0o770) }},
		{"a-file", "not a directory", func(p string) { os.WriteFile(p, nil, 0o600) }},
		{"a-symlink", "is a symbolic link", func(p string) { os.Mkdir(p+".real", 0o700); os.Symlink(p+".real", p) }},
		{"files-writable", "writable by group or others", func(p string) {
			os.Mkdir(p, 0o700)
			os.Mkdir(filepath.Join(p, "files"), 0o777)
			os.Chmod(filepath.Join(p, "files"), 0o777)
		}},
	}
	if os.Geteuid() == 0 {
		cases = append(cases, struct {
			name, want string
			make       func(p string)
		}{"someone-elses", "is owned by uid 1234", func(p string) { os.Mkdir(p, 0o700); os.Chown(p, 1234, 1234) }})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(root, c.name)
			c.make(p)
			d, err := Open(p, 1<<20)
			if err == nil {
				d.Close()
				t.Fatalf("Open succeeded")
			}
			if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Open: %q, want one line with %q", err, c.want)
			}
		})
	}
	if _, err := Open(filepath.Join(root, "x"), 0); err == nil {
		t.Errorf("Open with a bound of 0 succeeded")
	}
}

// TestLock: a second open of a directory in use is refused, and allowed
// once the first is closed.
func TestLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c")
	d, err := Open(p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if d2, err := Open(p, 1<<20); err == nil || !strings.Contains(err.Error(), "in use by another combinefs mount") {
		if d2 != nil {
			d2.Close()
		}
		t.Fatalf("second Open: %v", err)
	}
	d.Close()
	d, err = Open(p, 1<<20)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	d.Close()
}

// TestLoad: reopening keeps complete files and drops leftovers of fills,
// badly named files and files whose size is not their name's.
func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c")
	d, err := Open(p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	good := put(t, d, key(1), []byte("hello"))
	short := put(t, d, key(2), []byte("world!"))
	d.Close()
	os.Truncate(short.Path, 3)
	os.WriteFile(filepath.Join(p, "tmp", key(3).String()), []byte("half"), 0o600)
	os.WriteFile(filepath.Join(p, "files", "junk"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(p, "files", fileName(key(4), 1, 2)+"-x"), []byte("xx"), 0o600)

	d, err = Open(p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ents, _ := os.ReadDir(filepath.Join(p, "files"))
	if len(ents) != 1 || filepath.Join(p, "files", ents[0].Name()) != good.Path {
		t.Errorf("files/ after reopening: %v, want only %s", ents, good.Path)
	}
	if tmps, _ := os.ReadDir(filepath.Join(p, "tmp")); len(tmps) != 0 {
		t.Errorf("tmp/ after reopening: %v", tmps)
	}
	e, ok := d.Lookup(key(1))
	if !ok || e.Size != 5 || e.CRC != good.CRC || Verify(e) != nil {
		t.Errorf("Lookup of the good file: %+v %v, verify %v", e, ok, Verify(e))
	}
	if _, ok := d.Lookup(key(2)); ok {
		t.Errorf("the truncated file was kept")
	}
	if st := d.Stats(); st.Files != 1 || st.Bytes != 5 {
		t.Errorf("stats: %+v", st)
	}
}

// TestFillAndEvict: a failed fill leaves nothing; files over the bound are
// refused; the least recently used go first, also in the order a reopen
// reads from the files' times.
func TestFillAndEvict(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c")
	d, err := Open(p, 10)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if _, err := d.Fill(key(9), 4, func(tmp string) (uint32, error) {
		os.WriteFile(tmp, []byte("part"), 0o600)
		return 0, boom
	}); !errors.Is(err, boom) {
		t.Errorf("failed fill: %v", err)
	}
	if _, err := d.Fill(key(8), 4, func(tmp string) (uint32, error) { return 0, os.WriteFile(tmp, []byte("abc"), 0o600) }); err == nil {
		t.Errorf("a fill that wrote 3 of 4 bytes succeeded")
	}
	if _, err := d.Fill(key(7), 11, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("11 bytes in a 10-byte directory: %v", err)
	}
	for _, sub := range []string{"files", "tmp"} {
		if ents, _ := os.ReadDir(filepath.Join(p, sub)); len(ents) != 0 {
			t.Errorf("%s/ after failed fills: %v", sub, ents)
		}
	}
	put(t, d, key(1), []byte("aaaa"))
	time.Sleep(10 * time.Millisecond) // distinct mtimes for the order after reopening
	put(t, d, key(2), []byte("bbbb"))
	time.Sleep(10 * time.Millisecond)
	d.Lookup(key(1)) // 2 is now the least recently used
	put(t, d, key(3), []byte("cccc"))
	if _, ok := d.Lookup(key(2)); ok {
		t.Errorf("the least recently used file was kept")
	}
	if st := d.Stats(); st.Files != 2 || st.Bytes != 8 || st.Evicted != 1 {
		t.Errorf("stats: %+v", st)
	}
	d.Close()
	// Reopened smaller: the older of the two (1, used before 3 was made) goes.
	d, err = Open(p, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	e, ok := d.Lookup(key(3))
	got, _ := os.ReadFile(e.Path)
	if _, ok1 := d.Lookup(key(1)); ok1 || !ok || !bytes.Equal(got, []byte("cccc")) {
		t.Errorf("reopened with room for one: 1 kept %v, 3 kept %v (%q)", ok1, ok, got)
	}
}

func TestVerify(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "c"), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	e := put(t, d, key(1), []byte("content"))
	if err := Verify(e); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(e.Path, []byte("Content"), 0o600)
	if err := Verify(e); err == nil || !strings.Contains(err.Error(), "CRC-32C") {
		t.Errorf("Verify of a changed file: %v", err)
	}
	os.WriteFile(e.Path, []byte("content+"), 0o600)
	if err := Verify(e); err == nil {
		t.Errorf("Verify of a longer file succeeded")
	}
}

func TestParseName(t *testing.T) {
	k := key(7)
	for _, size := range []int64{0, 1, 1 << 30} {
		gk, crc, gs, ok := parseName(fileName(k, 0xdeadbeef, size))
		if !ok || gk != k || crc != 0xdeadbeef || gs != size {
			t.Errorf("round trip of size %d: %v %x %d %v", size, gk, crc, gs, ok)
		}
	}
	for _, bad := range []string{"", "x", k.String() + "-0-1", k.String() + "-deadbeef-01", k.String() + "-deadbeef--1", k.String()[2:] + "-deadbeef-1", k.String() + "-deadbeef-1-2"} {
		if _, _, _, ok := parseName(bad); ok {
			t.Errorf("parseName(%q) accepted", bad)
		}
	}
}
