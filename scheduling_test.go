package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// startClockedServer serves on 127.0.0.1:0 through serve, as run does, but with every
// clock in the server reading c.
func startClockedServer(t *testing.T, c *clock, args ...string) *testServer {
	t.Helper()
	db := filepath.Join(t.TempDir(), "liveops.db")
	st, err := openStore(context.Background(), db, c.now)
	if err != nil {
		t.Fatal(err)
	}
	user, _ := createTestKey(t, st, roleHTTPUser)
	admin, _ := createTestKey(t, st, roleGRPCAdmin)
	cfg, err := parseConfig(args, func(string) string { return "" }, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logSink{addrc: make(chan string, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, st, c.now, newLogger("json", logs), ln) }()

	ts := &testServer{addr: ln.Addr().String(), db: db, user: user, admin: admin, logs: logs}
	var once sync.Once
	var serveErr error
	ts.stop = func() error {
		once.Do(func() { cancel(); serveErr = <-done; st.Close() })
		return serveErr
	}
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	ts.dial(t)
	return ts
}

// playerList is a GET /events answer.
type playerList struct {
	ServerTime string `json:"server_time"`
	Events     []struct {
		ID          string
		Title       string
		Status      string
		StartTime   time.Time  `json:"start_time"`
		EndTime     time.Time  `json:"end_time"`
		PreviewTime *time.Time `json:"preview_time"`
		Occurrence  *int
		Priority    int32
		Labels      []string
	}
}

func (ts *testServer) list(t *testing.T, query string) (int, playerList) {
	t.Helper()
	code, _, body := ts.get(t, "/events"+query, ts.user)
	var l playerList
	if code == 200 {
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatalf("GET /events%s: %v\n%s", query, err, body)
		}
	}
	return code, l
}

func (l playerList) titles() string {
	var out []string
	for _, e := range l.Events {
		out = append(out, e.Title)
	}
	return strings.Join(out, ",")
}

func TestStatusServerTimeAndPreviews(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	create := func(r *eventspb.CreateEventRequest) string {
		t.Helper()
		resp, err := ts.events.CreateEvent(admin, r)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetEvent().GetId()
	}
	create(createReq("live", t0.Add(-time.Hour), t0.Add(time.Hour), ""))
	previewed := createReq("coming soon", t0.Add(2*time.Hour), t0.Add(3*time.Hour), "")
	previewed.PreviewTime = timestamppb.New(t0.Add(-time.Minute))
	previewedID := create(previewed)
	hiddenID := create(createReq("surprise", t0.Add(2*time.Hour), t0.Add(3*time.Hour), ""))
	draft := createReq("draft", t0.Add(-time.Hour), t0.Add(time.Hour), "")
	draft.State = eventspb.EventState_EVENT_STATE_DRAFT
	draftID := create(draft)
	endedID := create(createReq("ended", t0.Add(-3*time.Hour), t0.Add(-2*time.Hour), ""))

	code, l := ts.list(t, "")
	if code != 200 || l.titles() != "live" || l.ServerTime != t0.Format(time.RFC3339) || l.Events[0].Status != "active" {
		t.Fatalf("GET /events = %d %+v; want only live, active, with server_time %s", code, l, t0.Format(time.RFC3339))
	}
	_, l = ts.list(t, "?status=active,upcoming")
	if l.titles() != "live,coming soon" || l.Events[1].Status != "upcoming" || l.Events[1].PreviewTime == nil {
		t.Fatalf("?status=active,upcoming = %+v; want live and the previewed event (upcoming), not the unpreviewed one", l)
	}
	if _, l = ts.list(t, "?status=active&status=upcoming"); l.titles() != "live,coming soon" {
		t.Fatalf("?status=active&status=upcoming = %q", l.titles())
	}
	if code, _, body := ts.get(t, "/events?status=ended", ts.user); code != 400 || !strings.Contains(string(body), "/events/{id}") {
		t.Fatalf("?status=ended: %d %s; want 400 pointing at GET /events/{id}", code, body)
	}
	if code, _, body := ts.get(t, "/events?status=soon", ts.user); code != 400 || !strings.Contains(string(body), "status") {
		t.Fatalf("unknown status: %d %s; want 400 naming status", code, body)
	}

	item := func(id string) (int, map[string]any) {
		code, _, body := ts.get(t, "/events/"+id, ts.user)
		var m map[string]any
		json.Unmarshal(body, &m)
		return code, m
	}
	if code, m := item(previewedID); code != 200 || m["status"] != "upcoming" || m["server_time"] != t0.Format(time.RFC3339) {
		t.Fatalf("previewed event: %d %v", code, m)
	}
	if code, m := item(endedID); code != 200 || m["status"] != "ended" {
		t.Fatalf("ended event: %d %v", code, m)
	}
	for name, id := range map[string]string{"not yet previewed": hiddenID, "draft": draftID} {
		if code, _ := item(id); code != 404 {
			t.Errorf("%s event: %d; want 404", name, code)
		}
	}

	// The admin sees statuses too, and next_start_time.
	got, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: hiddenID})
	if err != nil || got.GetEvent().GetStatus() != eventspb.EventStatus_EVENT_STATUS_UPCOMING ||
		!got.GetEvent().GetNextStartTime().AsTime().Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("GetEvent(hidden) = %v, %v", got, err)
	}

	// Time passes: the hidden one starts, players see it without any write.
	c.set(t0.Add(2 * time.Hour))
	if _, l = ts.list(t, ""); l.titles() != "coming soon,surprise" && l.titles() != "surprise,coming soon" {
		t.Fatalf("two hours later: %q; want coming soon and surprise (same priority and start: by id)", l.titles())
	}
}

