package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// targetedEvent is an event that sets every targeting field away from its default.
func targetedEvent() Event {
	return Event{ID: newID(), Title: "Fête", Description: "For some", Start: t0, End: t0.Add(time.Hour),
		Audience: &Audience{Platforms: []string{"IOS", "android"}, MinVersion: "1.2", MaxVersion: "2.0.0-rc.1",
			Countries: []string{"fr", "CA"}, Languages: []string{"FR"},
			Exclude: &Audience{Countries: []string{"BE"}, Platforms: []string{"android"}}},
		RolloutPercent: 25, TimeMode: "TIME_MODE_PLAYER_LOCAL",
		Localizations: map[string]Localization{"de": {Title: "Fest", Description: "Für einige"}, "pt_br": {Title: "Festa"}},
		CreatedAt:     t0, UpdatedAt: t0}
}

func TestStoreKeepsTargeting(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		e := targetedEvent()
		if err := e.validate(); err != nil {
			t.Fatal(err)
		}
		created, _, err := st.CreateEvent(ctx, e, "")
		if err != nil {
			t.Fatal(err)
		}
		got, err := getEvent(ctx, st.db, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, created) {
			t.Fatalf("read back %+v\nwant %+v", got, created)
		}
		if got.Audience.Exclude == nil || got.RolloutPercent != 25 || got.TimeMode != timeModePlayerLocal || got.Localizations["pt-BR"].Title != "Festa" {
			t.Fatalf("targeting not kept as validated: %+v", got)
		}
		// The audience column is JSON with field names of its own, not Go's.
		var raw string
		if err := st.db.QueryRowContext(ctx, `SELECT audience FROM events WHERE id = ?`, e.ID).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		if want := `{"platforms":["android","ios"],"min_version":"1.2","max_version":"2.0.0-rc.1","countries":["CA","FR"],"languages":["fr"],"exclude":{"platforms":["android"],"countries":["BE"]}}`; raw != want {
			t.Errorf("audience column = %s; want %s", raw, want)
		}

		// Every field back to its default: the columns go back to NULL and the defaults.
		got, _, err = st.UpdateEvent(ctx, e.ID, "", func(u *Event) error {
			u.Audience, u.RolloutPercent, u.TimeMode, u.Localizations = nil, 0, "", nil
			return u.validate()
		})
		if err != nil {
			t.Fatal(err)
		}
		var audience, locs sql.NullString
		var rollout int
		var mode string
		if err := st.db.QueryRowContext(ctx, `SELECT audience, rollout_percent, time_mode, localizations FROM events WHERE id = ?`, e.ID).
			Scan(&audience, &rollout, &mode, &locs); err != nil {
			t.Fatal(err)
		}
		if audience.Valid || locs.Valid || rollout != 100 || mode != "UTC" {
			t.Fatalf("cleared targeting stored as %v %d %s %v; want NULL 100 UTC NULL", audience, rollout, mode, locs)
		}
		events, _, err := st.Events(ctx)
		if err != nil || len(events) != 1 || !reflect.DeepEqual(events[0], got) {
			t.Fatalf("Events = %+v, %v; want [%+v]", events, err, got)
		}
	})
}

