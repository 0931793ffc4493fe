package format_test

import (
	"strings"
	"testing"

	"github.com/combinefs/combinefs/format"
)

func TestSplitTablespaceMapping(t *testing.T) {
	long := "/" + strings.Repeat("d", 1023) // MAXPGPATH bytes
	for _, c := range []struct {
		arg, old, new, err string
	}{
		{arg: "/a=/b", old: "/a", new: "/b"},
		{arg: `/a\=x=/b`, old: "/a=x", new: "/b"},
		{arg: "/a==/b", old: "/a", new: "/b"}, // as the tools: the new side had not begun
		{arg: "/a=/b=/c", err: `multiple "=" signs`},
		{arg: "/a", err: "invalid tablespace mapping format"},
		{arg: "=/b", err: "invalid tablespace mapping format"},
		{arg: "/a=", err: "invalid tablespace mapping format"},
		{arg: "a=b", old: "a", new: "b"}, // relative: the callers refuse it
		{arg: long + "=/b", err: "directory name too long"},
		{arg: "/a=" + long + "x", err: "directory name too long"},
		{arg: "/a=" + long, old: "/a", new: long},
	} {
		old, nw, err := format.SplitTablespaceMapping(c.arg)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("SplitTablespaceMapping(%.20q): %v, want %q", c.arg, err, c.err)
			}
			continue
		}
		if err != nil || old != c.old || nw != c.new {
			t.Errorf("SplitTablespaceMapping(%.20q) = %.20q, %.20q, %v", c.arg, old, nw, err)
		}
	}
}

func FuzzSplitTablespaceMapping(f *testing.F) {
	for _, s := range []string{"/a=/b", `/a\==/b`, "/a==/b", "=", `\=`, "/a=/b=/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		old, nw, err := format.SplitTablespaceMapping(arg)
		if err == nil && (old == "" || nw == "" || len(old) >= 1024 || len(nw) > 1024 || len(old)+len(nw) > len(arg)) {
			t.Fatalf("SplitTablespaceMapping(%q) = %q, %q", arg, old, nw)
		}
	})
}