func TestPriorityAndLabels(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	for _, e := range []struct {
		title    string
		priority int32
		start    time.Duration
		labels   []string
	}{
		{"early", 0, -3 * time.Hour, []string{"pvp"}},
		{"late", 0, -time.Hour, []string{"shop"}},
		{"featured", 10, -time.Minute, []string{"shop", "halloween"}},
		{"buried", -5, -4 * time.Hour, nil},
	} {
		r := createReq(e.title, t0.Add(e.start), t0.Add(time.Hour), "")
		r.Priority, r.Labels = e.priority, e.labels
		if _, err := ts.events.CreateEvent(admin, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, l := ts.list(t, ""); l.titles() != "featured,early,late,buried" {
		t.Fatalf("order = %q; want priority first, then start", l.titles())
	}
	if _, l := ts.list(t, "?label=shop&label=pvp"); l.titles() != "featured,early,late" {
		t.Fatalf("?label=shop&label=pvp = %q; want any of them", l.titles())
	}
	if code, _, _ := ts.get(t, "/events?label=Shop", ts.user); code != 400 {
		t.Fatalf("an invalid label filter: %d; want 400", code)
	}
	resp, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{Labels: []string{"halloween"}})
	if err != nil || len(resp.GetEvents()) != 1 || resp.GetEvents()[0].GetTitle() != "featured" {
		t.Fatalf("ListEvents(labels=halloween) = %v, %v", resp, err)
	}
	all, _ := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{})
	var order []string
	for _, e := range all.GetEvents() {
		order = append(order, e.GetTitle())
	}
	if strings.Join(order, ",") != "featured,early,late,buried" {
		t.Fatalf("ListEvents order = %v", order)
	}
}

func TestValidateOnlyStoresNothing(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	r := createReq("dry run", t0, t0.Add(time.Hour), `{"a":1}`)
	r.ValidateOnly = true
	resp, err := ts.events.CreateEvent(admin, r)
	if err != nil || resp.GetEvent().GetTitle() != "dry run" || resp.GetEvent().GetId() != "" {
		t.Fatalf("validate_only create = %v, %v; want the event back, with no id", resp, err)
	}
	bad := createReq("", t0, t0.Add(time.Hour), "")
	bad.ValidateOnly = true
	if _, err := ts.events.CreateEvent(admin, bad); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("validate_only of an invalid create: %v", err)
	}
	if list, _ := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{}); len(list.GetEvents()) != 0 {
		t.Fatalf("validate_only stored %d events", len(list.GetEvents()))
	}

	real, err := ts.events.CreateEvent(admin, createReq("real", t0, t0.Add(time.Hour), ""))
	if err != nil {
		t.Fatal(err)
	}
	id := real.GetEvent().GetId()
	upd, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: id, Title: "renamed", ValidateOnly: true,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}})
	if err != nil || upd.GetEvent().GetTitle() != "renamed" {
		t.Fatalf("validate_only update = %v, %v", upd, err)
	}
	got, _ := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: id})
	if got.GetEvent().GetTitle() != "real" || got.GetEvent().GetEtag() != real.GetEvent().GetEtag() {
		t.Fatalf("validate_only changed the event: %v", got.GetEvent())
	}
	if _, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: id, Etag: "v9", ValidateOnly: true,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}, Title: "x"}); status.Code(err) != codes.Aborted {
		t.Fatalf("validate_only with a stale etag: %v; want ABORTED", err)
	}
}

