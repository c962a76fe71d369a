package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// newTestStore opens a fresh database in a temporary directory.
func newTestStore(t testing.TB) *store {
	t.Helper()
	st, err := openStore(context.Background(), filepath.Join(t.TempDir(), "test.db"), time.Now)
	if err != nil {
		t.Fatalf("openStore: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// mustCreate validates and stores an event that runs from start to end.
func mustCreate(t *testing.T, st *store, title string, start, end time.Time) Event {
	t.Helper()
	e := Event{ID: newID(), Title: title, Start: start, End: end, CreatedAt: t0, UpdatedAt: t0}
	if err := e.validate(); err != nil {
		t.Fatalf("validate %q: %v", title, err)
	}
	got, _, err := st.CreateEvent(context.Background(), e, "")
	if err != nil {
		t.Fatalf("CreateEvent %q: %v", title, err)
	}
	return got
}

func titles(events []Event) string {
	var s []string
	for _, e := range events {
		s = append(s, e.Title)
	}
	return strings.Join(s, ",")
}

func TestStoreEventCRUD(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		c := newClock(t0)
		st.now = c.now

		e := Event{
			ID: newID(), Title: "Winter Festival", Description: "Snow everywhere",
			Start: t0, End: t0.Add(48 * time.Hour), Rewards: `{"gems": 50}`,
			CreatedAt: t0, UpdatedAt: t0,
		}
		if err := e.validate(); err != nil {
			t.Fatal(err)
		}
		created, gen, err := st.CreateEvent(ctx, e, "")
		if err != nil || gen != 1 {
			t.Fatal(err, gen)
		}
		e.Version = 1
		if !reflect.DeepEqual(created, e) {
			t.Fatalf("CreateEvent = %+v; want %+v", created, e)
		}
		got, err := getEvent(ctx, st.db, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("Event after create = %+v; want %+v", got, e)
		}
		if got.Rewards != `{"gems":50}` {
			t.Errorf("rewards stored as %q; want compact JSON", got.Rewards)
		}

		var want Event
		c.set(t0.Add(time.Minute))
		got, gen, err = st.UpdateEvent(ctx, e.ID, "", func(u *Event) error {
			u.Title, u.Description, u.Rewards = "Winter Festival II", "", "[1,2]"
			u.Start, u.End = t0.Add(time.Hour), t0.Add(2*time.Hour+time.Nanosecond)
			u.CreatedAt = time.Time{} // an update must not touch created_at
			want = *u
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want.CreatedAt, want.UpdatedAt, want.Version = t0, t0.Add(time.Minute), 2
		if !reflect.DeepEqual(got, want) || got.ETag() == e.ETag() || gen != 2 {
			t.Fatalf("UpdateEvent = %+v; want %+v with a new etag", got, want)
		}
		if again, _ := getEvent(ctx, st.db, e.ID); !reflect.DeepEqual(again, want) {
			t.Fatalf("Event after update = %+v; want %+v", again, want)
		}

		// A refused change leaves the event as it was.
		refuse := errors.New("no")
		if _, _, err := st.UpdateEvent(ctx, e.ID, "", func(u *Event) error { u.Title = "changed"; return refuse }); !errors.Is(err, refuse) {
			t.Fatalf("UpdateEvent with a refusing change = %v", err)
		}
		if again, _ := getEvent(ctx, st.db, e.ID); !reflect.DeepEqual(again, want) {
			t.Fatalf("a refused update changed the event: %+v", again)
		}

		if gen, err := st.DeleteEvent(ctx, e.ID, ""); err != nil || gen != 3 {
			t.Fatalf("DeleteEvent = %d, %v; want generation 3", gen, err)
		}
		if _, err := getEvent(ctx, st.db, e.ID); !errors.Is(err, errNotFound) {
			t.Fatalf("Event after delete: err = %v; want errNotFound", err)
		}
		if _, err := st.DeleteEvent(ctx, e.ID, ""); !errors.Is(err, errNotFound) {
			t.Fatalf("second DeleteEvent: err = %v; want errNotFound", err)
		}
		if _, _, err := st.UpdateEvent(ctx, e.ID, "", func(*Event) error { return nil }); !errors.Is(err, errNotFound) {
			t.Fatalf("UpdateEvent of deleted event: err = %v; want errNotFound", err)
		}
	})
}

func TestStoreETags(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		e := mustCreate(t, st, "etag", t0, t0.Add(time.Hour))
		stale := e.ETag()
		rename := func(title string) func(*Event) error {
			return func(u *Event) error { u.Title = title; return nil }
		}
		u, _, err := st.UpdateEvent(ctx, e.ID, stale, rename("first"))
		if err != nil {
			t.Fatalf("update with the current etag: %v", err)
		}
		if _, _, err := st.UpdateEvent(ctx, e.ID, stale, rename("second")); !errors.Is(err, errStale) {
			t.Fatalf("update with a stale etag: %v; want errStale", err)
		}
		if _, err := st.DeleteEvent(ctx, e.ID, stale); !errors.Is(err, errStale) {
			t.Fatalf("delete with a stale etag: %v; want errStale", err)
		}
		if got, _ := getEvent(ctx, st.db, e.ID); got.Title != "first" || got.Version != 2 {
			t.Fatalf("after stale writes: %+v; want title first, version 2", got)
		}
		if _, err := st.DeleteEvent(ctx, e.ID, u.ETag()); err != nil {
			t.Fatalf("delete with the current etag: %v", err)
		}
	})
}

func TestStoreIdempotentCreate(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		c := newClock(t0)
		st.now = c.now
		e := Event{ID: newID(), Title: "once", Start: t0, End: t0.Add(time.Hour)}
		e.validate()
		req := newID()
		first, gen, err := st.CreateEvent(ctx, e, req)
		if err != nil || gen == 0 {
			t.Fatalf("first create: %v, generation %d", err, gen)
		}
		retry := e
		retry.ID = newID() // a retry gets a fresh id from the server, which must not be used
		again, gen, err := st.CreateEvent(ctx, retry, req)
		if err != nil || gen != 0 || !reflect.DeepEqual(again, first) {
			t.Fatalf("retry: %+v, generation %d, %v; want the first event back and nothing written", again, gen, err)
		}
		other := e
		other.Title = "different"
		if _, _, err := st.CreateEvent(ctx, other, req); !errors.Is(err, errRequestReused) {
			t.Fatalf("reused request_id with another body: %v; want errRequestReused", err)
		}
		if all, _, _ := st.Events(ctx); len(all) != 1 {
			t.Fatalf("%d events stored; want 1", len(all))
		}

		// A retry 25 hours later, after other creates, still finds the first event.
		c.set(t0.Add(25 * time.Hour))
		dayLater := e
		dayLater.ID = newID()
		if _, _, err := st.CreateEvent(ctx, dayLater, newID()); err != nil {
			t.Fatal(err)
		}
		if again, gen, err := st.CreateEvent(ctx, retry, req); err != nil || gen != 0 || again.ID != first.ID {
			t.Fatalf("retry after 25h: %v, generation %d, %v; want the first event", again.ID, gen, err)
		}

		// Request ids are forgotten only long after the 24 hours promised.
		c.set(t0.Add(createRequestTTL + time.Hour))
		later := e
		later.ID = newID()
		if _, _, err := st.CreateEvent(ctx, later, newID()); err != nil {
			t.Fatal(err)
		}
		var n int
		st.db.QueryRowContext(ctx, `SELECT count(*) FROM create_requests WHERE request_id = ?`, req).Scan(&n)
		if n != 0 {
			t.Fatalf("request id older than the TTL was kept")
		}
	})
}

