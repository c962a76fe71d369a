package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

func TestARevisionPerWrite(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	created, err := ts.events.CreateEvent(admin, createReq("v1", t0, t0.Add(time.Hour), `{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetEvent().GetId()
	c.set(t0.Add(time.Minute))
	if _, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: id, Title: "v2",
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}}); err != nil {
		t.Fatal(err)
	}
	// Failed writes leave no revision.
	if _, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: id, Title: "stale", Etag: "v1",
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}}); status.Code(err) != codes.Aborted {
		t.Fatalf("stale update: %v", err)
	}
	if _, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: id, Title: "",
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invalid update: %v", err)
	}
	c.set(t0.Add(2 * time.Minute))
	if _, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: id}); err != nil {
		t.Fatal(err)
	}

	revs, err := ts.events.ListEventRevisions(admin, &eventspb.ListEventRevisionsRequest{EventId: id})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range revs.GetRevisions() {
		got = append(got, r.GetAction()+":"+r.GetEvent().GetTitle())
		if r.GetKeyId() == "" || r.GetEventId() != id {
			t.Errorf("revision %d lacks the key id or event id: %v", r.GetRevision(), r)
		}
	}
	// Newest first; the delete records the event as it stood before.
	if strings.Join(got, ",") != "delete:v2,update:v2,create:v1" || revs.GetRevisions()[0].GetRevision() != 3 {
		t.Fatalf("revisions = %v; want delete, update, create numbered 3, 2, 1", got)
	}
	if at := revs.GetRevisions()[1].GetTime().AsTime(); !at.Equal(t0.Add(time.Minute)) {
		t.Fatalf("update revision at %v; want %v", at, t0.Add(time.Minute))
	}
	if r := revs.GetRevisions()[2].GetEvent(); r.GetRewards() != `{"a":1}` || r.GetEtag() != "v1" {
		t.Fatalf("create revision holds %v; want the full event", r)
	}
}

func TestRevisionIsInTheWritesTransaction(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		e := mustCreate(t, st, "kept", t0, t0.Add(time.Hour))
		// With nowhere to record revisions, no write may happen at all.
		if _, err := st.db.ExecContext(ctx, `DROP TABLE event_revisions`); err != nil {
			t.Fatal(err)
		}
		f := Event{ID: newID(), Title: "lost", Start: t0, End: t0.Add(time.Hour), Rewards: "{}", State: statePublished, CreatedAt: t0, UpdatedAt: t0}
		if _, _, err := st.CreateEvent(ctx, f, ""); err == nil {
			t.Fatal("create succeeded without its revision")
		}
		if _, _, err := st.UpdateEvent(ctx, e.ID, "", func(u *Event) error { u.Title = "changed"; return nil }); err == nil {
			t.Fatal("update succeeded without its revision")
		}
		if _, err := st.DeleteEvent(ctx, e.ID, ""); err == nil {
			t.Fatal("delete succeeded without its revision")
		}
		events, _, _ := st.Events(ctx)
		if len(events) != 1 || events[0].Title != "kept" {
			t.Fatalf("events after failed writes: %+v; want only the first, unchanged", events)
		}
	})
}

func TestRestoreAndUndelete(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	created, err := ts.events.CreateEvent(admin, createReq("original", t0.Add(-time.Hour), t0.Add(time.Hour), `{"gems":5}`))
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetEvent().GetId()
	upd, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: id, Title: "broken", Rewards: `{"gems":5000}`,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title", "rewards"}}})
	if err != nil {
		t.Fatal(err)
	}

	// Restore after update, guarded by the current etag.
	if _, err := ts.events.RestoreEvent(admin, &eventspb.RestoreEventRequest{EventId: id, Revision: 1, Etag: "v1"}); status.Code(err) != codes.Aborted {
		t.Fatalf("restore with a stale etag: %v; want ABORTED", err)
	}
	r, err := ts.events.RestoreEvent(admin, &eventspb.RestoreEventRequest{EventId: id, Revision: 1, Etag: upd.GetEvent().GetEtag()})
	if err != nil {
		t.Fatal(err)
	}
	if e := r.GetEvent(); e.GetTitle() != "original" || e.GetRewards() != `{"gems":5}` || e.GetEtag() != "v3" {
		t.Fatalf("restored = %v; want revision 1's fields with a new etag", e)
	}
	if _, _, body := ts.get(t, "/events/"+id, ts.user); !strings.Contains(string(body), `"title":"original"`) {
		t.Fatalf("players after restore: %s", body)
	}

	// Undelete: the event comes back under its old id.
	if _, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := ts.get(t, "/events/"+id, ts.user); code != 404 {
		t.Fatalf("after delete: %d", code)
	}
	if _, err := ts.events.RestoreEvent(admin, &eventspb.RestoreEventRequest{EventId: id, Revision: 3, Etag: "v3"}); status.Code(err) != codes.Aborted {
		t.Fatalf("undelete with an etag (a deleted event has none): %v; want ABORTED", err)
	}
	back, err := ts.events.RestoreEvent(admin, &eventspb.RestoreEventRequest{EventId: id, Revision: 3})
	if err != nil {
		t.Fatal(err)
	}
	if back.GetEvent().GetId() != id || back.GetEvent().GetEtag() != "v4" || back.GetEvent().GetTitle() != "original" {
		t.Fatalf("undeleted = %v", back.GetEvent())
	}
	if code, _, _ := ts.get(t, "/events/"+id, ts.user); code != 200 {
		t.Fatalf("players after undelete: %d", code)
	}
	revs, _ := ts.events.ListEventRevisions(admin, &eventspb.ListEventRevisionsRequest{EventId: id})
	if n := len(revs.GetRevisions()); n != 5 || revs.GetRevisions()[0].GetAction() != "restore" {
		t.Fatalf("%d revisions, newest %q; want 5, the newest a restore", n, revs.GetRevisions()[0].GetAction())
	}
	if _, err := ts.events.RestoreEvent(admin, &eventspb.RestoreEventRequest{EventId: id, Revision: 99}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown revision: %v; want NOT_FOUND", err)
	}
}

func TestAuditLog(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	for i := range 5 {
		c.set(t0.Add(time.Duration(i) * time.Minute))
		if _, err := ts.events.CreateEvent(admin, createReq("e", t0, t0.Add(time.Hour), "")); err != nil {
			t.Fatal(err)
		}
	}
	var all []*eventspb.Revision
	req := &eventspb.ListAuditLogRequest{PageSize: 2}
	for {
		resp, err := ts.events.ListAuditLog(admin, req)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, resp.GetRevisions()...)
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if len(all) != 5 || !all[0].GetTime().AsTime().Equal(t0.Add(4*time.Minute)) || !all[4].GetTime().AsTime().Equal(t0) {
		t.Fatalf("audit log: %d entries, newest %v; want 5, newest first", len(all), all[0].GetTime().AsTime())
	}
	since, _ := ts.events.ListAuditLog(admin, &eventspb.ListAuditLogRequest{Since: timestampOf(t0.Add(3 * time.Minute))})
	if len(since.GetRevisions()) != 2 {
		t.Fatalf("since t0+3m: %d entries; want 2", len(since.GetRevisions()))
	}
	keyID := all[0].GetKeyId()
	byKey, _ := ts.events.ListAuditLog(admin, &eventspb.ListAuditLogRequest{KeyId: keyID})
	none, _ := ts.events.ListAuditLog(admin, &eventspb.ListAuditLogRequest{KeyId: "import"})
	if len(byKey.GetRevisions()) != 5 || len(none.GetRevisions()) != 0 {
		t.Fatalf("by key: %d and %d entries; want 5 and 0", len(byKey.GetRevisions()), len(none.GetRevisions()))
	}
}

// cli runs a liveops subcommand in process and returns its stdout and stderr.
func cli(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), append([]string{"liveops"}, args...), func(string) string { return "" }, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func TestExportImportRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	st, err := openStore(ctx, src, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	e := mustCreate(t, st, "plain", t0, t0.Add(time.Hour))
	rich := Event{ID: newID(), Title: "rich <&>", Description: "two\nlines", Start: t0, End: t0.Add(2 * time.Hour),
		Rewards: `{"z":1,"a":[true,null]}`, Preview: t0.Add(-time.Hour), Priority: -3, Labels: []string{"shop", "pvp"}, State: stateDraft,
		Recurrence: Recurrence{Interval: 2, Unit: unitWeekly, TimeZone: "Europe/Paris", Until: t0.Add(30 * 24 * time.Hour)},
		CreatedAt:  t0, UpdatedAt: t0}
	if err := rich.validate(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.CreateEvent(ctx, rich, ""); err != nil {
		t.Fatal(err)
	}
	st.Close()

	first, _, err := cli(t, "export", "-db", src)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(first, e.ID) || strings.Contains(first, "created_at") || strings.Contains(first, `"version"`) {
		t.Fatalf("export:\n%s", first)
	}
	file := filepath.Join(dir, "events.json")
	os.WriteFile(file, []byte(first), 0o600)

	dst := filepath.Join(dir, "dst.db")
	out, _, err := cli(t, "import", "-db", dst, file)
	if err != nil || !strings.Contains(out, "2 created, 0 updated, 0 unchanged") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	second, _, err := cli(t, "export", "-db", dst)
	if err != nil {
		t.Fatal(err)
	}
	if second != first {
		t.Fatalf("export -> import -> export changed the file:\n%s\n---\n%s", first, second)
	}

	// Importing the same file again changes nothing and records nothing.
	out, _, _ = cli(t, "import", "-db", dst, file)
	if !strings.Contains(out, "0 created, 0 updated, 2 unchanged") {
		t.Fatalf("second import: %s", out)
	}
	st, _ = openStore(ctx, dst, time.Now)
	defer st.Close()
	revs, _ := st.AuditLog(ctx, time.Time{}, "import", nil, 100)
	if len(revs) != 2 {
		t.Fatalf("%d revisions by import; want 2 (the creates)", len(revs))
	}
}

func TestImportDryRunAndValidation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := filepath.Join(dir, "liveops.db")
	st, _ := openStore(ctx, db, time.Now)
	e := mustCreate(t, st, "before", t0, t0.Add(time.Hour))
	st.Close()
	exported, _, _ := cli(t, "export", "-db", db)

	edited := strings.Replace(exported, `"title": "before"`, `"title": "after"`, 1)
	addedID := newID()
	edited = strings.Replace(edited, `"events": [`, `"events": [
    {"id": "`+addedID+`", "title": "brand new", "description": "", "start_time": "2027-01-01T00:00:00Z",
     "end_time": "2027-01-02T00:00:00Z", "priority": 0, "labels": [], "state": "PUBLISHED", "rewards": {}},`, 1)
	file := filepath.Join(dir, "edited.json")
	os.WriteFile(file, []byte(edited), 0o600)

	out, _, err := cli(t, "import", "-db", db, "-dry-run", file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "create    "+addedID) || !strings.Contains(out, `title: "before" -> "after"`) ||
		!strings.Contains(out, "1 created, 1 updated, 0 unchanged") || !strings.Contains(out, "dry run") {
		t.Fatalf("dry run output:\n%s", out)
	}
	if after, _, _ := cli(t, "export", "-db", db); after != exported {
		t.Fatal("a dry run changed the database")
	}
	fresh := filepath.Join(dir, "not-yet.db")
	if out, _, err := cli(t, "import", "-db", fresh, "-dry-run", file); err != nil || !strings.Contains(out, "2 created") {
		t.Fatalf("dry run against a new database: %v\n%s", err, out)
	}
	if _, err := os.Stat(fresh); err == nil {
		t.Fatal("a dry run created the database file")
	}

	// A file with bad events imports nothing and names every problem.
	good, noTitle, badLabel := newID(), newID(), newID()
	doc := func(id, title, labels string) string {
		return `{"id": "` + id + `", "title": "` + title + `", "description": "", "start_time": "2027-01-01T00:00:00Z",
			"end_time": "2027-01-02T00:00:00Z", "priority": 0, "labels": ` + labels + `, "state": "PUBLISHED", "rewards": {}}`
	}
	badFile := filepath.Join(dir, "bad.json")
	os.WriteFile(badFile, []byte(`{"events": [`+doc(good, "fine", `[]`)+`, `+doc(noTitle, "", `[]`)+`, `+doc(badLabel, "x", `["Not OK"]`)+`]}`), 0o600)
	_, stderr, err := cli(t, "import", "-db", db, badFile)
	if err == nil || !strings.Contains(err.Error(), "2 problem(s)") || !strings.Contains(err.Error(), "nothing was imported") {
		t.Fatalf("bad import: %v", err)
	}
	if !strings.Contains(stderr, "event "+noTitle+": title: is required") || !strings.Contains(stderr, "event "+badLabel+": labels:") {
		t.Fatalf("problems listed:\n%s\nwant the title and the label, each with its event id", stderr)
	}
	if after, _, _ := cli(t, "export", "-db", db); after != exported || strings.Contains(after, good) {
		t.Fatal("a rejected import changed the database")
	}
	_ = e.ID
}

func timestampOf(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func TestFailedRestoreLeavesNoTrace(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		e := mustCreate(t, st, "one", t0, t0.Add(time.Hour))
		if _, _, err := st.RestoreEvent(ctx, e.ID, 1, "v9"); !errors.Is(err, errStale) {
			t.Fatalf("stale restore: %v", err)
		}
		if _, _, err := st.RestoreEvent(ctx, e.ID, 7, ""); !errors.Is(err, errNotFound) {
			t.Fatalf("restore of a missing revision: %v", err)
		}
		revs, _ := st.Revisions(ctx, e.ID, 0, 10)
		got, _ := getEvent(ctx, st.db, e.ID)
		if len(revs) != 1 || got.Version != 1 {
			t.Fatalf("after failed restores: %d revisions, version %d; want 1 and 1", len(revs), got.Version)
		}
	})
}

func TestImportRefusesTrailingData(t *testing.T) {
	_, problems := parseImport([]byte(`{"events": []} {"events": []}`))
	if len(problems) != 1 || !strings.Contains(problems[0].Reason, "more than one") {
		t.Fatalf("problems = %v; want one saying there is more than one JSON value", problems)
	}
}

func TestImportIsAllOrNothing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		st := newTestStoreAt(t, dsn)
		ok := Event{ID: newID(), Title: "fine", Start: t0, End: t0.Add(time.Hour), Rewards: "{}", State: statePublished}
		// The second event gets past validation here (called directly) but breaks the
		// database's CHECK (end_time > start_time) half-way through the transaction.
		broken := Event{ID: newID(), Title: "broken", Start: t0, End: t0, Rewards: "{}", State: statePublished}
		if _, _, err := st.Import(ctx, []Event{ok, broken}, false); err == nil {
			t.Fatal("import with a broken event succeeded")
		}
		if events, _, _ := st.Events(ctx); len(events) != 0 {
			t.Fatalf("%d events after a failed import; want none", len(events))
		}
		if revs, _ := st.AuditLog(ctx, time.Time{}, "", nil, 10); len(revs) != 0 {
			t.Fatalf("%d revisions after a failed import; want none", len(revs))
		}
	})
}

func TestReadOnlyCommandsDoNotMigrate(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	st, err := openStore(ctx, path, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	st.db.ExecContext(ctx, "PRAGMA user_version = 3")
	st.Close()
	for _, args := range [][]string{{"export", "-db", path}, {"keys", "list", "-db", path}} {
		if _, _, err := cli(t, args...); err == nil || !strings.Contains(err.Error(), "schema version 3") {
			t.Errorf("%v on an older schema: %v; want a refusal naming the version", args, err)
		}
	}
	st, _ = openStoreAs(ctx, path, time.Now, false)
	if st != nil {
		st.Close()
	}
	var version int
	db, _ := sql.Open("sqlite", "file:"+path)
	defer db.Close()
	db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version)
	if version != 3 {
		t.Fatalf("user_version = %d after read-only commands; want 3", version)
	}
}

func TestAuditLogRefusesFarSince(t *testing.T) {
	ts := startClockedServer(t, newClock(t0))
	_, err := ts.events.ListAuditLog(withKey(ts.admin), &eventspb.ListAuditLogRequest{Since: timestampOf(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC))})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("since 9999: %v; want INVALID_ARGUMENT", err)
	}
}

func TestCommandsOnPostgreSQL(t *testing.T) {
	src, dst := testDSN(t, "postgres"), testDSN(t, "postgres")
	st := newTestStoreAt(t, src)
	mustCreate(t, st, "moved between databases", t0, t0.Add(time.Hour))
	exported, _, err := cli(t, "export", "-db", src)
	if err != nil || !strings.Contains(exported, "moved between databases") {
		t.Fatalf("export: %v\n%s", err, exported)
	}
	file := filepath.Join(t.TempDir(), "events.json")
	os.WriteFile(file, []byte(exported), 0o600)
	if out, stderr, err := cli(t, "import", "-db", dst, file); err != nil || !strings.Contains(out, "1 created") || strings.Contains(stderr, "did not exist") {
		t.Fatalf("import into PostgreSQL: %v\n%s%s", err, out, stderr)
	}
	if again, _, _ := cli(t, "export", "-db", dst); again != exported {
		t.Fatalf("export -> import -> export changed the file:\n%s\n---\n%s", exported, again)
	}
	key, _, err := cli(t, "keys", "create", "-role", "http_user", "-name", "pg", "-db", dst)
	if err != nil || !checkKeyFormat(strings.TrimSpace(key)) {
		t.Fatalf("keys create: %q, %v", key, err)
	}
	if list, _, err := cli(t, "keys", "list", "-db", dst); err != nil || !strings.Contains(list, "pg") {
		t.Fatalf("keys list: %v\n%s", err, list)
	}
	if _, _, err := cli(t, "backup", "-db", dst, filepath.Join(t.TempDir(), "b.db")); err == nil || !strings.Contains(err.Error(), "pg_dump") {
		t.Fatalf("backup of PostgreSQL: %v; want a pointer to pg_dump", err)
	}
}
