package main

// Benchmarks for the read path. Run them with
//
//	go test -run '^$' -bench . -benchmem
//
// They are measurements, not pass/fail tests: the numbers go in the README.

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"

	"liveops/eventspb"
)

// seedEvents stores n events running from start to end in one transaction, far faster
// than n separate creates.
func seedEvents(tb testing.TB, st *store, n int, title string, start, end time.Time) {
	tb.Helper()
	ctx := withActor(context.Background(), "seed")
	rewards := `{"items":[{"id":"gem","qty":50},{"id":"chest","qty":1}]}`
	err := st.inTx(ctx, "seed", func(tx *dbTx) error {
		for i := range n {
			e := Event{ID: newID(), Title: fmt.Sprintf("%s %d", title, i),
				Description: "Bench event with a description of typical length for a game client card.",
				Start:       start, End: end, Rewards: rewards, State: statePublished, CreatedAt: t0, UpdatedAt: t0, Version: 1}
			if err := putEvent(ctx, tx, e, 0); err != nil {
				return err
			}
			if _, err := recordWrite(ctx, tx, "create", t0, e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
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

// readBench is a service with 20 active events among ended ones, and a GET /events request.
type readBench struct {
	svc *service
	req *http.Request
}

func newReadBench(b *testing.B, ended int) *readBench {
	return newReadBenchEnv(b, ended, nil)
}

// newReadBenchEnv is newReadBench with env as the environment: the OpenTelemetry variables,
// say.
func newReadBenchEnv(b *testing.B, ended int, env map[string]string) *readBench {
	st := newTestStore(b)
	now := time.Now()
	seedEvents(b, st, ended, "Ended event", now.Add(-90*24*time.Hour), now.Add(-89*24*time.Hour))
	seedEvents(b, st, 20, "Active event", now.Add(-time.Hour), now.Add(24*time.Hour))
	key, _ := createTestKey(b, st, roleHTTPUser)
	cfg, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	svc, err := newService(context.Background(), cfg, st, time.Now, newLogger("text", io.Discard))
	if err != nil {
		b.Fatal(err)
	}
	if svc.traces != nil {
		b.Cleanup(func() { svc.traces.Shutdown(context.Background()) })
	}
	req := httptest.NewRequest("GET", "/events", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	return &readBench{svc: svc, req: req}
}

// serve measures the whole handler: the protocol switch, access log, headers, key check
// and the answer.
func (rb *readBench) serve(b *testing.B) {
	w := &discardResponse{header: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.header)
		w.status = 0
		rb.svc.handler.ServeHTTP(w, rb.req)
	}
	if w.status != 0 && w.status != 200 {
		b.Fatalf("status %d", w.status)
	}
}

func BenchmarkGetEvents(b *testing.B) {
	b.Run("cached", func(b *testing.B) {
		newReadBench(b, 0).serve(b)
	})
	b.Run("after-invalidation", func(b *testing.B) {
		// Every request finds the answer invalid, as the first request after a write or a
		// boundary does, and re-encodes it: the read model moves to a new generation
		// before each request.
		rb := newReadBench(b, 5000)
		w := &discardResponse{header: http.Header{}}
		b.ReportAllocs()
		for b.Loop() {
			rb.svc.events.mu.Lock()
			snap := rb.svc.events.snapshot()
			next := *snap
			next.gen++
			rb.svc.events.snap.Store(&next)
			rb.svc.events.mu.Unlock()
			clear(w.header)
			rb.svc.handler.ServeHTTP(w, rb.req)
		}
	})
	// The same, with every request traced and its span exported (at the sampling ratios
	// the yardstick runs) to a collector in this process, which takes its share of the CPU.
	for _, ratio := range []string{"1.0", "0.01"} {
		b.Run("cached/traced="+ratio, func(b *testing.B) {
			_, endpoint := startOTLPReceiver(b, "grpc")
			newReadBenchEnv(b, 0, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
				"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": ratio}).serve(b)
		})
	}
	// The same 20 active events, among more and more ended ones: the time per request must
	// not grow with history.
	for _, ended := range []int{0, 1000, 100_000} {
		b.Run(fmt.Sprintf("history/ended=%d", ended), func(b *testing.B) {
			newReadBench(b, ended).serve(b)
		})
	}
}

// BenchmarkAccessLog compares the access log's own formatter with slog writing the same
// fields, as a line per request costs either way.
func BenchmarkAccessLog(b *testing.B) {
	e := &accessEntry{end: time.Now(), took: 150 * time.Microsecond, proto: "HTTP/1.1", method: "GET",
		path: "/events", status: 200, keyID: "0123456789ab", keyName: "game-client", traceID: newTraceID()}
	for _, format := range []string{"text", "json"} {
		b.Run("formatter/"+format, func(b *testing.B) {
			l := newLogger(format, io.Discard)
			b.ReportAllocs()
			for b.Loop() {
				l.access(e)
			}
		})
		b.Run("slog/"+format, func(b *testing.B) {
			l := newLogger(format, io.Discard)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				l.LogAttrs(ctx, slog.LevelInfo, "request", slog.String("proto", e.proto), slog.String("method", e.method),
					slog.String("path", redactKeys(e.path)), slog.Int("status", e.status),
					slog.Float64("duration_ms", float64(e.took.Microseconds())/1000),
					slog.String("trace_id", e.traceID.String()),
					slog.String("key_id", e.keyID), slog.String("key_name", e.keyName))
			}
		})
	}
}

// BenchmarkTraceparent compares reading a request's traceparent by hand (callerTrace) with
// OpenTelemetry's propagator, which every request would pay for even with tracing off.
func BenchmarkTraceparent(b *testing.B) {
	h := http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	b.Run("by-hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, _, ok := callerTrace(h); !ok {
				b.Fatal("not parsed")
			}
		}
	})
	b.Run("propagator", func(b *testing.B) {
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if !trace.SpanContextFromContext(propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(h))).IsValid() {
				b.Fatal("not parsed")
			}
		}
	})
}

