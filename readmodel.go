package main

import (
	"cmp"
	"context"
	"errors"
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

	mu    sync.Mutex // serialises replacing snap
	snap  atomic.Pointer[snapshot]
	stats *readModelMetrics
}

func newReadModel(ctx context.Context, st *store, now func() time.Time, log *logger) (*readModel, error) {
	rm := &readModel{st: st, now: now, log: log, zones: new(zones)}
	rm.stats = newReadModelMetrics(rm)
	rm.mu.Lock()
	defer rm.mu.Unlock()
	if err := rm.load(ctx); err != nil {
		return nil, err
	}
	return rm, nil
}

// load replaces the snapshot with the database's events. rm.mu must be held.
func (rm *readModel) load(ctx context.Context) (err error) {
	ctx, endSpan := childSpan(ctx, "snapshot load")
	defer endSpan(&err)
	start := time.Now()
	events, gen, err := rm.st.Events(ctx)
	if err != nil {
		return err
	}
	now := rm.now()
	rm.snap.Store(newSnapshot(gen, events, now, rm.zones))
	rm.stats.rebuilt("load", time.Since(start), now)
	return nil
}

// snapshot returns the current snapshot. It never changes; a later call may return a newer one.
func (rm *readModel) snapshot() *snapshot { return rm.snap.Load() }

// applied records a write this process committed: the event as written (nil for a delete),
// or the id deleted, and the generation the write produced. When the write is the next one
// after the snapshot's, it is applied in place; otherwise the snapshot is reloaded. Either
// way, the writer's next read sees its write. In a traced call this is the span "snapshot
// apply", waiting for the lock included.
func (rm *readModel) applied(ctx context.Context, gen int64, e *Event, deletedID string) {
	ctx, endSpan := childSpan(ctx, "snapshot apply")
	defer endSpan(nil)
	rm.mu.Lock()
	defer rm.mu.Unlock()
	cur := rm.snap.Load()
	switch {
	case gen <= cur.gen: // a catch-up already picked it up
	case gen == cur.gen+1:
		start := time.Now()
		rm.snap.Store(cur.with(gen, e, deletedID))
		rm.stats.rebuilt("write", time.Since(start), rm.now())
	default:
		// Writes by other processes came in between: catch up on them, this one included.
		if err := rm.catchUp(ctx, cur); err != nil {
			// The poller retries within a second; until then reads are a write behind.
			rm.log.Error("catch up on events after a write", "err", err)
		}
	}
}

// catchUp brings the snapshot from cur to the database's generation by applying only the
// events written since, or, when the revision log cannot say what those were, by reloading
// every event. rm.mu must be held.
//
// Only a catch-up after a write of this process is traced (as a child of its "snapshot
// apply"); the watcher's, every -reload-interval, makes no spans: a trace a second, for no
// request, would drown the ones that matter.
func (rm *readModel) catchUp(ctx context.Context, cur *snapshot) (err error) {
	ctx, endSpan := childSpan(ctx, "snapshot catch-up")
	defer endSpan(&err)
	start := time.Now()
	changes, gen, err := rm.st.ChangesSince(ctx, cur.gen)
	if errors.Is(err, errGap) {
		return rm.load(ctx)
	}
	if err != nil {
		return err
	}
	next := cur
	for _, c := range changes {
		next = next.with(c.lastGen, c.event, c.id)
	}
	if next.gen != gen {
		next = &snapshot{zones: next.zones, gen: gen, builtAt: next.builtAt, ordered: next.ordered, byID: next.byID, open: next.open, targeted: next.targeted, frames: new(frameSlot)}
	}
	rm.snap.Store(next)
	now := rm.now()
	rm.stats.rebuilt("catch_up", time.Since(start), now)
	rm.stats.propagated(changes, now)
	return nil
}

