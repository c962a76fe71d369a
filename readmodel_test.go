package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"liveops/eventspb"
)

// clock is a settable time source for tests, safe to read from a server's goroutines.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.set(t)
	return c
}

func (c *clock) now() time.Time  { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(t time.Time) { c.ns.Store(t.UnixNano()) }

// newTestReadModel returns a read model over a fresh SQLite store, reading time from c.
func newTestReadModel(t *testing.T, c *clock) (*store, *readModel) {
	t.Helper()
	return newTestReadModelAt(t, c, testDSN(t, "sqlite"))
}

// newTestReadModelAt returns a read model over a fresh store at dsn, reading time from c.
func newTestReadModelAt(t *testing.T, c *clock, dsn string) (*store, *readModel) {
	t.Helper()
	st := newTestStoreAt(t, dsn)
	rm, err := newReadModel(context.Background(), st, c.now, newLogger("text", io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	return st, rm
}

// write creates an event through the store and tells the read model, as CreateEvent does.
func write(t *testing.T, st *store, rm *readModel, title string, start, end time.Time) Event {
	t.Helper()
	e := Event{ID: newID(), Title: title, Start: start, End: end, CreatedAt: t0, UpdatedAt: t0}
	if err := e.validate(); err != nil {
		t.Fatal(err)
	}
	got, gen, err := st.CreateEvent(context.Background(), e, "")
	if err != nil {
		t.Fatal(err)
	}
	rm.applied(context.Background(), gen, &got, "")
	return got
}

// getEvents calls GET /events on the handler and returns the response.
func getEvents(t *testing.T, h http.Handler, header http.Header) *http.Response {
	t.Helper()
	req := httptest.NewRequest("GET", "/events", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func activeTitles(t *testing.T, resp *http.Response) string {
	t.Helper()
	var body struct {
		Events []struct{ Title string } `json:"events"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range body.Events {
		out = append(out, e.Title)
	}
	return strings.Join(out, ",")
}

func TestActiveWindowBoundaries(t *testing.T) {
	c := newClock(t0)
	st, rm := newTestReadModel(t, c)
	write(t, st, rm, "window", t0, t0.Add(time.Hour))
	h := handleEvents(rm, newAnswerCache(16, 1<<20), targeting{defaultLocale: "en"}, false, 0)

	tests := []struct {
		name   string
		at     time.Time
		active bool
	}{
		{"just before start", t0.Add(-time.Nanosecond), false},
		{"at start (inclusive)", t0, true},
		{"inside", t0.Add(30 * time.Minute), true},
		{"just before end", t0.Add(time.Hour - time.Nanosecond), true},
		{"at end (exclusive)", t0.Add(time.Hour), false},
		{"after end", t0.Add(2 * time.Hour), false},
		{"back inside (a clock that went backwards)", t0.Add(time.Minute), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.set(tt.at)
			got := activeTitles(t, getEvents(t, h, nil))
			if (got == "window") != tt.active {
				t.Fatalf("GET /events at %v = %q; want active=%v", tt.at, got, tt.active)
			}
		})
	}
}

func TestBoundaryInTimeChangesTheAnswerWithoutAWrite(t *testing.T) {
	c := newClock(t0)
	st, rm := newTestReadModel(t, c)
	write(t, st, rm, "now", t0.Add(-time.Hour), t0.Add(time.Hour))
	write(t, st, rm, "soon", t0.Add(10*time.Minute), t0.Add(2*time.Hour))
	h := handleEvents(rm, newAnswerCache(16, 1<<20), targeting{defaultLocale: "en"}, false, 0)

	resp := getEvents(t, h, nil)
	if got := activeTitles(t, resp); got != "now" {
		t.Fatalf("at t0: %q; want now", got)
	}
	first := resp.Header.Get("ETag")
	gen := rm.snapshot().gen

	c.set(t0.Add(10 * time.Minute)) // "soon" starts; nothing was written
	resp = getEvents(t, h, nil)
	if got := activeTitles(t, resp); got != "now,soon" {
		t.Fatalf("at t0+10m: %q; want now,soon", got)
	}
	if resp.Header.Get("ETag") == first || rm.snapshot().gen != gen {
		t.Fatalf("ETag %s (was %s), generation %d (was %d): the answer must change with time alone",
			resp.Header.Get("ETag"), first, rm.snapshot().gen, gen)
	}
	c.set(t0.Add(time.Hour)) // "now" ends
	if got := activeTitles(t, getEvents(t, h, nil)); got != "soon" {
		t.Fatalf("at t0+1h: %q; want soon", got)
	}
}

func TestActiveOrdering(t *testing.T) {
	c := newClock(t0)
	st, rm := newTestReadModel(t, c)
	late := write(t, st, rm, "late", t0.Add(-time.Hour), t0.Add(time.Hour))
	write(t, st, rm, "early", t0.Add(-2*time.Hour), t0.Add(time.Hour))
	tie := write(t, st, rm, "tie", t0.Add(-time.Hour), t0.Add(time.Hour))
	write(t, st, rm, "ended", t0.Add(-3*time.Hour), t0.Add(-2*time.Hour))
	write(t, st, rm, "future", t0.Add(time.Hour), t0.Add(2*time.Hour))
	want := "early,late,tie"
	if tie.ID < late.ID {
		want = "early,tie,late"
	}
	if got := activeTitles(t, getEvents(t, handleEvents(rm, newAnswerCache(16, 1<<20), targeting{defaultLocale: "en"}, false, 0), nil)); got != want {
		t.Fatalf("GET /events order = %s; want %s (start time, then id)", got, want)
	}
}

func TestWriteIsVisibleToTheNextRead(t *testing.T) {
	c := newClock(t0)
	st, rm := newTestReadModel(t, c)
	h := handleEvents(rm, newAnswerCache(16, 1<<20), targeting{defaultLocale: "en"}, false, 0)
	if got := activeTitles(t, getEvents(t, h, nil)); got != "" {
		t.Fatalf("empty database: %q", got)
	}
	e := write(t, st, rm, "new", t0.Add(-time.Minute), t0.Add(time.Hour))
	if got := activeTitles(t, getEvents(t, h, nil)); got != "new" {
		t.Fatalf("after a create: %q; want new", got)
	}

	upd, gen, err := st.UpdateEvent(context.Background(), e.ID, "", func(u *Event) error { u.Title = "renamed"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	rm.applied(context.Background(), gen, &upd, "")
	if got := activeTitles(t, getEvents(t, h, nil)); got != "renamed" {
		t.Fatalf("after an update: %q; want renamed", got)
	}

	gen, err = st.DeleteEvent(context.Background(), e.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	rm.applied(context.Background(), gen, nil, e.ID)
	if got := activeTitles(t, getEvents(t, h, nil)); got != "" {
		t.Fatalf("after a delete: %q; want nothing", got)
	}
	if _, ok := rm.snapshot().get(e.ID); ok {
		t.Fatal("a deleted event is still in the snapshot")
	}
}

func TestWritesFromElsewhereAreReloaded(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		c := newClock(t0)
		st, rm := newTestReadModelAt(t, c, dsn)
		write(t, st, rm, "ours", t0.Add(-time.Minute), t0.Add(time.Hour))

		// Another process writes: the read model hears nothing until refresh.
		e := Event{ID: newID(), Title: "theirs", Start: t0.Add(-time.Minute), End: t0.Add(time.Hour), Rewards: "{}", State: statePublished, CreatedAt: t0, UpdatedAt: t0}
		_, theirGen, err := st.CreateEvent(context.Background(), e, "")
		if err != nil {
			t.Fatal(err)
		}
		// Then we write again: our generation is not the next one, so the model reloads and
		// picks up both.
		write(t, st, rm, "ours again", t0.Add(-time.Minute), t0.Add(time.Hour))
		if rm.snapshot().gen != theirGen+1 || rm.snapshot().byID.len() != 3 {
			t.Fatalf("snapshot at generation %d with %d events; want %d with 3", rm.snapshot().gen, rm.snapshot().byID.len(), theirGen+1)
		}

		// A write elsewhere with no write of ours after it is found by refresh.
		e.ID = newID()
		if _, _, err := st.CreateEvent(context.Background(), e, ""); err != nil {
			t.Fatal(err)
		}
		if err := rm.refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := rm.snapshot().byID.len(); n != 4 {
			t.Fatalf("after refresh: %d events; want 4", n)
		}
	})
}

func TestCatchUpReadsOnlyWhatChanged(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		c := newClock(t0)
		st, rm := newTestReadModelAt(t, c, dsn)
		kept := write(t, st, rm, "kept", t0.Add(-time.Minute), t0.Add(time.Hour))
		changed := write(t, st, rm, "changed", t0.Add(-time.Minute), t0.Add(time.Hour))
		gone := write(t, st, rm, "gone", t0.Add(-time.Minute), t0.Add(time.Hour))
		before, _ := rm.snapshot().get(kept.ID)

		// Another process updates one event twice, deletes one and creates one.
		for _, title := range []string{"changed once", "changed twice"} {
			if _, _, err := st.UpdateEvent(ctx, changed.ID, "", func(e *Event) error { e.Title = title; return nil }); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.DeleteEvent(ctx, gone.ID, ""); err != nil {
			t.Fatal(err)
		}
		added := Event{ID: newID(), Title: "added", Start: t0, End: t0.Add(time.Hour), Rewards: "{}", State: statePublished}
		if _, _, err := st.CreateEvent(ctx, added, ""); err != nil {
			t.Fatal(err)
		}
		if err := rm.refresh(ctx); err != nil {
			t.Fatal(err)
		}
		snap := rm.snapshot()
		var titles []string
		for e := range snap.ordered.all() {
			titles = append(titles, e.Title)
		}
		slices.Sort(titles)
		if got := strings.Join(titles, ","); got != "added,changed twice,kept" {
			t.Fatalf("after catching up: %s; want added, changed twice and kept", got)
		}
		// The event nobody touched is the very entry it was: nothing was reloaded.
		if after, _ := snap.get(kept.ID); after != before {
			t.Fatal("an untouched event was rebuilt: the catch-up reloaded everything")
		}
		events, gen, _ := st.Events(ctx)
		if want := newSnapshot(gen, events, c.now(), nil); snap.gen != want.gen || snap.open.len() != want.open.len() {
			t.Fatalf("caught up to generation %d with %d open; want %d with %d", snap.gen, snap.open.len(), want.gen, want.open.len())
		}

		// A write the log cannot account for (a revision without its generation, as before
		// revisions carried one) makes the read model reload everything instead.
		if _, _, err := st.CreateEvent(ctx, Event{ID: newID(), Title: "unlogged", Start: t0, End: t0.Add(time.Hour), Rewards: "{}", State: statePublished}, ""); err != nil {
			t.Fatal(err)
		}
		st.db.ExecContext(ctx, `UPDATE event_revisions SET generation = NULL WHERE generation = (SELECT max(generation) FROM event_revisions)`)
		if err := rm.refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if n := rm.snapshot().byID.len(); n != 4 {
			t.Fatalf("after a gap: %d events; want 4 (reloaded)", n)
		}
		if after, _ := rm.snapshot().get(kept.ID); after == before {
			t.Fatal("after a gap the snapshot was not reloaded")
		}
	})
}

func TestSnapshotWithKeepsOrder(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		// Apply many random writes incrementally and compare with a snapshot built from scratch.
		c := newClock(t0)
		st, rm := newTestReadModelAt(t, c, dsn)
		var ids []string
		for i := range 60 {
			start := t0.Add(time.Duration(i%7-3) * time.Hour)
			ids = append(ids, write(t, st, rm, "e", start, start.Add(time.Duration(1+i%4)*time.Hour)).ID)
		}
		ctx := context.Background()
		for i, id := range ids {
			switch i % 3 {
			case 0:
				gen, err := st.DeleteEvent(ctx, id, "")
				if err != nil {
					t.Fatal(err)
				}
				rm.applied(ctx, gen, nil, id)
			case 1:
				upd, gen, err := st.UpdateEvent(ctx, id, "", func(u *Event) error {
					u.Start = u.Start.Add(-90 * time.Minute)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				rm.applied(ctx, gen, &upd, "")
			}
		}
		events, gen, _ := st.Events(ctx)
		want := newSnapshot(gen, events, c.now(), nil)
		got := rm.snapshot()
		same := func(x, y seq) bool {
			a, b := slices.Collect(x.all()), slices.Collect(y.all())
			if len(a) != len(b) {
				return false
			}
			for i := range a {
				if !reflect.DeepEqual(a[i].Event, b[i].Event) {
					return false
				}
			}
			return true
		}
		if got.gen != want.gen || !same(got.ordered, want.ordered) || !same(got.byID, want.byID) || !same(got.open, want.open) {
			t.Fatalf("incremental snapshot differs from a fresh one: gen %d/%d, %d/%d events, %d/%d open",
				got.gen, want.gen, got.ordered.len(), want.ordered.len(), got.open.len(), want.open.len())
		}
	})
}

func TestConditionalRequestsAndCaching(t *testing.T) {
	c := newClock(t0)
	st, rm := newTestReadModel(t, c)
	for range 10 { // enough to be worth compressing
		write(t, st, rm, "a festival with a reasonably long title", t0.Add(-time.Hour), t0.Add(20*time.Second))
	}
	h := handleEvents(rm, newAnswerCache(16, 1<<20), targeting{defaultLocale: "en"}, false, 0)

	resp := getEvents(t, h, nil)
	etag := resp.Header.Get("ETag")
	plain, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(etag, `W/"`) || resp.Header.Get("Vary") != "Authorization, Accept-Encoding" {
		t.Fatalf("status %d, ETag %q, Vary %q", resp.StatusCode, etag, resp.Header.Get("Vary"))
	}
	// The answer changes in 20 s, when the events end: max-age must not run past that.
	if cc := resp.Header.Get("Cache-Control"); cc != "max-age=20" {
		t.Fatalf("Cache-Control %q; want max-age=20", cc)
	}

	for _, inm := range []string{etag, strings.TrimPrefix(etag, "W/"), `"other", ` + etag, "*"} {
		resp = getEvents(t, h, http.Header{"If-None-Match": {inm}})
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 304 || len(body) != 0 || resp.Header.Get("ETag") != etag {
			t.Fatalf("If-None-Match %s: %d with %d bytes; want 304, no body", inm, resp.StatusCode, len(body))
		}
	}
	if resp = getEvents(t, h, http.Header{"If-None-Match": {`"stale"`}}); resp.StatusCode != 200 {
		t.Fatalf("If-None-Match with another etag: %d; want 200", resp.StatusCode)
	}

	resp = getEvents(t, h, http.Header{"Accept-Encoding": {"br, gzip;q=0.8"}})
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("ETag") == etag {
		t.Fatalf("gzip: Content-Encoding %q, ETag %q; want gzip with its own ETag", resp.Header.Get("Content-Encoding"), resp.Header.Get("ETag"))
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	unzipped, _ := io.ReadAll(zr)
	if !bytes.Equal(unzipped, plain) {
		t.Fatal("the gzip body is not the plain body compressed")
	}
	if resp = getEvents(t, h, http.Header{"Accept-Encoding": {"gzip;q=0"}}); resp.Header.Get("Content-Encoding") != "" {
		t.Fatal("gzip sent to a client that refused it with q=0")
	}

	c.set(t0.Add(time.Hour + 10*time.Second)) // nothing active, nothing ahead
	if cc := getEvents(t, h, nil).Header.Get("Cache-Control"); cc != "max-age=30" {
		t.Fatalf("Cache-Control with no boundary ahead: %q; want the 30 s cap", cc)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for v, want := range map[string]bool{
		"gzip": true, "GZIP": true, "deflate, gzip": true, "gzip;q=0.5": true, "*": true,
		"gzip;q=0": false, "gzip; q=0.000": false, "br": false, "": false, "x-gzip": false,
	} {
		if got := acceptsGzip([]string{v}); got != want {
			t.Errorf("acceptsGzip(%q) = %v; want %v", v, got, want)
		}
	}
}

func TestListEventsComesFromTheSnapshot(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	var ids []string
	for i := range 5 {
		resp, err := ts.events.CreateEvent(admin, createReq("e", t0.Add(time.Duration(5-i)*time.Hour), t0.Add(10*time.Hour), `{"i":1}`))
		if err != nil {
			t.Fatal(err)
		}
		ids = append([]string{resp.GetEvent().GetId()}, ids...)
	}
	list, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{})
	if err != nil || len(list.GetEvents()) != 5 {
		t.Fatalf("ListEvents = %d events, %v; want 5", len(list.GetEvents()), err)
	}
	for i, e := range list.GetEvents() {
		if e.GetId() != ids[i] || e.GetRewards() != `{"i":1}` || e.GetEtag() != "v1" {
			t.Fatalf("event %d = %v; want %s, ordered by start", i, e, ids[i])
		}
	}
	// Change a row behind the server's back, without the generation bump every write makes:
	// reads that came from SQLite would see it; reads from the snapshot do not.
	st, err := openStore(context.Background(), ts.db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.db.Exec(`UPDATE events SET title = 'changed behind its back'`); err != nil {
		t.Fatal(err)
	}
	list, _ = ts.events.ListEvents(admin, &eventspb.ListEventsRequest{PageSize: 10})
	got, _ := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: ids[0]})
	if list.GetEvents()[0].GetTitle() != "e" || got.GetEvent().GetTitle() != "e" {
		t.Fatalf("ListEvents/GetEvent read SQLite: %q, %q", list.GetEvents()[0].GetTitle(), got.GetEvent().GetTitle())
	}
}

func TestServerSeesAnotherProcessWrite(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ts := startServerWith(t, dsn, "-reload-interval", "50ms")
		if _, _, body := ts.get(t, "/events", ts.user); !strings.Contains(string(body), `"events":[]`) {
			t.Fatalf("before: %s", body)
		}
		// A second connection pool on the same file writes, as another process would.
		other, err := openStore(context.Background(), ts.db, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		now := time.Now().UTC()
		e := Event{ID: newID(), Title: "from elsewhere", Start: now.Add(-time.Hour), End: now.Add(time.Hour), Rewards: "{}", State: statePublished, CreatedAt: now, UpdatedAt: now}
		if _, _, err := other.CreateEvent(context.Background(), e, ""); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool {
			_, _, body := ts.get(t, "/events", ts.user)
			return strings.Contains(string(body), "from elsewhere")
		})
	})
}

func TestOtherInstancesWritesArriveAtOnceOnPostgreSQL(t *testing.T) {
	// With an hour between polls, only the change feed can carry a write from one instance
	// to another; with it off (-pg-notify=false), the poll alone does, at -reload-interval.
	dsn := testDSN(t, "postgres")
	ts := startServerWith(t, dsn, "-reload-interval", "1h")
	other := startServerOn(t, dsn, ts.user, ts.admin, "-reload-interval", "1h")
	now := time.Now().UTC()
	created, err := other.events.CreateEvent(withKey(ts.admin), createReq("from the other instance", now.Add(-time.Hour), now.Add(time.Hour), ""))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		code, _, _ := ts.get(t, "/events/"+created.GetEvent().GetId(), ts.user)
		return code == 200
	})
	// A key revoked through one instance's database is refused by the other at once too.
	st := newTestStoreAt(t, dsn)
	keys, _ := st.Keys(context.Background())
	for _, k := range keys {
		if k.Role == roleHTTPUser {
			if err := st.RevokeKey(context.Background(), k.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, func() bool { code, _, _ := ts.get(t, "/events", ts.user); return code == 401 })

	polled := startServerOn(t, dsn, ts.user, ts.admin, "-reload-interval", "100ms", "-pg-notify=false")
	later, err := other.events.CreateEvent(withKey(ts.admin), createReq("later", now.Add(-time.Hour), now.Add(time.Hour), ""))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, err := polled.events.GetEvent(withKey(ts.admin), &eventspb.GetEventRequest{Id: later.GetEvent().GetId()})
		return err == nil
	})
}
