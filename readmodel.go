package main

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// readModel answers every read from memory, so that players' polling never touches SQLite
// and never waits on a writer.
//
// It holds an immutable snapshot of all events, replaced atomically after each committed
// write: incrementally for this process's writes, by a full reload when the database holds
// writes the snapshot has not seen (another process's, or a race between two of ours). The
// events generation, bumped by every write in its transaction, tells which case applies.
//
// It answers "which events, shown how, until when" and knows no wire format: encoding, and
// caching what was encoded, is the transports' business.
type readModel struct {
	st    *store
	now   func() time.Time
	log   *logger
	zones *zones

	mu   sync.Mutex // serialises replacing snap
	snap atomic.Pointer[snapshot]
}

func newReadModel(ctx context.Context, st *store, now func() time.Time, log *logger) (*readModel, error) {
	rm := &readModel{st: st, now: now, log: log, zones: new(zones)}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	if err := rm.load(ctx); err != nil {
		return nil, err
	}
	return rm, nil
}

// load replaces the snapshot with the database's events. rm.mu must be held.
func (rm *readModel) load(ctx context.Context) error {
	events, gen, err := rm.st.Events(ctx)
	if err != nil {
		return err
	}
	rm.snap.Store(newSnapshot(gen, events, rm.now(), rm.zones))
	return nil
}

// snapshot returns the current snapshot. It never changes; a later call may return a newer one.
func (rm *readModel) snapshot() *snapshot { return rm.snap.Load() }

// applied records a write this process committed: the event as written (nil for a delete),
// or the id deleted, and the generation the write produced. When the write is the next one
// after the snapshot's, it is applied in place; otherwise the snapshot is reloaded. Either
// way, the writer's next read sees its write.
func (rm *readModel) applied(ctx context.Context, gen int64, e *Event, deletedID string) {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	cur := rm.snap.Load()
	switch {
	case gen <= cur.gen: // a reload already picked it up
	case gen == cur.gen+1:
		rm.snap.Store(cur.with(gen, e, deletedID, rm.now()))
	default:
		if err := rm.load(ctx); err != nil {
			// The poller retries within a second; until then reads are a write behind.
			rm.log.Error("reload events after a write", "err", err)
		}
	}
}