func TestImportBesideUpdatesNeverDeadlocks(t *testing.T) {
	// An import locks its events one by one and bumps the generation after each; an update
	// locks its event, then bumps the generation. Unless every write takes the generation
	// first, an update that holds the import's next event and waits for the generation
	// deadlocks with it on PostgreSQL, and one of them fails as busy. (SQLite has one write
	// lock for the database and cannot deadlock like this; there, writers that never pause
	// can keep the import waiting past busy_timeout, which is another matter.)
	ctx := context.Background()
	st := newTestStoreAt(t, testDSN(t, "postgres"))
	var events []Event
	for i := range 40 {
		events = append(events, mustCreate(t, st, fmt.Sprintf("e%d", i), t0, t0.Add(time.Hour)))
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for round := range 5 {
			file := make([]Event, len(events))
			for i, e := range events {
				file[i] = Event{ID: e.ID, Title: fmt.Sprintf("import %d of e%d", round, i), Start: t0, End: t0.Add(time.Hour)}
				if err := file[i].validate(); err != nil {
					t.Error(err)
					return
				}
			}
			if _, _, err := st.Import(ctx, file, false); err != nil {
				t.Errorf("import round %d: %v", round, err)
				return
			}
		}
	})
	for w := range 4 {
		wg.Go(func() {
			// Walking the events backwards, the updates meet the import head on.
			for n := 0; ; n++ {
				for i := len(events) - 1; i >= 0; i-- {
					select {
					case <-done:
						return
					default:
					}
					_, _, err := st.UpdateEvent(ctx, events[i].ID, "", func(e *Event) error {
						e.Description = fmt.Sprintf("updater %d, pass %d", w, n)
						return nil
					})
					if err != nil {
						t.Errorf("update of e%d beside an import: %v", i, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestAnExpiredDeadlineIsNotAnOutage(t *testing.T) {
	// A call whose own deadline ran out must say so, not report the database as unreachable:
	// context.DeadlineExceeded is itself a net.Error, and pgx wraps it in a timeout.
	check := func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errUnavailable) {
			t.Fatalf("err = %v; want context.DeadlineExceeded, not errUnavailable", err)
		}
		if s, _ := grpcStatus(context.Background(), err); s.Code() != codes.DeadlineExceeded {
			t.Fatalf("gRPC status %v; want DeadlineExceeded", s.Code())
		}
		w := httptest.NewRecorder()
		writeError(w, httptest.NewRequest("GET", "/events", nil), err)
		if w.Code != http.StatusServiceUnavailable {
			t.Fatalf("HTTP status %d; want 503", w.Code)
		}
	}
	forEachEngine(t, func(t *testing.T, dsn string) {
		st := newTestStoreAt(t, dsn)
		e := mustCreate(t, st, "late", t0, t0.Add(time.Hour))
		keep := func(*Event) error { return nil }
		expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel()
		for _, tc := range []struct {
			name string
			call func(ctx context.Context) error
		}{
			{"update", func(ctx context.Context) error { _, _, err := st.UpdateEvent(ctx, e.ID, "", keep); return err }},
			{"list", func(ctx context.Context) error { _, _, err := st.Events(ctx); return err }},
			{"check writable", st.CheckWritable},
		} {
			t.Run(tc.name+" with an expired deadline", func(t *testing.T) { check(t, tc.call(expired)) })
		}
		if !st.pg {
			return
		}
		t.Run("deadline passes while waiting for a row lock", func(t *testing.T) {
			tx, err := st.db.BeginTx(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(context.Background(), `SELECT id FROM events WHERE id = ? FOR UPDATE`, e.ID); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, _, err = st.UpdateEvent(ctx, e.ID, "", keep)
			check(t, err)
		})
	})
}

func TestEventValidation(t *testing.T) {
	valid := func() Event {
		return Event{Title: "Festival", Description: "d", Start: t0, End: t0.Add(time.Hour), Rewards: `{"a":1}`}
	}
	tests := []struct {
		name   string
		change func(*Event)
		field  string // empty when the event is valid
	}{
		{"valid", func(e *Event) {}, ""},
		{"title of 100 runes", func(e *Event) { e.Title = strings.Repeat("é", 100) }, ""},
		{"missing title", func(e *Event) { e.Title = "" }, "title"},
		{"title of 101 runes", func(e *Event) { e.Title = strings.Repeat("é", 101) }, "title"},
		{"title not UTF-8", func(e *Event) { e.Title = "bad\xff" }, "title"},
		{"description of 1000 runes", func(e *Event) { e.Description = strings.Repeat("日", 1000) }, ""},
		{"description of 1001 runes", func(e *Event) { e.Description = strings.Repeat("日", 1001) }, "description"},
		{"missing start", func(e *Event) { e.Start = time.Time{} }, "start_time"},
		{"missing end", func(e *Event) { e.End = time.Time{} }, "end_time"},
		{"end equals start", func(e *Event) { e.End = e.Start }, "end_time"},
		{"end before start", func(e *Event) { e.End = e.Start.Add(-time.Second) }, "end_time"},
		{"empty rewards", func(e *Event) { e.Rewards = "" }, ""},
		{"array rewards", func(e *Event) { e.Rewards = `[{"id":"gem"}]` }, ""},
		{"rewards not JSON", func(e *Event) { e.Rewards = `{gems: 5}` }, "rewards"},
		{"rewards a string", func(e *Event) { e.Rewards = `"gems"` }, "rewards"},
		{"rewards a number", func(e *Event) { e.Rewards = `5` }, "rewards"},
		{"title with NUL", func(e *Event) { e.Title = "a\x00b" }, "title"},
		{"title with tab", func(e *Event) { e.Title = "a\tb" }, "title"},
		{"title with newline", func(e *Event) { e.Title = "a\nb" }, "title"},
		{"title with DEL", func(e *Event) { e.Title = "a\x7fb" }, "title"},
		{"title with C1 control", func(e *Event) { e.Title = "a\u0085b" }, "title"},
		{"title with RLO override", func(e *Event) { e.Title = "a\u202eb" }, "title"},
		{"title with isolate", func(e *Event) { e.Title = "a\u2067b" }, "title"},
		{"title with RTL mark", func(e *Event) { e.Title = "\u200fשלום" }, ""},
		{"title only spaces", func(e *Event) { e.Title = "   " }, "title"},
		{"description with newlines", func(e *Event) { e.Description = "line one\nline two" }, ""},
		{"description with CR", func(e *Event) { e.Description = "a\rb" }, "description"},
		{"description with bidi override", func(e *Event) { e.Description = "\u202d" + "x" }, "description"},
		{"description over byte cap", func(e *Event) { e.Description = strings.Repeat("x", 4001) }, "description"},
		{"start before 2000", func(e *Event) { e.Start = time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC) }, "start_time"},
		{"start in 2000", func(e *Event) { e.Start = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC) }, ""},
		{"end in 2200", func(e *Event) { e.End = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC) }, "end_time"},
		{"epoch start", func(e *Event) { e.Start = time.Unix(0, 0).UTC() }, "start_time"},
		{"rewards with duplicate key", func(e *Event) { e.Rewards = `{"gems":1,"gems":2}` }, "rewards"},
		{"rewards with nested duplicate key", func(e *Event) { e.Rewards = `[{"a":{"x":1,"y":{},"x":2}}]` }, "rewards"},
		{"rewards same key in sibling objects", func(e *Event) { e.Rewards = `[{"id":1},{"id":2}]` }, ""},
		{"rewards value equal to a key", func(e *Event) { e.Rewards = `{"a":"a","b":"a"}` }, ""},
		{"rewards 32 levels deep", func(e *Event) { e.Rewards = strings.Repeat("[", 32) + strings.Repeat("]", 32) }, ""},
		{"rewards 33 levels deep", func(e *Event) { e.Rewards = strings.Repeat("[", 33) + strings.Repeat("]", 33) }, "rewards"},
		{"rewards of 64 KiB", func(e *Event) { e.Rewards = `["` + strings.Repeat("x", 64<<10-4) + `"]` }, ""},
		{"rewards over 64 KiB", func(e *Event) { e.Rewards = `["` + strings.Repeat("x", 64<<10-3) + `"]` }, "rewards"},
		{"preview before start", func(e *Event) { e.Preview = e.Start.Add(-time.Hour) }, ""},
		{"preview at start", func(e *Event) { e.Preview = e.Start }, "preview_time"},
		{"preview before 2000", func(e *Event) { e.Preview = time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC) }, "preview_time"},
		{"labels", func(e *Event) { e.Labels = []string{"shop", "pvp", "halloween-2026", "x_1"} }, ""},
		{"uppercase label", func(e *Event) { e.Labels = []string{"Shop"} }, "labels"},
		{"label with space", func(e *Event) { e.Labels = []string{"big sale"} }, "labels"},
		{"label starting with a dash", func(e *Event) { e.Labels = []string{"-x"} }, "labels"},
		{"empty label", func(e *Event) { e.Labels = []string{""} }, "labels"},
		{"label of 33 characters", func(e *Event) { e.Labels = []string{strings.Repeat("a", 33)} }, "labels"},
		{"21 labels", func(e *Event) {
			for i := range 21 {
				e.Labels = append(e.Labels, fmt.Sprint("l", i))
			}
		}, "labels"},
		{"draft", func(e *Event) { e.State = stateDraft }, ""},
		{"unknown state", func(e *Event) { e.State = "ARCHIVED" }, "state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := valid()
			tt.change(&e)
			err := e.validate()
			probs := fieldProblems(err)
			switch {
			case tt.field == "" && err != nil:
				t.Fatalf("validate() = %v; want nil", err)
			case tt.field != "" && len(probs) != 1:
				t.Fatalf("validate() = %v; want one problem, with %s", err, tt.field)
			case tt.field != "" && probs[0].Field != tt.field:
				t.Fatalf("validate() blames %q (%v); want %q", probs[0].Field, err, tt.field)
			}
		})
	}
}

func TestValidateNormalisesLabelsAndState(t *testing.T) {
	e := Event{Title: "t", Start: t0, End: t0.Add(time.Hour), Labels: []string{"shop", "pvp", "shop"}}
	if err := e.validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(e.Labels, []string{"pvp", "shop"}) || e.State != statePublished {
		t.Fatalf("labels %q, state %q; want [pvp shop] and PUBLISHED by default", e.Labels, e.State)
	}
}

func TestValidateTrimsText(t *testing.T) {
	e := Event{Title: "  Festival \n", Description: "\tabout it  ", Start: t0, End: t0.Add(time.Hour)}
	if err := e.validate(); err != nil {
		t.Fatal(err)
	}
	if e.Title != "Festival" || e.Description != "about it" {
		t.Fatalf("title %q, description %q; want them trimmed", e.Title, e.Description)
	}
}

func TestEmptyRewardsMeansEmptyObject(t *testing.T) {
	e := Event{Title: "t", Start: t0, End: t0.Add(time.Hour), Rewards: "  "}
	if err := e.validate(); err != nil {
		t.Fatal(err)
	}
	if e.Rewards != "{}" {
		t.Fatalf("rewards = %q; want {}", e.Rewards)
	}
}

func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := newID()
		if !validID(id) || id[14] != '4' || !strings.ContainsRune("89ab", rune(id[19])) {
			t.Fatalf("newID() = %q; want a canonical UUID v4", id)
		}
		if seen[id] {
			t.Fatalf("newID() repeated %q", id)
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "abc", "0B7D3C3E-4F1A-4A53-9C5E-2F9A8D6B1E20", "{0b7d3c3e-4f1a-4a53-9c5e-2f9a8d6b1e20}",
		"0b7d3c3e4f1a4a539c5e2f9a8d6b1e20", "0b7d3c3e-4f1a-4a53-9c5e-2f9a8d6b1e2g", "0b7d3c3e_4f1a-4a53-9c5e-2f9a8d6b1e20"} {
		if validID(bad) {
			t.Errorf("validID(%q) = true; want false", bad)
		}
	}
}

