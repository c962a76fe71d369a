package main

// Benchmarks for the read path. Run them with
//
//	go test -run '^$' -bench . -benchmem
//
// They are measurements, not pass/fail tests: the numbers go in the README.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"liveops/eventspb"
)

// seedEvents inserts n events running from start to end in one transaction, far faster
// than n separate creates, and bumps the generation once.
func seedEvents(tb testing.TB, st *store, n int, title string, start, end time.Time) {
	tb.Helper()
	ctx := context.Background()
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO events (`+eventColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		tb.Fatal(err)
	}
	defer stmt.Close()
	rewards := `{"items":[{"id":"gem","qty":50},{"id":"chest","qty":1}]}`
	for i := range n {
		e := Event{ID: newID(), Title: fmt.Sprintf("%s %d", title, i),
			Description: "Bench event with a description of typical length for a game client card.",
			Start:       start, End: end, Rewards: rewards, State: statePublished, CreatedAt: t0, UpdatedAt: t0, Version: 1}
		if _, err := stmt.ExecContext(ctx, eventValues(e)...); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := bumpGeneration(ctx, tx); err != nil {
		tb.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
}

// discardResponse is a ResponseWriter that keeps nothing, so a benchmark measures the
// handler and not the recorder.
type discardResponse struct {
	header http.Header
	status int
}

func (d *discardResponse) Header() http.Header         { return d.header }
func (d *discardResponse) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardResponse) WriteHeader(code int)        { d.status = code }

// readBench is a read model with 20 active events among ended ones, and what a GET /events
// request runs through: the role check, then the handler.
type readBench struct {
	rm      *readModel
	handler http.Handler // requireRole + handleEvents, as the route is registered
	full    http.Handler // the whole root handler: switch, logging, headers, route
	req     *http.Request
}

func newReadBench(b *testing.B, ended int) *readBench {
	st := newTestStore(b)
	now := time.Now()
	seedEvents(b, st, ended, "Ended event", now.Add(-90*24*time.Hour), now.Add(-89*24*time.Hour))
	seedEvents(b, st, 20, "Active event", now.Add(-time.Hour), now.Add(24*time.Hour))
	log := newLogger("text", io.Discard)
	rm, err := newReadModel(context.Background(), st, time.Now, log)
	if err != nil {
		b.Fatal(err)
	}
	kr, _ := newKeyring(context.Background(), st, time.Now)
	key, _ := createTestKey(b, st, roleHTTPUser)
	g := &guard{keys: kr, limiter: newFailureLimiter(30, time.Minute, time.Minute, time.Now)}
	gs, _ := newGRPCServer(st, rm, g, 1<<20, time.Now, log)
	req := httptest.NewRequest("GET", "/events", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	return &readBench{
		rm:      rm,
		handler: g.requireRole(roleHTTPUser, handleEvents(rm, false)),
		full:    newServer(st, rm, g, gs, false, log),
		req:     req,
	}
}

func (rb *readBench) serve(b *testing.B, h http.Handler) {
	w := &discardResponse{header: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.header)
		w.status = 0
		h.ServeHTTP(w, rb.req)
	}
	if w.status != 0 && w.status != 200 {
		b.Fatalf("status %d", w.status)
	}
}

func BenchmarkGetEvents(b *testing.B) {
	b.Run("cached", func(b *testing.B) {
		rb := newReadBench(b, 0)
		rb.serve(b, rb.handler)
	})
	b.Run("cached/full-stack", func(b *testing.B) {
		rb := newReadBench(b, 0)
		rb.serve(b, rb.full)
	})
	b.Run("after-invalidation", func(b *testing.B) {
		// Every request finds the cache invalid, as the first request after a write or a
		// boundary does, and re-encodes the answer.
		rb := newReadBench(b, 5000)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rb.rm.active.Store(nil)
			rb.handler.ServeHTTP(w, r)
		})
		rb.serve(b, h)
	})
	// The same 20 active events, among more and more ended ones: the time per request must
	// not grow with history.
	for _, ended := range []int{0, 1000, 100_000} {
		b.Run(fmt.Sprintf("history/ended=%d", ended), func(b *testing.B) {
			rb := newReadBench(b, ended)
			rb.serve(b, rb.handler)
		})
	}
}

func BenchmarkKeyCheck(b *testing.B) {
	st := newTestStore(b)
	kr, _ := newKeyring(context.Background(), st, time.Now)
	key, _ := createTestKey(b, st, roleHTTPUser)
	g := &guard{keys: kr, limiter: newFailureLimiter(30, time.Minute, time.Minute, time.Now)}
	header := []string{"Bearer " + key}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := g.authorize(ctx, "127.0.0.1", header, roleHTTPUser); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSnapshotRebuild(b *testing.B) {
	for _, n := range []int{1000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			st := newTestStore(b)
			now := time.Now()
			seedEvents(b, st, n, "Event", now.Add(-time.Hour), now.Add(time.Hour))
			rm, err := newReadModel(context.Background(), st, time.Now, newLogger("text", io.Discard))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				rm.mu.Lock()
				err := rm.load(context.Background())
				rm.mu.Unlock()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkIncrementalWrite(b *testing.B) {
	// What a write costs the read model: a snapshot copy with one event changed.
	for _, n := range []int{1000, 100_000} {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			st := newTestStore(b)
			now := time.Now()
			seedEvents(b, st, n, "Event", now.Add(-time.Hour), now.Add(time.Hour))
			rm, _ := newReadModel(context.Background(), st, time.Now, newLogger("text", io.Discard))
			e := rm.snapshot().ordered[n/2].Event
			b.ReportAllocs()
			for b.Loop() {
				snap := rm.snapshot()
				e.Title += "!"
				rm.snap.Store(snap.with(snap.gen+1, &e, "", now))
			}
		})
	}
}

func BenchmarkListEvents(b *testing.B) {
	// The default first page (100 events) of 20 active, 200 upcoming and 5000 ended events,
	// as ../shared/bench/compare seeds and asks, over a real gRPC connection.
	ts := startServer(b)
	st, err := openStore(context.Background(), ts.db)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	seedEvents(b, st, 5000, "Ended event", now.Add(-90*24*time.Hour), now.Add(-89*24*time.Hour))
	seedEvents(b, st, 200, "Upcoming event", now.Add(30*24*time.Hour), now.Add(31*24*time.Hour))
	seedEvents(b, st, 20, "Active event", now.Add(-time.Hour), now.Add(24*time.Hour))
	st.Close()
	ctx := withKey(ts.admin)
	// The server picks up the seeded events at its next poll.
	active := &eventspb.ListEventsRequest{Status: []eventspb.EventStatus{eventspb.EventStatus_EVENT_STATUS_ACTIVE}}
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := ts.events.ListEvents(ctx, active)
		if err != nil {
			b.Fatal(err)
		}
		if len(resp.GetEvents()) == 20 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the server never saw the seeded events")
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := ts.events.ListEvents(ctx, &eventspb.ListEventsRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
