package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// Tests for what new users and client developers ran into: each names the behaviour it
// holds the server to.

func TestImportReportsEveryProblemOfEveryEvent(t *testing.T) {
	a, b := newID(), newID()
	file := `{"events": [
		{"id": "` + a + `", "title": "", "start_time": "next tuesday", "end_time": "2027-01-02T00:00:00Z",
		 "labels": ["Not OK"], "state": "ARCHIVED", "rewards": {}},
		{"id": "` + b + `", "title": "fine", "start_time": "2027-01-01T00:00:00Z", "end_time": "2027-01-02T00:00:00Z",
		 "priority": "high", "rewards": {}, "colour": "red"}
	]}`
	events, problems := parseImport([]byte(file))
	var got []string
	for _, p := range problems {
		got = append(got, p.String())
	}
	want := []string{
		"event " + a + ": labels: label \"Not OK\" must be lowercase letters, digits, '-' and '_', starting with a letter or digit",
		"event " + a + ": start_time: must be an RFC 3339 time such as 2027-01-01T20:00:00Z, got \"next tuesday\"",
		"event " + a + ": state: must be PUBLISHED or DRAFT (or EVENT_STATE_PUBLISHED, EVENT_STATE_DRAFT), got \"ARCHIVED\"",
		"event " + a + ": title: is required",
		"event " + b + ": colour: is not an event field",
		"event " + b + ": priority: must be a whole number",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(events) != 0 {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, p := range got {
		if strings.Contains(p, "parsing time") || strings.Contains(p, "2006-01-02") {
			t.Errorf("a Go parse error leaked: %s", p)
		}
	}
}

func TestImportTakesBothStateSpellings(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "liveops.db")
	a, b := newID(), newID()
	doc := func(id, state string) string {
		return `{"id": "` + id + `", "title": "t", "start_time": "2027-01-01T00:00:00Z", "end_time": "2027-01-02T00:00:00Z", "state": "` + state + `"}`
	}
	file := filepath.Join(dir, "events.json")
	os.WriteFile(file, []byte(`{"events": [`+doc(a, "EVENT_STATE_DRAFT")+`, `+doc(b, "DRAFT")+`]}`), 0o600)
	if out, stderr, err := cli(t, "import", "-db", db, file); err != nil {
		t.Fatalf("import: %v\n%s%s", err, out, stderr)
	}
	exported, _, _ := cli(t, "export", "-db", db)
	if strings.Count(exported, `"state": "DRAFT"`) != 2 {
		t.Fatalf("export after importing both spellings:\n%s", exported)
	}
}

func TestUnknownQueryParametersAreRefused(t *testing.T) {
	ts := startServer(t)
	for _, path := range []string{
		"/events?stauts=upcoming",
		"/events?status=upcoming&labels=shop",
		"/events/" + newID() + "?status=active",
		"/healthz?verbose=1",
	} {
		code, _, body := ts.get(t, path, ts.user)
		var e errorBody
		json.Unmarshal(body, &e)
		name := path[strings.LastIndexAny(path, "?&")+1 : strings.LastIndexByte(path, '=')]
		if code != 400 || len(e.Error.Fields) != 1 || e.Error.Fields[0].Field != name {
			t.Errorf("GET %s: %d %s; want 400 naming %q", path, code, body, name)
		}
	}
	if code, _, _ := ts.get(t, "/events?status=upcoming&label=shop", ts.user); code != 200 {
		t.Errorf("known parameters: %d; want 200", code)
	}
	// Every unknown parameter is named, in order.
	_, _, body := ts.get(t, "/events?zeta=1&alpha=2&status=active", ts.user)
	var e errorBody
	json.Unmarshal(body, &e)
	if len(e.Error.Fields) != 2 || e.Error.Fields[0].Field != "alpha" || e.Error.Fields[1].Field != "zeta" {
		t.Errorf("two unknown parameters: %s; want both named, alpha first", body)
	}
}

func TestEventByIDTakesAt(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c, "-allow-time-travel")
	created, err := ts.events.CreateEvent(withKey(ts.admin), createReq("tomorrow", t0.Add(24*time.Hour), t0.Add(25*time.Hour), ""))
	if err != nil {
		t.Fatal(err)
	}
	path := "/events/" + created.GetEvent().GetId()
	if code, _, _ := ts.get(t, path, ts.user); code != 404 {
		t.Fatalf("GET %s before it starts: %d; want 404", path, code)
	}
	// Tomorrow at 01:30 in +01:00, with the '+' unescaped, as a hand-typed URL sends it.
	for _, at := range []string{"2026-03-02T13:30:00%2B01:00", "2026-03-02T13:30:00+01:00", "2026-03-02T12:30:00Z"} {
		code, _, body := ts.get(t, path+"?at="+at, ts.user)
		if code != 200 || !strings.Contains(string(body), `"status":"active"`) || !strings.Contains(string(body), `"server_time":"2026-03-02T12:30:00Z"`) {
			t.Errorf("GET %s?at=%s: %d %s; want it active at that instant", path, at, code, body)
		}
	}
	code, _, body := ts.get(t, path+"?at=tomorrow", ts.user)
	if code != 400 || !strings.Contains(string(body), "RFC 3339") {
		t.Errorf("?at=tomorrow: %d %s; want 400 saying what a time looks like", code, body)
	}
}