func TestStoreKeys(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		if has, err := st.HasKeys(ctx); err != nil || has {
			t.Fatalf("HasKeys on a new database = %v, %v; want false", has, err)
		}
		secret, err := createTestKey(t, st, roleGRPCAdmin)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := st.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 {
			t.Fatalf("got %d keys; want 1", len(keys))
		}
		k := keys[0]
		if k.Hash != sha256.Sum256([]byte(secret)) {
			t.Errorf("stored hash is not the SHA-256 of the key")
		}
		if k.Role != roleGRPCAdmin || k.Name != "test" || !k.RevokedAt.IsZero() || !k.LastUsedAt.IsZero() {
			t.Errorf("stored key = %+v", k)
		}

		// The key text must appear nowhere in the database file's tables.
		var n int
		if err := st.db.QueryRowContext(ctx,
			`SELECT count(*) FROM api_keys WHERE name LIKE ? OR id LIKE ?`,
			"%"+secret+"%", "%"+secret+"%").Scan(&n); err != nil || n != 0 {
			t.Errorf("key text found in api_keys (%d rows, err %v)", n, err)
		}

		if err := st.TouchKeys(ctx, map[string]time.Time{k.ID: t0}); err != nil {
			t.Fatal(err)
		}
		// An older time must not move last_used_at backwards.
		if err := st.TouchKeys(ctx, map[string]time.Time{k.ID: t0.Add(-time.Hour)}); err != nil {
			t.Fatal(err)
		}
		c := newClock(t0.Add(time.Hour))
		st.now = c.now
		if err := st.RevokeKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		c.set(t0.Add(2 * time.Hour))
		if err := st.RevokeKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if err := st.RevokeKey(ctx, "nosuchkey"); !errors.Is(err, errNotFound) {
			t.Errorf("RevokeKey(unknown) = %v; want errNotFound", err)
		}
		keys, _ = st.Keys(ctx)
		if got := keys[0]; !got.LastUsedAt.Equal(t0) || !got.RevokedAt.Equal(t0.Add(time.Hour)) {
			t.Errorf("after touch and revoke: last used %v, revoked %v; want %v, %v", got.LastUsedAt, got.RevokedAt, t0, t0.Add(time.Hour))
		}
	})
}