func TestRecurringEventOverBothAPIs(t *testing.T) {
	// Every Saturday 20:00-22:00 Paris time, from 7 Mar 2026, 5 times, previewed a day ahead.
	// The clocks change on 29 Mar, so the fifth occurrence, 4 Apr, is at 18:00Z where the
	// first four were at 19:00Z.
	first := utc(t, "2026-03-07T19:00:00Z")
	c := newClock(first.Add(-2 * 24 * time.Hour))
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	r := createReq("Saturday Brawl", first, first.Add(2*time.Hour), "")
	r.PreviewTime = timestamppb.New(first.Add(-24 * time.Hour))
	r.Recurrence = &eventspb.Recurrence{Interval: 1, Unit: eventspb.Recurrence_WEEKLY, TimeZone: "Europe/Paris", Count: 5}
	created, err := ts.events.CreateEvent(admin, r)
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetEvent().GetId()
	if rec := created.GetEvent().GetRecurrence(); rec.GetUnit() != eventspb.Recurrence_WEEKLY || rec.GetTimeZone() != "Europe/Paris" || rec.GetCount() != 5 {
		t.Fatalf("recurrence round trip: %v", rec)
	}

	check := func(at, query, wantStatus string, wantOcc int, wantStart string) {
		t.Helper()
		c.set(utc(t, at))
		_, l := ts.list(t, query)
		if len(l.Events) != 1 {
			t.Fatalf("at %s, GET /events%s = %q; want the brawl", at, query, l.titles())
		}
		e := l.Events[0]
		if e.Status != wantStatus || e.Occurrence == nil || *e.Occurrence != wantOcc || !e.StartTime.Equal(utc(t, wantStart)) ||
			!e.EndTime.Equal(utc(t, wantStart).Add(2*time.Hour)) {
			t.Fatalf("at %s: %s occurrence %v %v-%v; want %s occurrence %d from %s", at, e.Status, e.Occurrence, e.StartTime, e.EndTime, wantStatus, wantOcc, wantStart)
		}
	}
	check("2026-03-06T19:00:00Z", "?status=upcoming", "upcoming", 0, "2026-03-07T19:00:00Z")
	check("2026-03-07T20:00:00Z", "", "active", 0, "2026-03-07T19:00:00Z")
	check("2026-03-21T19:30:00Z", "", "active", 2, "2026-03-21T19:00:00Z")
	check("2026-04-03T18:00:00Z", "?status=upcoming", "upcoming", 4, "2026-04-04T18:00:00Z")
	check("2026-04-04T18:30:00Z", "", "active", 4, "2026-04-04T18:00:00Z")
	c.set(utc(t, "2026-04-20T00:00:00Z"))
	if code, _, body := ts.get(t, "/events/"+id, ts.user); code != 200 || !strings.Contains(string(body), `"status":"ended","start_time":"2026-04-04T18:00:00Z"`) {
		t.Fatalf("after the series: %d %s; want ended on its last occurrence", code, body)
	}

	c.set(utc(t, "2026-03-08T00:00:00Z"))
	got, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: id})
	if err != nil || !got.GetEvent().GetNextStartTime().AsTime().Equal(utc(t, "2026-03-14T19:00:00Z")) ||
		!got.GetEvent().GetStartTime().AsTime().Equal(first) || got.GetEvent().GetStatus() != eventspb.EventStatus_EVENT_STATUS_UPCOMING {
		t.Fatalf("admin view between occurrences: %v, %v; want the definition, upcoming, next start 14 Mar 19:00Z", got.GetEvent(), err)
	}
	// Between occurrences, before the next preview, lists leave it out, but it stays readable.
	if _, l := ts.list(t, "?status=active,upcoming"); len(l.Events) != 0 {
		t.Fatalf("between occurrences, before the next preview: %q listed", l.titles())
	}
	if code, _, body := ts.get(t, "/events/"+id, ts.user); code != 200 || !strings.Contains(string(body), `"status":"upcoming","start_time":"2026-03-14T19:00:00Z"`) {
		t.Fatalf("by id between occurrences: %d %s; want the next occurrence, upcoming", code, body)
	}

	bad := createReq("bad zone", first, first.Add(time.Hour), "")
	bad.Recurrence = &eventspb.Recurrence{Interval: 1, Unit: eventspb.Recurrence_DAILY, TimeZone: "Europe/Atlantis"}
	if _, err := ts.events.CreateEvent(admin, bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "time_zone") {
		t.Fatalf("unknown time zone: %v", err)
	}
}