func TestGRPCAnswersSayWhenTheyAreFor(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c, "-allow-time-travel")
	admin := withKey(ts.admin)
	created, err := ts.events.CreateEvent(admin, createReq("e", t0.Add(time.Hour), t0.Add(2*time.Hour), ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := created.GetServerTime().AsTime(); !got.Equal(t0) {
		t.Errorf("CreateEvent server_time = %v; want %v", got, t0)
	}
	c.set(t0.Add(90 * time.Minute))
	got, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: created.GetEvent().GetId()})
	if err != nil || !got.GetServerTime().AsTime().Equal(t0.Add(90*time.Minute)) || got.GetEvent().GetStatus() != eventspb.EventStatus_EVENT_STATUS_ACTIVE {
		t.Errorf("GetEvent = %v, %v; want server_time %v and ACTIVE", got, err, t0.Add(90*time.Minute))
	}
	// The default first page is encoded once and shared; it says when it is for too.
	list, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{})
	if err != nil || !list.GetServerTime().AsTime().Equal(t0.Add(90*time.Minute)) || len(list.GetEvents()) != 1 {
		t.Errorf("ListEvents = %v, %v; want server_time %v", list.GetServerTime(), err, t0.Add(90*time.Minute))
	}
	at := t0.Add(5 * time.Hour)
	list, err = ts.events.ListEvents(admin, &eventspb.ListEventsRequest{At: timestamppb.New(at)})
	if err != nil || !list.GetServerTime().AsTime().Equal(at) || list.GetEvents()[0].GetStatus() != eventspb.EventStatus_EVENT_STATUS_ENDED {
		t.Errorf("ListEvents(at) = %v, %v; want server_time %v and ENDED", list, err, at)
	}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	created, err := ts.events.CreateEvent(admin, createReq("gone", t0, t0.Add(time.Hour), ""))
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetEvent().GetId()
	if _, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"GetEvent":    func() error { _, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: id}); return err },
		"DeleteEvent": func() error { _, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: id}); return err },
		"UpdateEvent": func() error {
			_, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: id, Title: "x", StartTime: timestamppb.New(t0), EndTime: timestamppb.New(t0.Add(time.Hour))})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), "RestoreEvent") {
			t.Errorf("%s of a deleted event: %v; want NOT_FOUND pointing to RestoreEvent", name, err)
		}
	}
	if _, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: newID()}); status.Code(err) != codes.NotFound ||
		strings.Contains(status.Convert(err).Message(), "RestoreEvent") {
		t.Errorf("GetEvent of an id never used: %v; want NOT_FOUND without a restore hint", err)
	}

	// Every problem of a request is reported, each as a field violation, and invalid
	// rewards say where the JSON goes wrong.
	req := createReq("", t0, t0.Add(-time.Hour), "{\n  \"gems\": 5,\n  \"items\": [}\n}")
	_, err = ts.events.CreateEvent(admin, req)
	st := status.Convert(err)
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if st.Code() != codes.InvalidArgument || strings.Join(fields, ",") != "title,end_time,rewards" || !strings.Contains(st.Message(), "line 3, column 13") {
		t.Fatalf("invalid create: %v, fields %v; want INVALID_ARGUMENT naming title, end_time and rewards, with rewards' line and column", err, fields)
	}
	// A time out of range is reported with the rest, not instead of it.
	req = createReq("", t0, time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), "")
	_, err = ts.events.CreateEvent(admin, req)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "end_time: must be between 2000 and 2200") || !strings.Contains(msg, "title: is required") {
		t.Fatalf("create with a far end and no title: %v; want both problems", err)
	}
}

func TestAuditLogNamesTheKey(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	if _, err := ts.events.CreateEvent(admin, createReq("e", t0, t0.Add(time.Hour), "")); err != nil {
		t.Fatal(err)
	}
	log, err := ts.events.ListAuditLog(admin, &eventspb.ListAuditLogRequest{})
	if err != nil || len(log.GetRevisions()) != 1 {
		t.Fatal(log, err)
	}
	if r := log.GetRevisions()[0]; r.GetKeyName() != "test" || r.GetKeyId() == "" {
		t.Fatalf("audit entry names key %q (%q); want the key's name, test", r.GetKeyName(), r.GetKeyId())
	}
}

func TestRefusalsAreLoggedWithTheirReason(t *testing.T) {
	ts := startServer(t)
	ts.get(t, "/events?stauts=upcoming", ts.user)
	ts.get(t, "/events", "lo_user_guess")
	ts.events.GetEvent(withKey(ts.admin), &eventspb.GetEventRequest{Id: "nope"})
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	logs := ts.logs.String()
	for _, want := range []string{
		`"status":400,"duration_ms":`, `"error":"stauts: unknown query parameter`,
		`"status":401,`, `"error":"invalid API key"`,
		`"code":"InvalidArgument"`, `"error":"id: must be a lowercase UUID`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}