// BenchmarkGzipAnswer compares a pooled gzip.Writer with a new one per answer: an answer
// is compressed once per variant and second.
func BenchmarkGzipAnswer(b *testing.B) {
	body := bytes.Repeat([]byte(`{"id":"0b7d3c3e-4f1a-4a53-9c5e-2f9a8d6b1e20","title":"Active event","status":"active"},`), 100)
	b.Run("pooled", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			newCachedResponse(body, body).gzipped()
		}
	})
	b.Run("new-writer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			zw.Write(body)
			zw.Close()
		}
	})
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

// seededReadModel returns a store holding n active events and a read model over it.
func seededReadModel(b *testing.B, n int) (*store, *readModel) {
	st := newTestStore(b)
	now := time.Now()
	seedEvents(b, st, n, "Event", now.Add(-time.Hour), now.Add(time.Hour))
	rm, err := newReadModel(context.Background(), st, time.Now, newLogger("text", io.Discard))
	if err != nil {
		b.Fatal(err)
	}
	return st, rm
}

func BenchmarkIncrementalWrite(b *testing.B) {
	// What a write costs the read model: a snapshot copy with one event changed.
	for _, n := range []int{1000, 100_000} {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			_, rm := seededReadModel(b, n)
			e := slices.Collect(rm.snapshot().ordered.all())[n/2].Event
			b.ReportAllocs()
			for b.Loop() {
				snap := rm.snapshot()
				e.Priority = 1 - e.Priority
				rm.snap.Store(snap.with(snap.gen+1, &e, ""))
			}
		})
	}
}