// refresh reloads the snapshot if the database holds event writes it has not seen.
func (rm *readModel) refresh(ctx context.Context) error {
	gen, err := rm.st.Generation(ctx)
	if err != nil {
		return err
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	if gen == rm.snap.Load().gen {
		return nil
	}
	return rm.load(ctx)
}

// entry is an event in a snapshot, with what the read path needs to know about its
// schedule worked out once.
type entry struct {
	Event
	sched     schedule
	firstSeen time.Time // when players may first see it: its preview time, else its start
	end       time.Time // when its last occurrence ends; forever for an endless recurrence
}

func newEntry(e Event, z *zones) *entry {
	en := &entry{Event: e, sched: newSchedule(&e, z)}
	en.firstSeen = en.Start.Add(-en.sched.lead)
	en.end = en.sched.seriesEnd()
	return en
}

func (e *entry) viewAt(t time.Time) view { return e.Event.viewAt(&e.sched, t) }

// viewOf works out how e, which need not be in any snapshot (an event just written, say),
// stands at t.
func (rm *readModel) viewOf(e Event, t time.Time) view {
	sched := newSchedule(&e, rm.zones)
	return e.viewAt(&sched, t)
}

// snapshot is every event at one events generation. It is never modified.
type snapshot struct {
	zones   *zones // shared by every snapshot of one read model
	gen     int64
	builtAt time.Time // open holds every event not ended at this instant
	ordered []*entry  // every event in list order: priority (highest first), start time, id
	byID    []*entry  // every event, ordered by id
	// open holds the published events that had not ended when the snapshot was made, ordered
	// by when players may first see them: the only ones players can see now or later, so
	// working out what they see costs nothing for ended events, however many there are.
	open []*entry
}

func listOrder(a, b *entry) int {
	if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
		return c
	}
	if c := a.Start.Compare(b.Start); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

func byIDOnly(a, b *entry) int { return cmp.Compare(a.ID, b.ID) }

func openOrder(a, b *entry) int {
	if c := a.firstSeen.Compare(b.firstSeen); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

func isOpen(e *entry, now time.Time) bool { return e.State != stateDraft && e.end.After(now) }

func newSnapshot(gen int64, events []Event, now time.Time, z *zones) *snapshot {
	s := &snapshot{zones: z, gen: gen, builtAt: now, ordered: make([]*entry, len(events))}
	for i := range events {
		s.ordered[i] = newEntry(events[i], z)
	}
	slices.SortFunc(s.ordered, listOrder)
	s.byID = slices.Clone(s.ordered)
	slices.SortFunc(s.byID, byIDOnly)
	for _, e := range s.ordered {
		if isOpen(e, now) {
			s.open = append(s.open, e)
		}
	}
	slices.SortFunc(s.open, openOrder)
	return s
}

// with returns a copy of s at generation gen with e written (inserted or replaced) or the
// event deletedID removed. Events in open that have ended by now are dropped on the way.
func (s *snapshot) with(gen int64, e *Event, deletedID string, now time.Time) *snapshot {
	id := deletedID
	var added *entry
	if e != nil {
		id, added = e.ID, newEntry(*e, s.zones)
	}
	old, _ := s.get(id)
	next := &snapshot{zones: s.zones, gen: gen, builtAt: now,
		ordered: edit(s.ordered, old, added, listOrder),
		byID:    edit(s.byID, old, added, byIDOnly),
	}
	next.open = make([]*entry, 0, len(s.open)+1)
	for _, o := range s.open {
		if o != old && o.end.After(now) {
			next.open = append(next.open, o)
		}
	}
	if added != nil && isOpen(added, now) {
		i, _ := slices.BinarySearchFunc(next.open, added, openOrder)
		next.open = slices.Insert(next.open, i, added)
	}
	return next
}

// edit returns a copy of the sorted list with old (if not nil) removed and added (if not
// nil) inserted in order.
func edit(list []*entry, old, added *entry, order func(a, b *entry) int) []*entry {
	out := make([]*entry, 0, len(list)+1)
	out = append(out, list...)
	if old != nil {
		if i, ok := slices.BinarySearchFunc(out, old, order); ok {
			out = slices.Delete(out, i, i+1)
		}
	}
	if added != nil {
		i, _ := slices.BinarySearchFunc(out, added, order)
		out = slices.Insert(out, i, added)
	}
	return out
}

// get returns the event with the given id.
func (s *snapshot) get(id string) (*entry, bool) {
	i, ok := slices.BinarySearchFunc(s.byID, id, func(e *entry, id string) int { return cmp.Compare(e.ID, id) })
	if !ok {
		return nil, false
	}
	return s.byID[i], true
}

// byFirstSeen returns every published event in open's order; for questions about the past.
func (s *snapshot) byFirstSeen() []*entry {
	out := make([]*entry, 0, len(s.ordered))
	for _, e := range s.ordered {
		if e.State != stateDraft {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, openOrder)
	return out
}

// statusSet is a set of statuses, one bit each.
type statusSet uint8

func (s statusSet) has(st eventStatus) bool { return s&(1<<st) != 0 }
func (s *statusSet) add(st eventStatus)     { *s |= 1 << st }

// playerQuery is what a player asks GET /events for.
type playerQuery struct {
	statuses statusSet // empty means active only
	labels   []string  // any of them; empty means no filter
}

func (q playerQuery) isDefault() bool {
	return (q.statuses == 0 || q.statuses == 1<<statusActive) && len(q.labels) == 0
}

// matches reports whether an event with the given labels and view answers q.
func (q playerQuery) matches(labels []string, v view) bool {
	want := q.statuses
	if want == 0 {
		want = 1 << statusActive
	}
	if !v.listed || !want.has(v.status) {
		return false
	}
	return hasAnyLabel(labels, q.labels)
}

// hasAnyLabel reports whether labels holds any of want; an empty want matches anything.
func hasAnyLabel(labels, want []string) bool {
	if len(want) == 0 {
		return true
	}
	for _, l := range want {
		if slices.Contains(labels, l) {
			return true
		}
	}
	return false
}

// shown is an event with its view, as a list shows it.
type shown struct {
	e *entry
	v view
}

// playerEvents returns what players asking q see at t, in list order (priority, then the
// shown occurrence's start, then id), and until when that answer holds.
func (s *snapshot) playerEvents(t time.Time, q playerQuery) ([]shown, time.Time) {
	until := forever
	var out []shown
	candidates := s.open
	if t.Before(s.builtAt) {
		// Asked about the past (time travel, or a clock that stepped back): events that
		// have ended since are not in open.
		candidates = s.byFirstSeen()
	}
	for _, e := range candidates {
		if e.firstSeen.After(t) {
			// open is ordered by firstSeen: no later event is visible yet, and this one
			// becomes visible first.
			until = minTime(until, e.firstSeen)
			break
		}
		v := e.viewAt(t)
		until = minTime(until, v.until)
		if q.matches(e.Labels, v) {
			out = append(out, shown{e, v})
		}
	}
	slices.SortFunc(out, func(a, b shown) int {
		if c := cmp.Compare(b.e.Priority, a.e.Priority); c != 0 {
			return c
		}
		if c := a.v.start.Compare(b.v.start); c != 0 {
			return c
		}
		return cmp.Compare(a.e.ID, b.e.ID)
	})
	return out, until
}

// adminQuery is a checked ListEvents request.
type adminQuery struct {
	pageSize int
	after    *pageKey // resume after this event; nil for the first page
	statuses statusSet
	labels   []string
	state    string    // "" for any
	at       time.Time // zero for now
	filter   string    // identifies the filters, so a token is used only with its own
}

func (q adminQuery) isDefault() bool {
	return q.pageSize == defaultPageSize && q.after == nil && q.statuses == 0 && len(q.labels) == 0 && q.state == "" && q.at.IsZero()
}

// pageKey is where a page ended, in list order. A token carries it, so the next page starts
// right after that event wherever it now stands: inserts and deletes never make a page skip
// or repeat an event that stayed.
type pageKey struct {
	Priority int32  `json:"p"`
	Start    int64  `json:"s"`
	ID       string `json:"i"`
	Filter   string `json:"f"`
}

func (q adminQuery) matches(e *entry, v view) bool {
	if q.statuses != 0 && !q.statuses.has(v.status) {
		return false
	}
	if q.state != "" && e.State != q.state {
		return false
	}
	return hasAnyLabel(e.Labels, q.labels)
}

// adminPage returns one page of ListEvents as of t, the key to resume after it (nil on the
// last page), and until when the page holds.
func (s *snapshot) adminPage(t time.Time, q adminQuery) ([]shown, *pageKey, time.Time) {
	i := 0
	if q.after != nil {
		i, _ = slices.BinarySearchFunc(s.ordered, q.after, func(e *entry, k *pageKey) int {
			return listOrder(e, &entry{Event: Event{Priority: k.Priority, Start: fromNanos(k.Start), ID: k.ID}})
		})
		if i < len(s.ordered) && s.ordered[i].ID == q.after.ID {
			i++
		}
	}
	until := forever
	var out []shown
	for ; i < len(s.ordered); i++ {
		e := s.ordered[i]
		v := e.viewAt(t)
		if !q.matches(e, v) {
			continue
		}
		if len(out) == q.pageSize {
			last := out[len(out)-1].e
			return out, &pageKey{Priority: last.Priority, Start: last.Start.UnixNano(), ID: last.ID, Filter: q.filter}, until
		}
		until = minTime(until, v.until)
		out = append(out, shown{e, v})
	}
	return out, nil, until
}
