package main

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestSeqMatchesASortedSlice(t *testing.T) {
	// Thousands of random inserts and removals, across chunk splits and emptied chunks,
	// each checked against a plain sorted slice; every version stays as it was.
	rng := rand.New(rand.NewPCG(1, 2))
	order := func(a, b *entry) int { return cmp.Compare(a.ID, b.ID) }
	var want []*entry
	var s seq
	type version struct {
		s    seq
		want []*entry
	}
	var versions []version
	for i := range 6000 {
		var old, added *entry
		if len(want) > 0 && rng.IntN(3) == 0 {
			old = want[rng.IntN(len(want))]
		}
		if rng.IntN(4) != 0 {
			added = &entry{Event: Event{ID: newID()}}
		}
		s = s.with(old, added, order)
		want = slices.Clone(want)
		if old != nil {
			want = slices.DeleteFunc(want, func(e *entry) bool { return e == old })
		}
		if added != nil {
			j, _ := slices.BinarySearchFunc(want, added, order)
			want = slices.Insert(want, j, added)
		}
		if i%500 == 0 {
			versions = append(versions, version{s, want})
		}
	}
	versions = append(versions, version{s, want})
	for i, v := range versions {
		got := slices.Collect(v.s.all())
		if v.s.len() != len(v.want) || !slices.Equal(got, v.want) {
			t.Fatalf("version %d: %d entries (len %d); want %d in order", i, len(got), v.s.len(), len(v.want))
		}
		for _, c := range v.s.chunks {
			if len(c) == 0 || len(c) > 2*chunkSize {
				t.Fatalf("version %d has a chunk of %d entries", i, len(c))
			}
		}
	}
	// search finds each entry, and the place after the last for anything larger.
	for _, e := range want {
		p, ok := s.search(func(x *entry) int { return order(x, e) })
		if !ok || s.at(p) != e {
			t.Fatalf("search(%s) = %v, %v", e.ID, p, ok)
		}
	}
	if p, ok := s.search(func(x *entry) int { return cmp.Compare(x.ID, "zzzz") }); ok || s.at(p) != nil {
		t.Fatalf("search past the end = %v, %v; want the end", p, ok)
	}
}