// BenchmarkListEventsEncode compares what a default ListEvents call costs to encode: the
// shared pre-encoded page (preEncodedCodec) against encoding the page for each call.
func BenchmarkListEventsEncode(b *testing.B) {
	st := newTestStore(b)
	now := time.Now()
	seedEvents(b, st, 200, "Upcoming event", now.Add(30*24*time.Hour), now.Add(31*24*time.Hour))
	seedEvents(b, st, 20, "Active event", now.Add(-time.Hour), now.Add(24*time.Hour))
	log := newLogger("text", io.Discard)
	rm, err := newReadModel(context.Background(), st, time.Now, log)
	if err != nil {
		b.Fatal(err)
	}
	s := &eventServer{st: st, rm: rm, log: log}
	codec := preEncodedCodec{encoding.GetCodecV2(protoenc.Name)}
	b.Run("pre-encoded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out, err := codec.Marshal(s.firstPage(time.Now()))
			if err != nil || out.Len() == 0 {
				b.Fatal(err)
			}
		}
	})
	b.Run("marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t := time.Now()
			events, next, _ := rm.snapshot().adminPage(t, adminQuery{pageSize: defaultPageSize, filter: defaultFilter})
			out, err := codec.Marshal(listResponse(t, events, next.token(), rm.zones))
			if err != nil || out.Len() == 0 {
				b.Fatal(err)
			}
			out.Free()
		}
	})
}

// BenchmarkRemoteChange measures what one write by another process costs a server that
// catches up on it: reading that change from the revision log and applying it, rather
// than reloading every event.
func BenchmarkRemoteChange(b *testing.B) {
	for _, n := range []int{1000, 100_000} {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			st, rm := seededReadModel(b, n)
			id := slices.Collect(rm.snapshot().ordered.all())[n/2].ID
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				if _, _, err := st.UpdateEvent(ctx, id, "", func(e *Event) error { e.Priority = 1 - e.Priority; return nil }); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := rm.refresh(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkListEvents(b *testing.B) {
	// The default first page (100 events) of 20 active, 200 upcoming and 5000 ended events,
	// as ../shared/bench/compare seeds and asks, over a real gRPC connection.
	ts := startServer(b)
	st, err := openStore(context.Background(), ts.db, time.Now)
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

// BenchmarkPropagation measures how long a write committed through one instance takes to
// show in GET /events/{id} on another, both on one PostgreSQL holding 100,000 events (set
// LIVEOPS_BENCH_EVENTS for another count), with the change feed and with polling alone
// (every second). Run it with -benchtime 1000x for the p50 and p99 over 1000 writes; each
// write waits a random part of a second first, so it takes about 8 minutes.
func BenchmarkPropagation(b *testing.B) {
	n := 100_000
	if s := os.Getenv("LIVEOPS_BENCH_EVENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for _, mode := range []struct {
		name string
		args []string
	}{{"notify", nil}, {"poll-1s", []string{"-pg-notify=false"}}} {
		b.Run(mode.name, func(b *testing.B) {
			dsn := testDSN(b, "postgres")
			st := newTestStoreAt(b, dsn)
			now := time.Now()
			seedEvents(b, st, n, "Ended event", now.Add(-90*24*time.Hour), now.Add(-89*24*time.Hour))
			a := startServerWith(b, dsn, mode.args...)
			other := startServerOn(b, dsn, a.user, a.admin, mode.args...)
			client := &http.Client{Timeout: 5 * time.Second}
			visible := func(id string) bool {
				req, _ := http.NewRequest("GET", "http://"+other.addr+"/events/"+id, nil)
				req.Header.Set("Authorization", "Bearer "+a.user)
				resp, err := client.Do(req)
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == 200
			}
			var took []time.Duration
			for b.Loop() {
				// Writes come at any moment of a poll interval, not just after a poll.
				b.StopTimer()
				time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
				b.StartTimer()
				start := time.Now()
				created, err := a.events.CreateEvent(withKey(a.admin), createReq("propagating", now.Add(-time.Hour), now.Add(time.Hour), ""))
				if err != nil {
					b.Fatal(err)
				}
				for !visible(created.GetEvent().GetId()) {
					if time.Since(start) > 10*time.Second {
						b.Fatal("a write never reached the other instance")
					}
					time.Sleep(time.Millisecond)
				}
				took = append(took, time.Since(start))
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
