package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/internal/s3test"
	"github.com/combinefs/combinefs/resolver"
)

// localHeaders are the headers (without padding) of the INCREMENTAL files
// of the backup directory dir, by path in it.
func localHeaders(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasPrefix(d.Name(), format.IncrementalPrefix) {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = data[:12+4*binary.NativeEndian.Uint32(data[4:])]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// replaceMarker puts data as point name's marker (a marker is created
// only if absent, so the old one goes first).
func replaceMarker(t *testing.T, st Storage, name string, data []byte) {
	t.Helper()
	ctx := context.Background()
	if err := st.Delete(ctx, MarkerName(name)); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, MarkerName(name), data); err != nil {
		t.Fatal(err)
	}
}

// TestS3HeaderPacks: UploadPoint writes each point's marker with the
// exact headers of its INCREMENTAL files (a full backup's pack is empty);
// a chain opened from S3 takes every header from the packs, reading no
// INCREMENTAL object; an entry that is malformed or does not fit its
// object's size, a pack whose checksum fails, and a marker of only the
// point's name (as every point written before packs) each make the
// headers concerned read from the objects, and the point still reads as
// the local chain does. A pack problem is logged once per point.
func TestS3HeaderPacks(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	dir, bucket, st := pushS3TestChain(t, srv)
	var localDirs []string
	for _, n := range s3ChainNames {
		localDirs = append(localDirs, filepath.Join(dir, n))
	}
	r, err := OpenWith(ctx, "s3://"+bucket+"/db", false, S3Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	markers := map[string][]byte{}
	for i, n := range s3ChainNames {
		pack, err := r.PointHeaders(ctx, n)
		want := localHeaders(t, localDirs[i])
		if err != nil || pack == nil || !maps.EqualFunc(pack, want, bytes.Equal) {
			t.Fatalf("point %s: pack %v (%v), want the %d headers of its INCREMENTAL files", n, pack, err, len(want))
		}
		if i > 0 && len(want) != 2 {
			t.Fatalf("point %s has %d INCREMENTAL files, the test wants 2", n, len(want))
		}
		markers[n] = pack.Marker(n)
	}
	want := treeFiles(t, openTestTree(t, localDirs, resolver.ChainOptions{RequireV2Manifests: true}))

	// tamper returns markers[name]'s pack with entry rel's header changed.
	tamper := func(name, rel string, change func([]byte) []byte) []byte {
		pack, err := ParseMarker(name, markers[name])
		if err != nil {
			t.Fatal(err)
		}
		pack[rel] = change(bytes.Clone(pack[rel]))
		return pack.Marker(name)
	}
	inc1, inc2 := s3ChainNames[1], s3ChainNames[2]
	for _, c := range []struct {
		name    string
		markers map[string][]byte // the markers to put before the case
		reads   []string          // the INCREMENTAL objects read at open
		logs    int
	}{
		{"packs", markers, nil, 0},
		{"an entry of the wrong size and a malformed one", map[string][]byte{
			// one block fewer: the blocks no longer end the object
			inc2: tamper(inc2, "base/5/INCREMENTAL.16384", func(h []byte) []byte {
				binary.NativeEndian.PutUint32(h[4:], binary.NativeEndian.Uint32(h[4:])-1)
				return h[:len(h)-4]
			}),
			// a bad magic number
			inc1: tamper(inc1, "base/5/INCREMENTAL.16385", func(h []byte) []byte { h[0] ^= 1; return h }),
		}, []string{inc1 + "/base/5/INCREMENTAL.16385", inc2 + "/base/5/INCREMENTAL.16384"}, 2},
		{"a pack whose checksum fails", map[string][]byte{
			inc1: markers[inc1],
			inc2: func() []byte { m := bytes.Clone(markers[inc2]); m[len(m)-1] ^= 1; return m }(),
		}, []string{inc2 + "/base/5/INCREMENTAL.16384", inc2 + "/base/5/INCREMENTAL.16385"}, 1},
		{"markers of only the name", map[string][]byte{
			inc1: []byte(inc1 + "\n"), inc2: []byte(inc2 + "\n"),
		}, []string{inc1 + "/base/5/INCREMENTAL.16384", inc1 + "/base/5/INCREMENTAL.16385", inc2 + "/base/5/INCREMENTAL.16384", inc2 + "/base/5/INCREMENTAL.16385"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			for n, m := range c.markers {
				replaceMarker(t, st, n, m)
			}
			r, err := OpenWith(ctx, "s3://"+bucket+"/db", false, S3Options{Endpoint: srv.Endpoint})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var logs []string
			r.Log = func(msg string) { mu.Lock(); logs = append(logs, msg); mu.Unlock() }
			counter := &countingStore{Storage: r.Store}
			r.Store = counter
			dirs, opts := shareTestChain(t, r)
			tree := openTestTree(t, dirs, opts)
			var reads []string
			for _, rd := range counter.reads {
				if strings.Contains(rd.name, format.IncrementalPrefix) {
					reads = append(reads, rd.name)
				}
			}
			slices.Sort(reads)
			reads = slices.Compact(reads)
			if !slices.Equal(reads, c.reads) {
				t.Errorf("opening the chain read the INCREMENTAL objects %q, want %q", reads, c.reads)
			}
			if len(logs) != c.logs {
				t.Errorf("opening the chain logged %q, want %d lines", logs, c.logs)
			}
			got := treeFiles(t, tree)
			if len(got) != len(want) {
				t.Errorf("the tree from S3 has %d entries, the local one %d", len(got), len(want))
			}
			for p, w := range want {
				if g, ok := got[p]; !ok || !bytes.Equal(g, w) {
					t.Errorf("%s from S3 differs from the local chain's (%d bytes, want %d)", p, len(g), len(w))
				}
			}
		})
	}
}
