package repo

import (
	"testing"
	"time"
)

func TestLinkParents(t *testing.T) {
	ts := time.Unix(0, 0)
	points := []*Point{
		{Name: "a-FULL", Kind: KindFull, StartLSN: 0x100, StartTLI: 1, Time: ts},
		{Name: "b-INCREMENTAL", Kind: KindIncremental, StartLSN: 0x200, StartTLI: 1, PrevLSN: 0x100, PrevTLI: 1},
		{Name: "c-FULL", Kind: KindFull, StartLSN: 0x300, StartTLI: 1},
		{Name: "d-INCREMENTAL", Kind: KindIncremental, StartLSN: 0x400, StartTLI: 1, PrevLSN: 0x200, PrevTLI: 1},
		{Name: "e-INCREMENTAL", Kind: KindIncremental, StartLSN: 0x500, StartTLI: 2, PrevLSN: 0x400, PrevTLI: 2},
	}
	linkParents(points)
	for i, want := range []string{"", "a-FULL", "", "b-INCREMENTAL", ""} {
		if points[i].Parent != want {
			t.Errorf("%s: parent %q, want %q", points[i].Name, points[i].Parent, want)
		}
	}
	if points[4].Problem == "" {
		t.Error("an incremental without a parent is not marked")
	}
}