func TestListEventsPagesAndTimeTravel(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	for i := range 25 {
		if _, err := ts.events.CreateEvent(admin, createReq(fmt.Sprint("e", i), t0.Add(time.Duration(i)*time.Hour), t0.Add(time.Duration(i+1)*time.Hour), "")); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	var pages int
	req := &eventspb.ListEventsRequest{PageSize: 10}
	for {
		resp, err := ts.events.ListEvents(admin, req)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range resp.GetEvents() {
			if seen[e.GetId()] {
				t.Fatalf("event %s on two pages", e.GetTitle())
			}
			seen[e.GetId()] = true
		}
		if pages == 1 {
			// An insert that sorts before the cursor must not shift the pages after it.
			if _, err := ts.events.CreateEvent(admin, createReq("inserted early", t0.Add(-time.Hour), t0, "")); err != nil {
				t.Fatal(err)
			}
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if pages != 3 || len(seen) != 25 {
		t.Fatalf("%d pages, %d events; want 3 pages holding the 25 events that were there", pages, len(seen))
	}

	// Time travel: what is active at t0+10h30m?
	at := &eventspb.ListEventsRequest{At: timestamppb.New(t0.Add(10*time.Hour + 30*time.Minute)),
		Status: []eventspb.EventStatus{eventspb.EventStatus_EVENT_STATUS_ACTIVE}}
	resp, err := ts.events.ListEvents(admin, at)
	if err != nil || len(resp.GetEvents()) != 1 || resp.GetEvents()[0].GetTitle() != "e10" {
		t.Fatalf("ListEvents(at=t0+10h30m, active) = %v, %v; want e10", resp, err)
	}

	for name, r := range map[string]*eventspb.ListEventsRequest{
		"page size over 1000":     {PageSize: 1001},
		"malformed token":         {PageToken: "not-a-token"},
		"token for other filters": {PageToken: req.PageToken, Labels: []string{"shop"}},
		"invalid label":           {Labels: []string{"Shop!"}},
	} {
		if _, err := ts.events.ListEvents(admin, r); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v; want INVALID_ARGUMENT", name, err)
		}
	}

	if code, _, body := ts.get(t, "/events?at=2026-03-01T20:00:00Z", ts.user); code != 400 || !strings.Contains(string(body), "allow-time-travel") {
		t.Fatalf("?at= without -allow-time-travel: %d %s; want 400", code, body)
	}
	tt := startClockedServer(t, newClock(t0), "-allow-time-travel")
	tt.events.CreateEvent(withKey(tt.admin), createReq("later", t0.Add(5*time.Hour), t0.Add(6*time.Hour), ""))
	if _, l := tt.list(t, "?at="+t0.Add(5*time.Hour).Format(time.RFC3339)); l.titles() != "later" {
		t.Fatalf("?at= with -allow-time-travel: %q; want later", l.titles())
	}
	if _, l := tt.list(t, ""); l.titles() != "" {
		t.Fatalf("without at: %q; want nothing yet", l.titles())
	}
}

func TestListEventsFiltersAndTies(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	mk := func(title string, start, end time.Duration, state eventspb.EventState) string {
		t.Helper()
		r := createReq(title, t0.Add(start), t0.Add(end), "")
		r.State = state
		resp, err := ts.events.CreateEvent(admin, r)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetEvent().GetId()
	}
	mk("past", -3*time.Hour, -2*time.Hour, 0)
	a := mk("tie a", -time.Hour, time.Hour, 0)
	b := mk("tie b", -time.Hour, time.Hour, 0)
	mk("future draft", time.Hour, 2*time.Hour, eventspb.EventState_EVENT_STATE_DRAFT)

	titles := func(req *eventspb.ListEventsRequest) string {
		t.Helper()
		resp, err := ts.events.ListEvents(admin, req)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range resp.GetEvents() {
			out = append(out, e.GetTitle())
		}
		return strings.Join(out, ",")
	}
	// Same priority, same start: the id decides.
	ties := "tie a,tie b"
	if b < a {
		ties = "tie b,tie a"
	}
	if got := titles(&eventspb.ListEventsRequest{Status: []eventspb.EventStatus{eventspb.EventStatus_EVENT_STATUS_ACTIVE}}); got != ties {
		t.Fatalf("active = %q; want %q (ordered by id)", got, ties)
	}
	if _, l := ts.list(t, ""); l.titles() != ties {
		t.Fatalf("GET /events = %q; want %q (ordered by id)", l.titles(), ties)
	}
	if got := titles(&eventspb.ListEventsRequest{Status: []eventspb.EventStatus{eventspb.EventStatus_EVENT_STATUS_ENDED}}); got != "past" {
		t.Fatalf("ended = %q", got)
	}
	if got := titles(&eventspb.ListEventsRequest{Status: []eventspb.EventStatus{eventspb.EventStatus_EVENT_STATUS_UPCOMING}}); got != "future draft" {
		t.Fatalf("upcoming = %q", got)
	}
	if got := titles(&eventspb.ListEventsRequest{State: eventspb.EventState_EVENT_STATE_DRAFT}); got != "future draft" {
		t.Fatalf("drafts = %q", got)
	}
	if got := titles(&eventspb.ListEventsRequest{State: eventspb.EventState_EVENT_STATE_PUBLISHED}); strings.Contains(got, "draft") {
		t.Fatalf("published = %q", got)
	}

	// The event a token points at is deleted between pages: the next page goes on after it.
	first, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	cursor := first.GetEvents()[1]
	if _, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: cursor.GetId()}); err != nil {
		t.Fatal(err)
	}
	rest, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{PageSize: 2, PageToken: first.GetNextPageToken()})
	if err != nil || len(rest.GetEvents()) != 2 || rest.GetNextPageToken() != "" {
		t.Fatalf("after deleting the cursor event: %v, %v; want the remaining 2 events, last page", rest, err)
	}
	for _, e := range rest.GetEvents() {
		if e.GetId() == first.GetEvents()[0].GetId() {
			t.Fatalf("page 2 repeats %s", e.GetTitle())
		}
	}
}