// refresh reloads the snapshot if the database holds event writes it has not seen, and
// otherwise prunes ended events from it once a minute.
func (rm *readModel) refresh(ctx context.Context) error {
	gen, err := rm.st.Generation(ctx)
	if err != nil {
		return err
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	cur := rm.snap.Load()
	if gen != cur.gen {
		return rm.catchUp(ctx, cur)
	}
	now := rm.now()
	if now.Sub(cur.builtAt) >= pruneEvery {
		rm.snap.Store(cur.pruned(now))
	}
	rm.stats.checked(now)
	return nil
}

// current records that the database was just found to hold no event write the snapshot
// lacks, for liveops_snapshot_staleness_seconds.
func (rm *readModel) current() { rm.stats.checked(rm.now()) }

// pruneEvery is how often refresh drops ended events from the open list.
const pruneEvery = time.Minute

// entry is an event in a snapshot, with what the read path needs to know about its
// schedule worked out once.
type entry struct {
	Event
	sched     schedule
	firstSeen time.Time // when players may first see it: its preview time, else its start
	end       time.Time // when its last occurrence ends; forever for an endless recurrence
	// targeted is set when players may see the event differently: it has an audience, a
	// rollout, localized text or player-local times.
	targeted bool
	// zoned holds a PLAYER_LOCAL event's schedule in each zone players asked from, by zone
	// name: at most one per zone in the tz database, and per whole quarter-hour offset.
	zoned sync.Map
	// fragments holds its JSON as players are shown it (see fragment), by fragmentKey.
	fragments     sync.Map
	fragmentCount atomic.Int32
}

func newEntry(e Event, z *zones) *entry {
	en := &entry{Event: e, sched: newSchedule(&e, z)}
	en.firstSeen = en.Start.Add(-en.sched.lead)
	en.end = en.sched.seriesEnd()
	if e.TimeMode == timeModePlayerLocal {
		// Its times come first at UTC+14 and last at UTC-12: open must hold it that long.
		en.firstSeen = en.firstSeen.Add(-earliestOffset)
		if en.end != forever {
			en.end = en.end.Add(latestOffset)
		}
	}
	en.targeted = e.Audience != nil || e.RolloutPercent > 0 && e.RolloutPercent < 100 ||
		len(e.Localizations) > 0 || e.TimeMode == timeModePlayerLocal
	return en
}

// viewAt is how e stands at t for a player in UTC, or, for an event on UTC time, anywhere.
func (e *entry) viewAt(t time.Time) view { return e.Event.viewAt(&e.sched, t) }

// viewFor is how e stands at t for a player in loc (nil: UTC).
func (e *entry) viewFor(t time.Time, loc *time.Location) view {
	if e.TimeMode != timeModePlayerLocal || loc == nil || loc == time.UTC {
		return e.viewAt(t)
	}
	s, ok := e.zoned.Load(loc.String())
	if !ok {
		local := e.inZone(loc)
		sched := scheduleIn(&local, loc)
		s, _ = e.zoned.LoadOrStore(loc.String(), &sched)
	}
	return e.Event.viewAt(s.(*schedule), t)
}

// viewOf works out how e, which need not be in any snapshot (an event just written, say),
// stands at t.
func (rm *readModel) viewOf(e Event, t time.Time) view {
	sched := newSchedule(&e, rm.zones)
	return e.viewAt(&sched, t)
}

// snapshot is every event at one events generation. It is never modified: a write makes a
// new snapshot that shares all but a few chunks of each list with the one before (see seq).
type snapshot struct {
	zones *zones // shared by every snapshot of one read model
	gen   int64
	// targeted is set when open may hold a targeted event: players' answers may then
	// differ by their context. (A delete does not clear it; a prune does.)
	targeted bool
	// frames holds the latest frame (see frameAt), made on demand.
	frames  *frameSlot
	builtAt time.Time // when open was last pruned of ended events
	ordered seq       // every event in list order: priority (highest first), start time, id
	byID    seq       // every event, ordered by id
	// open holds the published events that had not ended at builtAt, ordered by when
	// players may first see them: the only ones players can see now or later, so working out
	// what they see costs nothing for events that ended before, however many there are.
	open seq
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
	ordered := make([]*entry, len(events))
	for i := range events {
		ordered[i] = newEntry(events[i], z)
	}
	slices.SortFunc(ordered, listOrder)
	byID := slices.SortedFunc(slices.Values(ordered), byIDOnly)
	var open []*entry
	for _, e := range ordered {
		if isOpen(e, now) {
			open = append(open, e)
		}
	}
	slices.SortFunc(open, openOrder)
	return &snapshot{zones: z, gen: gen, builtAt: now, ordered: newSeq(ordered), byID: newSeq(byID), open: newSeq(open), frames: new(frameSlot),
		targeted: slices.ContainsFunc(open, func(e *entry) bool { return e.targeted })}
}

// with returns a copy of s at generation gen with e written (inserted or replaced) or the
// event deletedID removed. It costs O(chunks + chunk size), not O(events).
func (s *snapshot) with(gen int64, e *Event, deletedID string) *snapshot {
	id := deletedID
	var added *entry
	if e != nil {
		id, added = e.ID, newEntry(*e, s.zones)
	}
	old, _ := s.get(id)
	// open keeps every published event not ended at builtAt, which is what lets a question
	// about any instant since builtAt be answered from open alone.
	var addedOpen *entry
	if added != nil && isOpen(added, s.builtAt) {
		addedOpen = added
	}
	return &snapshot{zones: s.zones, gen: gen, builtAt: s.builtAt, targeted: s.targeted || addedOpen != nil && addedOpen.targeted, frames: new(frameSlot),
		ordered: s.ordered.with(old, added, listOrder),
		byID:    s.byID.with(old, added, byIDOnly),
		open:    s.open.with(old, addedOpen, openOrder),
	}
}

// pruned returns s without the events in open that have ended by now, so that they cost
// nothing any more; O(open), so the read model calls it now and then, not per write.
func (s *snapshot) pruned(now time.Time) *snapshot {
	next := *s
	next.builtAt = now
	next.open = s.open.filter(func(e *entry) bool { return e.end.After(now) })
	next.frames = new(frameSlot)
	next.targeted = false
	for e := range next.open.all() {
		if e.targeted {
			next.targeted = true
			break
		}
	}
	return &next
}

// get returns the event with the given id.
func (s *snapshot) get(id string) (*entry, bool) {
	p, ok := s.byID.search(func(e *entry) int { return cmp.Compare(e.ID, id) })
	if !ok {
		return nil, false
	}
	return s.byID.at(p), true
}

// byFirstSeen returns every published event in open's order; for questions about the past.
func (s *snapshot) byFirstSeen() []*entry {
	out := make([]*entry, 0, s.ordered.len())
	for e := range s.ordered.all() {
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

// shown is an event with its view, as a list shows it, and the locale of its text ("" for
// the event's own title and description).
type shown struct {
	e      *entry
	v      view
	locale string
	pos    int // its place in the frame it was picked from (see targetedEvents)
}

// hiddenEvent is an event a player is not shown, and why: "audience", "excluded",
// "rollout", "draft", "not_yet_previewed", "ended", or "not_requested" (the statuses or
// labels asked for leave it out).
type hiddenEvent struct {
	e      *entry
	reason string
}

// decide works out whether e is shown to a player with context c (nil: one who declares
// nothing) asking q at t: its view and text locale when it is, or why not. The view is
// worked out only for an event the player is in the audience and rollout of: no other
// event's changes can change this player's answer.
func (e *entry) decide(t time.Time, q playerQuery, c *clientContext) (shown, string) {
	if e.State == stateDraft {
		return shown{}, "draft"
	}
	sh, why := e.forPlayer(t, c)
	if why != "" {
		return sh, why
	}
	switch {
	case q.matches(e.Labels, sh.v):
		return sh, ""
	case sh.v.status == statusEnded:
		return sh, "ended"
	case sh.v.status == statusUpcoming && !sh.v.listed:
		return sh, "not_yet_previewed"
	}
	return sh, "not_requested"
}

// undeclared is the context of a player who declares nothing.
var undeclared clientContext

// forPlayer works out how e stands at t for a player with context c (nil: one who declares
// nothing), and the locale of its text; or why the player is not shown it at all:
// "audience", "excluded" or "rollout".
func (e *entry) forPlayer(t time.Time, c *clientContext) (shown, string) {
	if c == nil {
		c = &undeclared
	}
	if why := e.excludes(c); why != "" {
		return shown{}, why
	}
	return shown{e: e, v: e.viewFor(t, c.loc), locale: e.localeFor(c)}, ""
}

// excludes says why a player with context c is not shown e whatever the time, "audience",
// "excluded" or "rollout"; "" when it may be.
func (e *entry) excludes(c *clientContext) string {
	if why := e.Audience.verdict(c); why != "" {
		return why
	}
	if !inRollout(e.ID, c.playerID, e.RolloutPercent) {
		return "rollout"
	}
	return ""
}

// localeFor is the locale of e's text for a player with context c: "" for its own.
func (e *entry) localeFor(c *clientContext) string {
	if len(e.Localizations) == 0 {
		return ""
	}
	return chooseLocale(e.Localizations, c.langs, c.defaultLocale)
}

// playerEvents returns what players asking q see at t, in list order (priority, then the
// shown occurrence's start, then id), and until when that answer holds. c is the player's
// context; nil is one who declares nothing.
func (s *snapshot) playerEvents(t time.Time, q playerQuery, c *clientContext) ([]shown, time.Time) {
	until := forever
	var out []shown
	candidates := s.open.all()
	if t.Before(s.builtAt) {
		// Asked about the past (time travel, or a clock that stepped back): events that
		// have ended since are not in open.
		candidates = slices.Values(s.byFirstSeen())
	}
	for e := range candidates {
		if e.firstSeen.After(t) {
			// open is ordered by firstSeen: no later event is visible yet, and this one
			// becomes visible first.
			until = minTime(until, e.firstSeen)
			break
		}
		sh, why := e.decide(t, q, c)
		if sh.e == nil {
			continue // not for this player, whatever happens to it
		}
		until = minTime(until, sh.v.until)
		if why == "" {
			out = append(out, sh)
		}
	}
	sortShown(out)
	return out, until
}

// frame is what every targeted player's answer at an instant is made from: the events
// that may be shown then, in list order, with their views for a player in UTC, worked out
// once for all players. It holds from from until until: no view in it changes before.
type frame struct {
	seq         uint64 // tells frames apart, in answer keys
	gen         int64
	from, until time.Time
	items       []shown
}

type frameSlot struct{ p atomic.Pointer[frame] }

var frameSeq atomic.Uint64

// frameAt returns the frame holding at t, making it when the last one made does not.
func (s *snapshot) frameAt(t time.Time) *frame {
	if f := s.frames.p.Load(); f != nil && f.gen == s.gen && !t.Before(f.from) && t.Before(f.until) {
		return f
	}
	f := &frame{seq: frameSeq.Add(1), gen: s.gen, from: t, until: forever}
	for e := range s.open.all() {
		if e.firstSeen.After(t) {
			f.until = minTime(f.until, e.firstSeen) // open is in firstSeen order
			break
		}
		v := e.viewAt(t)
		f.until = minTime(f.until, v.until)
		// A player-local event's view is worked out per player; the others can be listed
		// to no one unless listed in UTC.
		if v.listed || e.TimeMode == timeModePlayerLocal {
			f.items = append(f.items, shown{e: e, v: v})
		}
	}
	sortShown(f.items)
	s.frames.p.Store(f)
	return f
}

// shownPool holds the lists targeted answers are worked out in.
var shownPool = sync.Pool{New: func() any { s := make([]shown, 0, 64); return &s }}

// targetedEvents is playerEvents for a player with context c at t (not in the past), made
// from the frame at t: only the player's audience, rollout, locale and, for player-local
// events, times are worked out per request. It appends to out (see shownPool) and returns
// the frame too, which names the answer (see selectionKey).
func (s *snapshot) targetedEvents(t time.Time, q playerQuery, c *clientContext, out []shown) ([]shown, time.Time, *frame) {
	f := s.frameAt(t)
	until, local := f.until, false
	for i, it := range f.items {
		e := it.e
		if e.targeted && e.excludes(c) != "" {
			continue
		}
		v := it.v
		if e.TimeMode == timeModePlayerLocal {
			v = e.viewFor(t, c.loc)
			until, local = minTime(until, v.until), true
		}
		if !q.matches(e.Labels, v) {
			continue
		}
		out = append(out, shown{e: e, v: v, locale: e.localeFor(c), pos: i})
	}
	if local {
		sortShown(out)
	}
	return out, until, f
}

// playerView is what a player with context c asking q sees at t, as playerEvents says, and
// every other event with why it is not shown: what PreviewPlayerView answers.
func (s *snapshot) playerView(t time.Time, q playerQuery, c *clientContext) ([]shown, []hiddenEvent) {
	var out []shown
	var hidden []hiddenEvent
	for e := range s.ordered.all() {
		if e.firstSeen.After(t) && e.State != stateDraft {
			hidden = append(hidden, hiddenEvent{e, "not_yet_previewed"})
			continue
		}
		sh, why := e.decide(t, q, c)
		if why != "" {
			hidden = append(hidden, hiddenEvent{e, why})
			continue
		}
		out = append(out, sh)
	}
	sortShown(out)
	return out, hidden
}

// sortShown puts a list in its order: priority (highest first), then the shown
// occurrence's start, then id.
func sortShown(out []shown) {
	slices.SortFunc(out, func(a, b shown) int {
		if c := cmp.Compare(b.e.Priority, a.e.Priority); c != 0 {
			return c
		}
		if c := a.v.start.Compare(b.v.start); c != 0 {
			return c
		}
		return cmp.Compare(a.e.ID, b.e.ID)
	})
}

// adminQuery is a checked ListEvents request.
type adminQuery struct {
	pageSize int
	after    *pageKey // resume after this event; nil for the first page
	statuses statusSet
	labels   []string
	state    string    // "" for any
	at       time.Time // zero for now
	// platforms, countries and languages: each set one must be named by the event's
	// audience (not its exclude); empty means no filter.
	platforms, countries, languages []string
	filter                          string // identifies the filters, so a token is used only with its own
}

func (q adminQuery) isDefault() bool {
	return q.pageSize == defaultPageSize && q.after == nil && q.statuses == 0 && len(q.labels) == 0 && q.state == "" && q.at.IsZero() &&
		len(q.platforms) == 0 && len(q.countries) == 0 && len(q.languages) == 0
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
	return hasAnyLabel(e.Labels, q.labels) && q.matchesAudience(e.Audience)
}

// matchesAudience reports whether audience a names one of each audience filter's values.
// An event for everyone names none, so a filter never matches it.
func (q adminQuery) matchesAudience(a *Audience) bool {
	if len(q.platforms) == 0 && len(q.countries) == 0 && len(q.languages) == 0 {
		return true
	}
	if a == nil {
		return false
	}
	for _, f := range [][2][]string{{q.platforms, a.Platforms}, {q.countries, a.Countries}, {q.languages, a.Languages}} {
		if len(f[0]) > 0 && !slices.ContainsFunc(f[0], func(v string) bool { return slices.Contains(f[1], v) }) {
			return false
		}
	}
	return true
}

// adminPage returns one page of ListEvents as of t, the key to resume after it (nil on the
// last page), and until when the page holds.
func (s *snapshot) adminPage(t time.Time, q adminQuery) ([]shown, *pageKey, time.Time) {
	var start seqPos
	if k := q.after; k != nil {
		after := &entry{Event: Event{Priority: k.Priority, Start: fromNanos(k.Start), ID: k.ID}}
		start, _ = s.ordered.search(func(e *entry) int { return listOrder(e, after) })
	}
	until := forever
	var out []shown
	for e := range s.ordered.from(start) {
		if q.after != nil && e.ID == q.after.ID {
			continue // the last event of the page before
		}
		v := e.viewAt(t)
		if !q.matches(e, v) {
			continue
		}
		if len(out) == q.pageSize {
			last := out[len(out)-1].e
			return out, &pageKey{Priority: last.Priority, Start: last.Start.UnixNano(), ID: last.ID, Filter: q.filter}, until
		}
		until = minTime(until, v.until)
		out = append(out, shown{e: e, v: v})
	}
	return out, nil, until
}