func createTestKey(t testing.TB, st *store, r role) (string, error) {
	t.Helper()
	secret, _, err := createKey(context.Background(), st, r, "test", 0)
	return secret, err
}

func TestMigrateIsIdempotent(t *testing.T) {
	forEachEngine(t, func(t *testing.T, path string) {
		ctx := context.Background()
		// Instances starting at once against one empty database take turns to migrate.
		var wg sync.WaitGroup
		errs := make(chan error, 3)
		for range 3 {
			wg.Go(func() {
				st, err := openStore(ctx, path, time.Now)
				if err == nil {
					st.Close()
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("concurrent first open: %v", err)
			}
		}
		st, err := openStore(ctx, path, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		e := mustCreate(t, st, "kept", t0, t0.Add(time.Hour))
		st.Close()

		st, err = openStore(ctx, path, time.Now)
		if err != nil {
			t.Fatalf("second open: %v", err)
		}
		defer st.Close()
		if !st.pg {
			var version int
			if err := st.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil || version != len(migrations) {
				t.Fatalf("user_version = %d, %v; want %d", version, err, len(migrations))
			}
		}
		if _, err := getEvent(ctx, st.db, e.ID); err != nil {
			t.Fatalf("event lost across reopen: %v", err)
		}
	})
}

func TestPragmasReachEveryConnection(t *testing.T) {
	ctx := context.Background()
	st := newTestStore(t)
	// Hold several connections at once so the pool must open more than one.
	var conns []interface{ Close() error }
	for i := range 3 {
		c, err := st.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var mode string
		var sync, fk, busy int
		if err := c.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		c.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync)
		c.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk)
		c.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy)
		if mode != "wal" || sync != 2 || fk != 1 || busy != 5000 {
			t.Errorf("connection %d: journal_mode=%s synchronous=%d foreign_keys=%d busy_timeout=%d; want wal 2 1 5000",
				i, mode, sync, fk, busy)
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestMigrationKeepsExistingEvents(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	// A database as the version before scheduling left it: schema 3, one event.
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations[:3] {
		if _, err := db.ExecContext(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	id := newID()
	if _, err := db.ExecContext(ctx, `PRAGMA user_version = 3;
		INSERT INTO events (id, title, description, start_time, end_time, rewards, created_at, updated_at, version)
		VALUES (?, 'old', 'from before', ?, ?, '{"a":1}', ?, ?, 4)`,
		id, t0.UnixNano(), t0.Add(time.Hour).UnixNano(), t0.UnixNano(), t0.UnixNano()); err != nil {
		t.Fatal(err)
	}
	db.Close()

	st, err := openStore(ctx, path, time.Now)
	if err != nil {
		t.Fatalf("migrating: %v", err)
	}
	defer st.Close()
	e, err := getEvent(ctx, st.db, id)
	if err != nil {
		t.Fatal(err)
	}
	if e.Title != "old" || e.Description != "from before" || e.Rewards != `{"a":1}` || e.Version != 4 ||
		e.State != statePublished || e.Priority != 0 || e.Labels != nil || e.Recurrence.repeats() || !e.Preview.IsZero() {
		t.Fatalf("after migration: %+v; want the old fields kept and the new ones at their defaults", e)
	}
	if _, _, err := st.UpdateEvent(ctx, id, "v4", func(u *Event) error { u.Title = "new"; return nil }); err != nil {
		t.Fatalf("writing a migrated event: %v", err)
	}
}
