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

	"google.golang.org/protobuf/encoding/protowire"
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

// entry is an event in a snapshot, with its encodings, made on first use and kept for the
// life of the entry (an update makes a new entry).
type entry struct {
	Event
	player atomic.Pointer[cachedResponse] // GET /events/{id}
	json   atomic.Pointer[[]byte]         // the event's JSON object
	pb     atomic.Pointer[[]byte]         // the event as a serialized eventspb.Event
}

func (e *entry) jsonBytes() []byte {
	if b := e.json.Load(); b != nil {
		return *b
	}
	b, err := json.Marshal(toJSON(e.Event))
	if err != nil {
		panic(fmt.Sprintf("encode event %s: %v", e.ID, err)) // a plain struct of strings and times
	}
	e.json.Store(&b)
	return b
}

func (e *entry) pbBytes() []byte {
	if b := e.pb.Load(); b != nil {
		return *b
	}
	b, err := proto.Marshal(toProto(e.Event))
	if err != nil {
		panic(fmt.Sprintf("encode event %s: %v", e.ID, err))
	}
	e.pb.Store(&b)
	return b
}

// playerResponse returns the cached GET /events/{id} response for the event.
func (e *entry) playerResponse() *cachedResponse {
	if c := e.player.Load(); c != nil {
		return c
	}
	c := newCachedResponse(append(e.jsonBytes(), '\n'))
	e.player.Store(c)
	return c
}

// snapshot is every event at one events generation. It is never modified.
type snapshot struct {
	gen     int64
	byStart []*entry // every event, ordered by start time, then id
	byID    []*entry // every event, ordered by id
	// open holds the events that had not ended when the snapshot was made, ordered by start
	// time, then id: the only ones that can be active now or later, so working out what is
	// active costs nothing for the ended events, however many there are.
	open []*entry

	listOnce sync.Once
	list     []byte // every event as a serialized ListEventsResponse, made on first use
}

func byStartThenID(a, b *entry) int {
	if c := a.Start.Compare(b.Start); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

func byIDOnly(a, b *entry) int { return cmp.Compare(a.ID, b.ID) }

func newSnapshot(gen int64, events []Event, now time.Time) *snapshot {
	s := &snapshot{gen: gen, byStart: make([]*entry, len(events))}
	for i := range events {
		s.byStart[i] = &entry{Event: events[i]}
	}
	// The store returns them in this order; sorting sorted input is one cheap pass, and the
	// snapshot's correctness then does not rest on the store's promise.
	slices.SortFunc(s.byStart, byStartThenID)
	s.byID = slices.Clone(s.byStart)
	slices.SortFunc(s.byID, byIDOnly)
	for _, e := range s.byStart {
		if e.End.After(now) {
			s.open = append(s.open, e)
		}
	}
	return s
}

// with returns a copy of s at generation gen with e written (inserted or replaced) or the
// event deletedID removed. Events in open that have ended by now are dropped on the way.
func (s *snapshot) with(gen int64, e *Event, deletedID string, now time.Time) *snapshot {
	id := deletedID
	var added *entry
	if e != nil {
		id, added = e.ID, &entry{Event: *e}
	}
	old, _ := s.get(id)
	next := &snapshot{gen: gen,
		byStart: edit(s.byStart, old, added, byStartThenID),
		byID:    edit(s.byID, old, added, byIDOnly),
	}
	next.open = make([]*entry, 0, len(s.open)+1)
	for _, o := range s.open {
		if o != old && o.End.After(now) {
			next.open = append(next.open, o)
		}
	}
	if added != nil && added.End.After(now) {
		i, _ := slices.BinarySearchFunc(next.open, added, byStartThenID)
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

// listResponse returns every event as a ListEventsResponse, for sending. The events are
// already encoded and ride in the message as its raw (unknown) field bytes, so sending it
// copies bytes instead of encoding thousands of events again for every call; the receiver
// decodes them as ordinary events. In this process, GetEvents of the returned message is
// empty: it is for the wire only.
func (s *snapshot) listResponse() *eventspb.ListEventsResponse {
	s.listOnce.Do(func() {
		var b []byte
		for _, e := range s.byStart {
			b = protowire.AppendTag(b, 1, protowire.BytesType) // ListEventsResponse.events
			b = protowire.AppendBytes(b, e.pbBytes())
		}
		s.list = b
	})
	resp := &eventspb.ListEventsResponse{}
	resp.ProtoReflect().SetUnknown(protoreflect.RawFields(s.list))
	return resp
}

// activeSet is the answer to GET /events between two instants at which it can change.
type activeSet struct {
	gen         int64     // the snapshot it was made from
	from, until time.Time // valid for from <= now < until
	resp        *cachedResponse
}

// activeAt returns the GET /events answer at now, from cache when it is still valid.
func (rm *readModel) activeAt(now time.Time) *activeSet {
	snap := rm.snap.Load()
	if a := rm.active.Load(); a != nil && a.gen == snap.gen && !now.Before(a.from) && now.Before(a.until) {
		return a
	}
	rm.activeMu.Lock()
	defer rm.activeMu.Unlock()
	snap = rm.snap.Load()
	if a := rm.active.Load(); a != nil && a.gen == snap.gen && !now.Before(a.from) && now.Before(a.until) {
		return a // another request rebuilt it while this one waited
	}
	a := snap.activeAt(now)
	rm.active.Store(a)
	return a
}

// forever stands for "no boundary ahead".
var forever = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// activeAt works out which events are active at now and until when that holds.
func (s *snapshot) activeAt(now time.Time) *activeSet {
	a := &activeSet{gen: s.gen, from: now, until: forever}
	var buf bytes.Buffer
	buf.WriteString(`{"events":[`)
	n := 0
	for _, e := range s.open {
		if e.Start.After(now) {
			// open is ordered by start: this is the next event to begin, and no later one
			// can begin sooner.
			a.until = minTime(a.until, e.Start)
			break
		}
		if !e.End.After(now) {
			continue
		}
		a.until = minTime(a.until, e.End)
		if n > 0 {
			buf.WriteByte(',')
		}
		buf.Write(e.jsonBytes())
		n++
	}
	buf.WriteString("]}\n")
	a.resp = newCachedResponse(buf.Bytes())
	return a
}

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

func newCachedResponse(body []byte) *cachedResponse {
	sum := sha256.Sum256(body)
	tag := base64.RawURLEncoding.EncodeToString(sum[:18])
	return &cachedResponse{
		body:   body,
		etag:   []string{`"` + tag + `"`},
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
			etag:   []string{`"` + c.tag + `-gz"`},
			length: []string{strconv.Itoa(buf.Len())},
		}
	})
	return c.gz
}
