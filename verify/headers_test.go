package verify

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver/resolvertest"
)

// TestVerifyHeaders: with the headers of the point's marker, each
// INCREMENTAL file must be listed with its own header: a header that
// differs, an INCREMENTAL file the marker does not list and a listed file
// the backup lacks are each a problem; without headers nothing is checked.
func TestVerifyHeaders(t *testing.T) {
	c := resolvertest.NewChain(t)
	full := c.Full()
	full.File("base/5/16384", make([]byte, 4*format.BlockSize))
	full.File("base/5/PG_VERSION", []byte("17\n"))
	inc := c.Incremental()
	inc.Incremental("base/5/16384", 4, resolvertest.Block{Num: 1, Data: resolvertest.FillBlock("x", 1)})
	inc.Incremental("base/5/16385", 0)
	inc.File("base/5/PG_VERSION", []byte("17\n"))
	dir := c.Dirs()[1]
	good := map[string][]byte{
		"base/5/INCREMENTAL.16384": format.AppendIncrementalHeader(nil, 4, []uint32{1})[:16],
		"base/5/INCREMENTAL.16385": format.AppendIncrementalHeader(nil, 0, nil),
	}
	check := func(headers map[string][]byte) []string {
		t.Helper()
		res, err := Backup(context.Background(), dir, Options{SkipWAL: true, Headers: headers})
		if err != nil {
			t.Fatal(err)
		}
		return res.Problems
	}
	if p := check(good); len(p) != 0 {
		t.Fatalf("the backup's own headers: %q", p)
	}
	if p := check(nil); len(p) != 0 {
		t.Fatalf("no headers: %q", p)
	}
	other := map[string][]byte{
		"base/5/INCREMENTAL.16384": format.AppendIncrementalHeader(nil, 4, []uint32{2})[:16],
		"base/5/INCREMENTAL.16399": bytes.Clone(good["base/5/INCREMENTAL.16385"]),
	}
	want := []string{
		`"base/5/INCREMENTAL.16399" is in the header pack of the point's marker but not in the backup`,
		`"base/5/INCREMENTAL.16384": its header differs from the one in the point's marker`,
		`"base/5/INCREMENTAL.16385" is not in the header pack of the point's marker`,
	}
	if p := check(other); !slices.Equal(p, want) {
		t.Errorf("other headers: %q\nwant %q", p, want)
	}
}