func TestTimeTravelBoundsAndPast(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c, "-allow-time-travel")
	admin := withKey(ts.admin)
	if _, err := ts.events.CreateEvent(admin, createReq("yesterday", t0.Add(-26*time.Hour), t0.Add(-25*time.Hour), "")); err != nil {
		t.Fatal(err)
	}
	// Asking about the past finds events that have ended since.
	if _, l := ts.list(t, "?at="+t0.Add(-25*time.Hour-30*time.Minute).Format(time.RFC3339)); l.titles() != "yesterday" {
		t.Fatalf("GET /events?at=yesterday = %q; want yesterday", l.titles())
	}
	// Instants outside 2000-2200 are refused, on both protocols: a recurrence asked about
	// the year 9999 must not make the server step through millennia.
	if code, _, body := ts.get(t, "/events?at=2400-01-01T00:00:00Z", ts.user); code != 400 || !strings.Contains(string(body), "at:") {
		t.Fatalf("?at=2400: %d %s; want 400", code, body)
	}
	_, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{At: timestamppb.New(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC))})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ListEvents(at=9999): %v; want INVALID_ARGUMENT", err)
	}
}

func TestUpdateWithoutStateKeepsIt(t *testing.T) {
	c := newClock(t0)
	ts := startClockedServer(t, c)
	admin := withKey(ts.admin)
	r := createReq("secret", t0.Add(-time.Hour), t0.Add(time.Hour), "")
	r.State = eventspb.EventState_EVENT_STATE_DRAFT
	created, err := ts.events.CreateEvent(admin, r)
	if err != nil {
		t.Fatal(err)
	}
	// A full update (no mask) that does not mention the state.
	upd, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: created.GetEvent().GetId(), Title: "still secret",
		StartTime: r.StartTime, EndTime: r.EndTime})
	if err != nil || upd.GetEvent().GetState() != eventspb.EventState_EVENT_STATE_DRAFT {
		t.Fatalf("update without state: %v, %v; want it still a draft", upd.GetEvent().GetState(), err)
	}
	if _, l := ts.list(t, ""); len(l.Events) != 0 {
		t.Fatalf("players see %q", l.titles())
	}
}

func TestAnAnswerIsNotServedPastItsBoundary(t *testing.T) {
	c := newClock(t0.Add(100 * time.Millisecond))
	ts := startClockedServer(t, c)
	if _, err := ts.events.CreateEvent(withKey(ts.admin), createReq("brief", t0.Add(-time.Hour), t0.Add(500*time.Millisecond), "")); err != nil {
		t.Fatal(err)
	}
	if _, l := ts.list(t, ""); l.titles() != "brief" {
		t.Fatalf("at +100ms: %q; want brief", l.titles())
	}
	// The same second, but after the event ended: the cached answer must not be reused.
	c.set(t0.Add(600 * time.Millisecond))
	if _, l := ts.list(t, ""); l.titles() != "" {
		t.Fatalf("at +600ms, after it ended: %q; want nothing", l.titles())
	}
}
