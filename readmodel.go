package main

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"liveops/eventspb"
)

// readModel answers every read from memory, so that players' polling never touches SQLite
// and never waits on a writer.
//
// It holds an immutable snapshot of all events, replaced atomically after each committed
// write: incrementally for this process's writes, by a full reload when the database holds
// writes the snapshot has not seen (another process's, or a race between two of ours). The
// events generation, bumped by every write in its transaction, tells which case applies.
//
// On top of the snapshot it caches the encoded GET /events answer, valid until the next
// write or the next instant an event starts or ends.
type readModel struct {
	st  *store
	now func() time.Time
	log *logger

	mu   sync.Mutex // serialises replacing snap
	snap atomic.Pointer[snapshot]

	activeMu sync.Mutex // serialises rebuilding active
	active   atomic.Pointer[activeSet]

	adminMu    sync.Mutex // serialises rebuilding adminFirst
	adminFirst atomic.Pointer[adminPage]
}

func newReadModel(ctx context.Context, st *store, now func() time.Time, log *logger) (*readModel, error) {
	rm := &readModel{st: st, now: now, log: log}
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
	rm.snap.Store(newSnapshot(gen, events, rm.now()))
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

func newEntry(e Event) *entry {
	en := &entry{Event: e, sched: newSchedule(&e)}
	en.firstSeen = en.Start.Add(-en.sched.lead)
	en.end = en.sched.seriesEnd()
	return en
}

func (e *entry) viewAt(t time.Time) view { return e.Event.viewAt(&e.sched, t) }

// snapshot is every event at one events generation. It is never modified.
type snapshot struct {
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

func newSnapshot(gen int64, events []Event, now time.Time) *snapshot {
	s := &snapshot{gen: gen, builtAt: now, ordered: make([]*entry, len(events))}
	for i := range events {
		s.ordered[i] = newEntry(events[i])
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
		id, added = e.ID, newEntry(*e)
	}
	old, _ := s.get(id)
	next := &snapshot{gen: gen, builtAt: now,
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

// playerListBody encodes a GET /events answer: {"server_time":...,"events":[...]}. It
// returns the body and the events array alone, from which the ETag is made.
func playerListBody(t time.Time, events []shown) (body, eventsJSON []byte) {
	var buf bytes.Buffer
	buf.WriteString(`{"server_time":"`)
	buf.Write(t.UTC().AppendFormat(nil, time.RFC3339))
	buf.WriteString(`","events":`)
	start := buf.Len()
	buf.WriteByte('[')
	for i, s := range events {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(mustJSON(toJSON(s.e.Event, s.v)))
	}
	buf.WriteByte(']')
	end := buf.Len()
	buf.WriteString("}\n")
	b := buf.Bytes()
	return b, b[start:end]
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // plain structs of strings, numbers and times
	}
	return b
}

// activeSet is the default GET /events answer (active events, no filter) for one second of
// server time, at most, and only while nothing in it changes.
type activeSet struct {
	gen         int64     // the snapshot it was made from
	second      int64     // the server_time it carries, in Unix seconds
	from, until time.Time // valid for from <= now < until
	resp        *cachedResponse
}

func (a *activeSet) validAt(gen int64, now time.Time) bool {
	return a != nil && a.gen == gen && a.second == now.Unix() && !now.Before(a.from) && now.Before(a.until)
}

// activeAt returns the default GET /events answer at now, from cache when it is still valid.
func (rm *readModel) activeAt(now time.Time) *activeSet {
	snap := rm.snap.Load()
	if a := rm.active.Load(); a.validAt(snap.gen, now) {
		return a
	}
	rm.activeMu.Lock()
	defer rm.activeMu.Unlock()
	snap = rm.snap.Load()
	if a := rm.active.Load(); a.validAt(snap.gen, now) {
		return a // another request rebuilt it while this one waited
	}
	events, until := snap.playerEvents(now, playerQuery{})
	body, tagged := playerListBody(now, events)
	a := &activeSet{gen: snap.gen, second: now.Unix(), from: now, until: until, resp: newCachedResponse(body, tagged)}
	rm.active.Store(a)
	return a
}

// forever stands for "no boundary ahead".
var forever = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// cachedResponse is a JSON body ready to send, with the headers that describe it, made
// once; its gzip form is made on the first request that accepts gzip.
type cachedResponse struct {
	body   []byte
	etag   []string // header values, made once so a request allocates nothing
	length []string
	tag    string // the ETag without quotes

	gzOnce sync.Once
	gz     *gzipped // nil when compression would not pay
}

type gzipped struct {
	body         []byte
	etag, length []string
}

// minGzipSize is the body size below which gzip is not worth its header and CPU.
const minGzipSize = 1024

// newCachedResponse prepares body for sending. Its ETag is made from tagged, the part of
// the body that says something about the events: everything but server_time, which
// differs from second to second. The ETag is weak for that reason: two bodies with one
// ETag are equivalent, not byte for byte the same.
func newCachedResponse(body, tagged []byte) *cachedResponse {
	sum := sha256.Sum256(tagged)
	tag := base64.RawURLEncoding.EncodeToString(sum[:18])
	return &cachedResponse{
		body:   body,
		etag:   []string{`W/"` + tag + `"`},
		length: []string{strconv.Itoa(len(body))},
		tag:    tag,
	}
}

// gzipWriters are reused: a gzip.Writer holds hundreds of kilobytes of state.
var gzipWriters = sync.Pool{New: func() any { return gzip.NewWriter(io.Discard) }}

// gzipped returns the gzip form of the body, or nil when the body is too small to gain.
func (c *cachedResponse) gzipped() *gzipped {
	c.gzOnce.Do(func() {
		if len(c.body) < minGzipSize {
			return
		}
		var buf bytes.Buffer
		zw := gzipWriters.Get().(*gzip.Writer)
		zw.Reset(&buf)
		zw.Write(c.body)
		zw.Close()
		gzipWriters.Put(zw)
		if buf.Len() >= len(c.body) {
			return
		}
		c.gz = &gzipped{
			body: buf.Bytes(),
			// A strong ETag names one representation, so the gzip form gets its own.
			etag:   []string{`W/"` + c.tag + `-gz"`},
			length: []string{strconv.Itoa(buf.Len())},
		}
	})
	return c.gz
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

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

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

func (k *pageKey) token() string { return encodeToken(k) }

func parsePageToken(s string) (*pageKey, error) {
	var k pageKey
	if err := decodeToken(s, &k); err != nil || !validID(k.ID) {
		return nil, &fieldError{"page_token", "is not a token this server issued"}
	}
	return &k, nil
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

// adminPage is the default ListEvents answer (first page, no filters), encoded, for as long
// as no status or next start in it changes.
type adminPage struct {
	gen         int64
	from, until time.Time
	raw         []byte // a serialized ListEventsResponse
}

// firstPage returns the default ListEvents answer at now. Its events ride pre-encoded in the
// message's raw (unknown) field bytes, which the server's codec sends as they are: a call
// costs neither encoding nor a copy. In this process GetEvents of the message is empty: it
// is for the wire only.
func (rm *readModel) firstPage(now time.Time) *eventspb.ListEventsResponse {
	snap := rm.snap.Load()
	valid := func(p *adminPage) bool {
		return p != nil && p.gen == snap.gen && !now.Before(p.from) && now.Before(p.until)
	}
	p := rm.adminFirst.Load()
	if !valid(p) {
		rm.adminMu.Lock()
		snap = rm.snap.Load()
		if p = rm.adminFirst.Load(); !valid(p) {
			events, next, until := snap.adminPage(now, adminQuery{pageSize: defaultPageSize, filter: defaultFilter})
			raw, err := proto.Marshal(listResponse(events, next))
			if err != nil {
				panic(fmt.Sprintf("encode ListEventsResponse: %v", err)) // generated messages always encode
			}
			p = &adminPage{gen: snap.gen, from: now, until: until, raw: raw}
			rm.adminFirst.Store(p)
		}
		rm.adminMu.Unlock()
	}
	resp := &eventspb.ListEventsResponse{}
	resp.ProtoReflect().SetUnknown(protoreflect.RawFields(p.raw))
	return resp
}

// defaultFilter identifies "no filters" in page tokens.
const defaultFilter = "-"

func listResponse(events []shown, next *pageKey) *eventspb.ListEventsResponse {
	resp := &eventspb.ListEventsResponse{Events: make([]*eventspb.Event, len(events))}
	for i, s := range events {
		resp.Events[i] = toProto(s.e.Event, s.v)
	}
	if next != nil {
		resp.NextPageToken = next.token()
	}
	return resp
}