// TestMigrationKeepsEveryEventVisible builds a database as today's release leaves it
// (SQLite schema 9, PostgreSQL schema 3) and checks that, once migrated, every event is
// still there, untargeted, and that players see exactly what they saw.
func TestMigrationKeepsEveryEventVisible(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		pg := isPostgres(dsn)
		driver, path := "sqlite", "file:"+dsn
		if pg {
			driver, path = "pgx", dsn
		}
		raw, err := sql.Open(driver, path)
		if err != nil {
			t.Fatal(err)
		}
		old := &db{DB: raw, pg: pg}
		if pg {
			if _, err := old.ExecContext(ctx, `CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (3)`); err != nil {
				t.Fatal(err)
			}
			for _, m := range postgresSchema[:3] {
				if _, err := old.ExecContext(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
		} else {
			for _, m := range migrations[:9] {
				if _, err := old.ExecContext(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := old.ExecContext(ctx, `PRAGMA user_version = 9`); err != nil {
				t.Fatal(err)
			}
		}
		now := time.Now().UTC().Truncate(time.Second)
		type row struct {
			title       string
			start, end  time.Time
			preview     sql.NullInt64
			recurrence  sql.NullString
			priority    int
			labels      string
			state       string
			playersRead bool // by GET /events/{id}
		}
		rows := []row{
			{title: "active", start: now.Add(-time.Hour), end: now.Add(time.Hour), state: "PUBLISHED", playersRead: true},
			{title: "previewed", start: now.Add(time.Hour), end: now.Add(2 * time.Hour), preview: sql.NullInt64{Int64: now.Add(-time.Hour).UnixNano(), Valid: true},
				priority: 5, labels: "pvp,weekend", state: "PUBLISHED", playersRead: true},
			{title: "daily", start: now.Add(-24*time.Hour - 30*time.Minute), end: now.Add(-24*time.Hour + 30*time.Minute),
				recurrence: sql.NullString{String: `{"interval":1,"unit":"DAILY","time_zone":"UTC"}`, Valid: true}, state: "PUBLISHED", playersRead: true},
			{title: "draft", start: now.Add(-time.Hour), end: now.Add(time.Hour), state: "DRAFT"},
			{title: "ended", start: now.Add(-3 * time.Hour), end: now.Add(-2 * time.Hour), state: "PUBLISHED", playersRead: true},
			{title: "later", start: now.Add(time.Hour), end: now.Add(2 * time.Hour), state: "PUBLISHED"},
		}
		ids := map[string]string{}
		for _, r := range rows {
			id := newID()
			ids[r.title] = id
			if _, err := old.ExecContext(ctx, `INSERT INTO events (id, title, description, start_time, end_time, rewards, created_at, updated_at,
				version, preview_time, recurrence, priority, labels, state) VALUES (?, ?, '', ?, ?, '{"gems":1}', ?, ?, 3, ?, ?, ?, ?, ?)`,
				id, r.title, r.start.UnixNano(), r.end.UnixNano(), now.UnixNano(), now.UnixNano(), r.preview, r.recurrence, r.priority, r.labels, r.state); err != nil {
				t.Fatal(err)
			}
		}
		raw.Close()

		ts := startServerWith(t, dsn) // migrates
		st, err := openExistingStore(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for _, r := range rows {
			e, err := getEvent(ctx, st.db, ids[r.title])
			if err != nil {
				t.Fatalf("%s after migration: %v", r.title, err)
			}
			if e.Title != r.title || !e.Start.Equal(r.start) || e.Version != 3 || e.State != r.state ||
				e.Audience != nil || e.RolloutPercent != 100 || e.TimeMode != timeModeUTC || e.Localizations != nil {
				t.Errorf("%s after migration: %+v; want it as stored, for everyone, at 100%%, in UTC, unlocalized", r.title, e)
			}
		}

		// Priority first, then the shown occurrence's start.
		want := []string{"previewed", "active", "daily"}
		code, _, body := ts.get(t, "/events?"+url.Values{"status": {"active,upcoming"}}.Encode(), ts.user)
		var list eventsBody
		if code != 200 || json.Unmarshal(body, &list) != nil {
			t.Fatalf("GET /events = %d %s", code, body)
		}
		var got []string
		for _, e := range list.Events {
			got = append(got, e["title"].(string))
		}
		if !slices.Equal(got, want) {
			t.Errorf("players see %v after migration; want %v", got, want)
		}
		for _, r := range rows {
			code, _, _ := ts.get(t, "/events/"+ids[r.title], ts.user)
			if (code == 200) != r.playersRead {
				t.Errorf("GET /events/{%s} = %d; want it readable: %v", r.title, code, r.playersRead)
			}
		}
	})
}

func TestExportImportKeepsTargeting(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	st, err := openStore(ctx, src, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	plain := mustCreate(t, st, "plain", t0, t0.Add(time.Hour))
	e := targetedEvent()
	if err := e.validate(); err != nil {
		t.Fatal(err)
	}
	if e, _, err = st.CreateEvent(ctx, e, ""); err != nil {
		t.Fatal(err)
	}
	st.Close()

	exported, _, err := cli(t, "export", "-db", src)
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Events []map[string]json.RawMessage }
	if err := json.Unmarshal([]byte(exported), &f); err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Events {
		var id string
		json.Unmarshal(d["id"], &id)
		_, hasAudience := d["audience"]
		_, hasRollout := d["rollout_percent"]
		_, hasMode := d["time_mode"]
		_, hasLocs := d["localizations"]
		// An untargeted event's document is what it was before targeting existed.
		if targeted := id == e.ID; hasAudience != targeted || hasRollout != targeted || hasMode != targeted || hasLocs != targeted {
			t.Errorf("event %s exported as %v; want the targeting fields exactly when set", id, d)
		}
	}
	if !strings.Contains(exported, `"min_version": "1.2"`) || !strings.Contains(exported, `"time_mode": "PLAYER_LOCAL"`) ||
		!strings.Contains(exported, `"pt-BR": {`) {
		t.Errorf("export:\n%s", exported)
	}
	file := filepath.Join(dir, "events.json")
	os.WriteFile(file, []byte(exported), 0o600)

	dst := filepath.Join(dir, "dst.db")
	if out, _, err := cli(t, "import", "-db", dst, file); err != nil || !strings.Contains(out, "2 created") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	if again, _, _ := cli(t, "export", "-db", dst); again != exported {
		t.Fatalf("export -> import -> export changed the file:\n%s\n---\n%s", exported, again)
	}
	st, err = openStore(ctx, dst, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, want := range []Event{plain, e} {
		got, err := getEvent(ctx, st.db, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Audience, want.Audience) || got.RolloutPercent != want.RolloutPercent ||
			got.TimeMode != want.TimeMode || !reflect.DeepEqual(got.Localizations, want.Localizations) {
			t.Errorf("imported %+v; want the targeting of %+v", got, want)
		}
	}

	// A changed targeting field shows in the dry run's diff, defaults spelled out.
	edited := strings.Replace(exported, `"rollout_percent": 25`, `"rollout_percent": 100`, 1)
	os.WriteFile(file, []byte(edited), 0o600)
	if out, _, err := cli(t, "import", "-db", dst, "-dry-run", file); err != nil || !strings.Contains(out, "rollout_percent: 25 -> 100") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
}

func TestImportNamesTargetingProblems(t *testing.T) {
	id := newID()
	doc := func(extra string) []byte {
		return []byte(`{"events": [{"id": "` + id + `", "title": "t", "start_time": "2027-01-01T00:00:00Z",
			"end_time": "2027-01-02T00:00:00Z", "rewards": {}, ` + extra + `}]}`)
	}
	for _, c := range []struct{ extra, want string }{
		{`"audience": {"platforms": ["ios", "dreamcast"]}`, `audience.platforms: unknown platform "dreamcast"`},
		{`"audience": {"platforms": "ios"}`, "audience.platforms: must be an array of strings"},
		{`"audience": {"min_version": "1.x"}`, `audience.min_version:`},
		{`"audience": {"countries": ["ZZ"]}`, `audience.countries: unknown country code "ZZ"`},
		{`"audience": {"exclude": {"languages": ["english"]}}`, `audience.exclude.languages: "english"`},
		{`"audience": {"exclude": {"exclude": {"countries": ["FR"]}}}`, "audience.exclude.exclude: an exclude cannot have an exclude"},
		{`"audience": {"platform": ["ios"]}`, "audience.platform: is not an audience field"},
		{`"rollout_percent": 101`, "rollout_percent: must be between 1 and 100, got 101"},
		{`"rollout_percent": "half"`, "rollout_percent: must be a whole number"},
		{`"time_mode": "LOCAL"`, `time_mode: must be UTC or PLAYER_LOCAL`},
		{`"localizations": {"fr_": {"title": "x"}}`, `localizations: locale "fr_"`},
		{`"localizations": {"fr": {"title": "x", "body": "y"}}`, `localizations["fr"]: must be an object`},
		{`"localizations": {"fr": {"title": "a\u0007b"}}`, `localizations["fr"].title: must not contain control character U+0007`},
	} {
		_, problems := parseImport(doc(c.extra))
		var got []string
		for _, p := range problems {
			got = append(got, p.String())
		}
		if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "event "+id+": "+c.want) }) {
			t.Errorf("%s: problems %q; want one starting %q", c.extra, got, "event "+id+": "+c.want)
		}
	}
}
