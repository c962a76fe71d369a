package main

import (
	"iter"
	"slices"
)

// seq is an immutable sequence of entries in some order, kept in chunks, so that a copy
// with one entry added or removed shares every chunk but one with the original: a write
// costs a copy of the chunk list and of one chunk, O(n/chunkSize + chunkSize), rather
// than a copy of every entry. Snapshots hold their lists as seqs for that reason.
type seq struct {
	chunks [][]*entry // none empty; each at most 2*chunkSize long
	n      int
}

// chunkSize is how many entries a chunk starts with. At 100,000 events a copy with one
// change copies about 200 chunk headers and 512 pointers.
const chunkSize = 512

// seqPos is a place in a seq: chunk c, offset i.
type seqPos struct{ c, i int }

// newSeq returns the seq of sorted, which it keeps.
func newSeq(sorted []*entry) seq {
	s := seq{n: len(sorted)}
	for len(sorted) > 0 {
		k := min(chunkSize, len(sorted))
		s.chunks = append(s.chunks, sorted[:k:k])
		sorted = sorted[k:]
	}
	return s
}

func (s seq) len() int { return s.n }

// search returns the place of the first entry e with cmp(e) >= 0, where cmp compares an
// entry with what is sought; the place after the last entry when there is none. found
// reports cmp(e) == 0.
func (s seq) search(cmp func(*entry) int) (p seqPos, found bool) {
	c, _ := slices.BinarySearchFunc(s.chunks, 0, func(chunk []*entry, _ int) int {
		if cmp(chunk[len(chunk)-1]) < 0 {
			return -1
		}
		return 1
	})
	if c == len(s.chunks) {
		return seqPos{c, 0}, false
	}
	i, found := slices.BinarySearchFunc(s.chunks[c], 0, func(e *entry, _ int) int { return cmp(e) })
	return seqPos{c, i}, found
}

// at returns the entry at p, or nil when p is past the end.
func (s seq) at(p seqPos) *entry {
	if p.c >= len(s.chunks) {
		return nil
	}
	return s.chunks[p.c][p.i]
}

// from returns the entries from p on, in order.
func (s seq) from(p seqPos) iter.Seq[*entry] {
	return func(yield func(*entry) bool) {
		for c := p.c; c < len(s.chunks); c++ {
			start := 0
			if c == p.c {
				start = p.i
			}
			for _, e := range s.chunks[c][start:] {
				if !yield(e) {
					return
				}
			}
		}
	}
}

// all returns every entry, in order.
func (s seq) all() iter.Seq[*entry] { return s.from(seqPos{}) }

// with returns a copy of s, ordered by order, with old (when not nil and present) removed
// and added (when not nil) inserted. s is unchanged. Only the chunk list and the chunks
// that change are copied, each to its exact new size.
func (s seq) with(old, added *entry, order func(a, b *entry) int) seq {
	next := seq{chunks: slices.Clone(s.chunks), n: s.n}
	if old != nil {
		if p, ok := next.search(func(e *entry) int { return order(e, old) }); ok {
			chunk := next.chunks[p.c]
			if len(chunk) == 1 {
				next.chunks = slices.Delete(next.chunks, p.c, p.c+1)
			} else {
				next.chunks[p.c] = slices.Concat(chunk[:p.i], chunk[p.i+1:])
			}
			next.n--
		}
	}
	if added != nil {
		p, _ := next.search(func(e *entry) int { return order(e, added) })
		switch {
		case len(next.chunks) == 0:
			next.chunks = [][]*entry{{added}}
		default:
			if p.c == len(next.chunks) { // after the last entry: at the end of the last chunk
				p = seqPos{p.c - 1, len(next.chunks[p.c-1])}
			}
			chunk := next.chunks[p.c]
			grown := slices.Concat(chunk[:p.i], []*entry{added}, chunk[p.i:])
			if len(grown) > 2*chunkSize {
				half := len(grown) / 2
				next.chunks = slices.Insert(next.chunks, p.c+1, grown[half:])
				grown = grown[:half:half]
			}
			next.chunks[p.c] = grown
		}
		next.n++
	}
	return next
}

// filter returns the seq of the entries keep accepts, in the same order.
func (s seq) filter(keep func(*entry) bool) seq {
	var out []*entry
	for e := range s.all() {
		if keep(e) {
			out = append(out, e)
		}
	}
	return newSeq(out)
}
