package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// targetedReq is a create that sets every targeting field.
func targetedReq(start time.Time) *eventspb.CreateEventRequest {
	r := createReq("Festival", start, start.Add(2*time.Hour), `{"gems":5}`)
	r.Audience = &eventspb.Audience{Platforms: []string{"ios", "Android"}, MinVersion: "1.4", Countries: []string{"fr", "BE"},
		Languages: []string{"fr"}, Exclude: &eventspb.Audience{Countries: []string{"BE"}, MaxVersion: "1.4.9"}}
	r.RolloutPercent = 30
	r.TimeMode = eventspb.TimeMode_TIME_MODE_PLAYER_LOCAL
	r.Localizations = map[string]*eventspb.Localization{"de": {Title: "Fest", Description: "Für alle"}, "pt-br": {Title: "Festa"}}
	return r
}

func TestCreateRefusesBadTargeting(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	for _, c := range []struct {
		name         string
		change       func(r *eventspb.CreateEventRequest)
		field, value string // the violation's field, and what its message must quote
	}{
		{"unknown platform", func(r *eventspb.CreateEventRequest) { r.Audience.Platforms = []string{"ios", "dreamcast"} },
			"audience.platforms", `"dreamcast"`},
		{"malformed min_version", func(r *eventspb.CreateEventRequest) { r.Audience.MinVersion = "1.x" },
			"audience.min_version", `"1.x"`},
		{"max below min", func(r *eventspb.CreateEventRequest) { r.Audience.MinVersion, r.Audience.MaxVersion = "2.0", "1.5.0" },
			"audience.max_version", "1.5.0"},
		{"unknown country", func(r *eventspb.CreateEventRequest) { r.Audience.Countries = []string{"FR", "ZZ"} },
			"audience.countries", `"ZZ"`},
		{"malformed language", func(r *eventspb.CreateEventRequest) { r.Audience.Languages = []string{"english"} },
			"audience.languages", `"english"`},
		{"bad value in exclude", func(r *eventspb.CreateEventRequest) { r.Audience.Exclude.Platforms = []string{"amiga"} },
			"audience.exclude.platforms", `"amiga"`},
		{"exclude inside exclude", func(r *eventspb.CreateEventRequest) {
			r.Audience.Exclude.Exclude = &eventspb.Audience{Countries: []string{"FR"}}
		}, "audience.exclude.exclude", "exclude"},
		{"rollout above 100", func(r *eventspb.CreateEventRequest) { r.RolloutPercent = 101 }, "rollout_percent", "101"},
		{"negative rollout", func(r *eventspb.CreateEventRequest) { r.RolloutPercent = -1 }, "rollout_percent", "-1"},
		{"unknown time mode", func(r *eventspb.CreateEventRequest) { r.TimeMode = 7 }, "time_mode", "7"},
		{"PLAYER_LOCAL in a zone", func(r *eventspb.CreateEventRequest) {
			r.Recurrence = &eventspb.Recurrence{Interval: 1, Unit: eventspb.Recurrence_DAILY, TimeZone: "Europe/Paris"}
		}, "recurrence.time_zone", `"Europe/Paris"`},
		{"bad locale tag", func(r *eventspb.CreateEventRequest) { r.Localizations["fr_"] = &eventspb.Localization{Title: "x"} },
			"localizations", `"fr_"`},
		{"long localized title", func(r *eventspb.CreateEventRequest) {
			r.Localizations["fr"] = &eventspb.Localization{Title: strings.Repeat("é", 101)}
		}, `localizations["fr"].title`, "got 101"},
		{"control character", func(r *eventspb.CreateEventRequest) {
			r.Localizations["fr"] = &eventspb.Localization{Description: "a\x00b"}
		}, `localizations["fr"].description`, "U+0000"},
		{"empty localization", func(r *eventspb.CreateEventRequest) { r.Localizations["fr"] = &eventspb.Localization{} },
			`localizations["fr"]`, "title or a description"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := targetedReq(start)
			c.change(req)
			for _, validateOnly := range []bool{true, false} {
				req.ValidateOnly = validateOnly
				_, err := ts.events.CreateEvent(admin, req)
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), c.field+": ") || !strings.Contains(st.Message(), c.value) {
					t.Fatalf("CreateEvent = %v; want INVALID_ARGUMENT naming %s and %s", err, c.field, c.value)
				}
				var fields []string
				for _, d := range st.Details() {
					if br, ok := d.(*errdetails.BadRequest); ok {
						for _, v := range br.GetFieldViolations() {
							fields = append(fields, v.GetField())
						}
					}
				}
				if !slices.Contains(fields, c.field) {
					t.Fatalf("field violations %q; want %s", fields, c.field)
				}
			}
		})
	}
	// None of the refused creates stored anything.
	list, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{})
	if err != nil || len(list.GetEvents()) != 0 {
		t.Fatalf("ListEvents after refused creates = %v, %v; want none", list.GetEvents(), err)
	}
}

func TestTargetingRoundTrip(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	start := time.Now().Add(24 * time.Hour).Truncate(time.Hour).UTC()
	created, err := ts.events.CreateEvent(admin, targetedReq(start))
	if err != nil {
		t.Fatal(err)
	}
	e := created.GetEvent()
	wantAudience := &eventspb.Audience{Platforms: []string{"android", "ios"}, MinVersion: "1.4", Countries: []string{"BE", "FR"},
		Languages: []string{"fr"}, Exclude: &eventspb.Audience{Countries: []string{"BE"}, MaxVersion: "1.4.9"}}
	if !proto.Equal(e.GetAudience(), wantAudience) || e.GetRolloutPercent() != 30 || e.GetTimeMode() != eventspb.TimeMode_TIME_MODE_PLAYER_LOCAL ||
		e.GetLocalizations()["pt-BR"].GetTitle() != "Festa" || len(e.GetLocalizations()) != 2 {
		t.Fatalf("created %v; want the targeting normalised", e)
	}
	// A PLAYER_LOCAL event starts first at UTC+14 and ends last at UTC-12.
	if got, want := e.GetFirstStartTime().AsTime(), start.Add(-14*time.Hour); !got.Equal(want) {
		t.Errorf("first_start_time = %v; want %v", got, want)
	}
	if got, want := e.GetLastEndTime().AsTime(), start.Add(2*time.Hour+12*time.Hour); !got.Equal(want) {
		t.Errorf("last_end_time = %v; want %v", got, want)
	}
	got, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: e.GetId()})
	if err != nil || !proto.Equal(got.GetEvent(), e) {
		t.Fatalf("GetEvent = %v, %v; want %v", got.GetEvent(), err, e)
	}

	// A masked update changes only what it names.
	upd, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: e.GetId(), Etag: e.GetEtag(),
		UpdateMask:     &fieldmaskpb.FieldMask{Paths: []string{"rollout_percent", "audience"}},
		RolloutPercent: 100, Audience: &eventspb.Audience{Platforms: []string{"web"}},
		Title: "ignored", TimeMode: eventspb.TimeMode_TIME_MODE_UTC})
	if err != nil {
		t.Fatal(err)
	}
	u := upd.GetEvent()
	if u.GetRolloutPercent() != 100 || !proto.Equal(u.GetAudience(), &eventspb.Audience{Platforms: []string{"web"}}) ||
		u.GetTitle() != "Festival" || u.GetTimeMode() != eventspb.TimeMode_TIME_MODE_PLAYER_LOCAL || len(u.GetLocalizations()) != 2 {
		t.Fatalf("after a masked update: %v", u)
	}
	upd, err = ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{Id: e.GetId(),
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"time_mode", "localizations"}}})
	if err != nil {
		t.Fatal(err)
	}
	if u = upd.GetEvent(); u.GetTimeMode() != eventspb.TimeMode_TIME_MODE_UTC || u.GetLocalizations() != nil ||
		!u.GetFirstStartTime().AsTime().Equal(start) || !u.GetLastEndTime().AsTime().Equal(start.Add(2*time.Hour)) {
		t.Fatalf("after resetting time_mode and localizations: %v", u)
	}
	// An update without a mask replaces the targeting too: unset is the default.
	full := &eventspb.UpdateEventRequest{Id: e.GetId(), Title: "Festival", StartTime: timestamppb.New(start),
		EndTime: timestamppb.New(start.Add(2 * time.Hour)), Recurrence: &eventspb.Recurrence{Interval: 1, Unit: eventspb.Recurrence_WEEKLY}}
	if upd, err = ts.events.UpdateEvent(admin, full); err != nil {
		t.Fatal(err)
	}
	if u = upd.GetEvent(); u.GetAudience() != nil || u.GetRolloutPercent() != 100 || u.GetLastEndTime() != nil {
		t.Fatalf("after a full update: %v; want everyone, 100%%, and no last end for an endless recurrence", u)
	}

	revs, err := ts.events.ListEventRevisions(admin, &eventspb.ListEventRevisionsRequest{EventId: e.GetId()})
	if err != nil || len(revs.GetRevisions()) != 4 {
		t.Fatalf("ListEventRevisions = %d, %v; want 4", len(revs.GetRevisions()), err)
	}
	first := revs.GetRevisions()[3].GetEvent()
	if !proto.Equal(first.GetAudience(), wantAudience) || first.GetRolloutPercent() != 30 || first.GetLocalizations()["de"].GetTitle() != "Fest" {
		t.Fatalf("revision 1 holds %v; want the targeting as created", first)
	}
	second := revs.GetRevisions()[2].GetEvent()
	diff := diffEvents(eventFromProtoForTest(first), eventFromProtoForTest(second))
	if !slices.Equal(diff, []string{`audience: {"platforms":["android","ios"],"min_version":"1.4","countries":["BE","FR"],"languages":["fr"],"exclude":{"max_version":"1.4.9","countries":["BE"]}} -> {"platforms":["web"]}`,
		"rollout_percent: 30 -> 100"}) {
		t.Errorf("revisions 1 -> 2 differ in %q", diff)
	}
}

// eventFromProtoForTest reads the targeting of an admin's event back into an Event.
func eventFromProtoForTest(p *eventspb.Event) Event {
	e, err := eventFromFields(eventFields{title: p.GetTitle(), description: p.GetDescription(), start: p.GetStartTime(),
		end: p.GetEndTime(), rewards: p.GetRewards(), preview: p.GetPreviewTime(), recurrence: p.GetRecurrence(),
		priority: p.GetPriority(), labels: p.GetLabels(), state: p.GetState(), audience: p.GetAudience(),
		rolloutPercent: p.GetRolloutPercent(), timeMode: p.GetTimeMode(), localizations: p.GetLocalizations()})
	if err != nil {
		panic(err)
	}
	e.validate()
	return e
}

func TestListEventsByAudience(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	create := func(title string, a *eventspb.Audience) {
		r := createReq(title, start, start.Add(time.Hour), "")
		r.Audience = a
		if _, err := ts.events.CreateEvent(admin, r); err != nil {
			t.Fatal(err)
		}
	}
	create("everyone", nil)
	create("ios", &eventspb.Audience{Platforms: []string{"ios"}})
	create("ios-fr", &eventspb.Audience{Platforms: []string{"ios", "android"}, Countries: []string{"FR"}})
	create("android", &eventspb.Audience{Platforms: []string{"android"}, Exclude: &eventspb.Audience{Platforms: []string{"ios"}}})
	create("french", &eventspb.Audience{Languages: []string{"fr"}})

	for _, c := range []struct {
		req  *eventspb.ListEventsRequest
		want []string
	}{
		{&eventspb.ListEventsRequest{Platforms: []string{"IOS"}}, []string{"ios", "ios-fr"}},
		{&eventspb.ListEventsRequest{Platforms: []string{"ios", "android"}}, []string{"android", "ios", "ios-fr"}},
		{&eventspb.ListEventsRequest{Platforms: []string{"ios"}, Countries: []string{"fr"}}, []string{"ios-fr"}},
		{&eventspb.ListEventsRequest{Languages: []string{"fr"}}, []string{"french"}},
		{&eventspb.ListEventsRequest{Countries: []string{"DE"}}, nil},
	} {
		resp, err := ts.events.ListEvents(admin, c.req)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range resp.GetEvents() {
			got = append(got, e.GetTitle())
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("ListEvents(%v) = %q; want %q", c.req, got, c.want)
		}
	}

	// Filters are checked like an audience, and named as the request names them.
	_, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{Platforms: []string{"dreamcast"}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), `platforms: unknown platform "dreamcast"`) {
		t.Fatalf("ListEvents with an unknown platform = %v", err)
	}

	// A page token holds to its audience filters.
	page, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{PageSize: 1, Platforms: []string{"ios"}})
	if err != nil || page.GetNextPageToken() == "" {
		t.Fatalf("first page = %v, %v", page, err)
	}
	_, err = ts.events.ListEvents(admin, &eventspb.ListEventsRequest{PageSize: 1, Platforms: []string{"android"}, PageToken: page.GetNextPageToken()})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a token with other audience filters = %v; want INVALID_ARGUMENT", err)
	}
	next, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{PageSize: 1, Platforms: []string{"ios"}, PageToken: page.GetNextPageToken()})
	if err != nil || len(next.GetEvents()) != 1 || next.GetEvents()[0].GetTitle() == page.GetEvents()[0].GetTitle() {
		t.Fatalf("second page = %v, %v", next, err)
	}
}

func TestPreviewPlayerViewAnswers(t *testing.T) {
	// The preview's logic is the read side's, tested there; this checks the call is wired,
	// admin only, and checks its at.
	ts := startServer(t)
	if _, err := ts.events.PreviewPlayerView(withKey(ts.admin), &eventspb.PreviewPlayerViewRequest{Platform: "ios"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.events.PreviewPlayerView(withKey(ts.user), &eventspb.PreviewPlayerViewRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("PreviewPlayerView with a player key = %v; want PERMISSION_DENIED", err)
	}
	_, err := ts.events.PreviewPlayerView(withKey(ts.admin), &eventspb.PreviewPlayerViewRequest{At: &timestamppb.Timestamp{Seconds: -1 << 40}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "at: ") {
		t.Fatalf("PreviewPlayerView with a bad at = %v", err)
	}
}

// TestPreviewPlayerViewSaysWhy creates one event for each reason a player is not shown
// one, over gRPC, and checks that PreviewPlayerView shows what GET /events does for that
// player, byte for byte, and gives each hidden event its reason.
func TestPreviewPlayerViewSaysWhy(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	now := time.Now().Truncate(time.Second)
	create := func(title string, change func(r *eventspb.CreateEventRequest)) string {
		t.Helper()
		r := createReq(title, now.Add(-time.Hour), now.Add(time.Hour), "")
		change(r)
		resp, err := ts.events.CreateEvent(admin, r)
		if err != nil {
			t.Fatalf("%s: %v", title, err)
		}
		return resp.GetEvent().GetId()
	}
	// The player: an ios client in France, version 2.1, reading French, player p-7.
	const player = "p-7"
	rolloutOut := create("rollout", func(r *eventspb.CreateEventRequest) { r.RolloutPercent = 1 })
	for i := 0; ; i++ { // a 1% event this player is out of
		if !inRollout(rolloutOut, player, 1) {
			break
		}
		if i > 20 {
			t.Fatal("player p-7 is in every 1% rollout")
		}
		ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: rolloutOut})
		rolloutOut = create("rollout", func(r *eventspb.CreateEventRequest) { r.RolloutPercent = 1 })
	}
	want := map[string]eventspb.HiddenReason{
		create("android only", func(r *eventspb.CreateEventRequest) { r.Audience = &eventspb.Audience{Platforms: []string{"android"}} }): eventspb.HiddenReason_HIDDEN_REASON_AUDIENCE,
		create("not in France", func(r *eventspb.CreateEventRequest) {
			r.Audience = &eventspb.Audience{Exclude: &eventspb.Audience{Countries: []string{"FR"}}}
		}): eventspb.HiddenReason_HIDDEN_REASON_EXCLUDED,
		rolloutOut: eventspb.HiddenReason_HIDDEN_REASON_ROLLOUT,
		create("draft", func(r *eventspb.CreateEventRequest) { r.State = eventspb.EventState_EVENT_STATE_DRAFT }): eventspb.HiddenReason_HIDDEN_REASON_DRAFT,
		create("next week", func(r *eventspb.CreateEventRequest) {
			r.StartTime, r.EndTime = timestamppb.New(now.Add(7*24*time.Hour)), timestamppb.New(now.Add(8*24*time.Hour))
		}): eventspb.HiddenReason_HIDDEN_REASON_NOT_YET_PREVIEWED,
		create("previewed", func(r *eventspb.CreateEventRequest) {
			r.StartTime, r.EndTime = timestamppb.New(now.Add(time.Hour)), timestamppb.New(now.Add(2*time.Hour))
			r.PreviewTime = timestamppb.New(now.Add(-time.Hour))
		}): eventspb.HiddenReason_HIDDEN_REASON_NOT_REQUESTED, // GET /events lists active ones only by default
	}
	shownIDs := []string{
		create("for ios in France", func(r *eventspb.CreateEventRequest) {
			r.Audience = &eventspb.Audience{Platforms: []string{"ios"}, Countries: []string{"FR"}, MinVersion: "2.0"}
			r.Localizations = map[string]*eventspb.Localization{"fr": {Title: "Pour iOS en France"}}
		}),
		create("everyone", func(r *eventspb.CreateEventRequest) {}),
	}

	query := "platform=ios&country=FR&client_version=2.1.0&language=fr&player_id=" + player
	var body []byte
	var shownNow []string
	waitFor(t, func() bool { // the server applies each write before answering it; this is for safety
		code, _, b := ts.get(t, "/events?"+query, ts.user)
		if code != 200 {
			t.Fatalf("GET /events: %d %s", code, b)
		}
		var got playerAnswerJSON
		json.Unmarshal(b, &got)
		shownNow = nil
		for _, e := range got.Events {
			shownNow = append(shownNow, e.ID)
		}
		body = b
		return len(shownNow) == len(shownIDs)
	})
	preview, err := ts.events.PreviewPlayerView(admin, &eventspb.PreviewPlayerViewRequest{
		Platform: "ios", Country: "FR", ClientVersion: "2.1.0", Language: "fr", PlayerId: player})
	if err != nil {
		t.Fatal(err)
	}
	var previewed []string
	for _, s := range preview.GetShown() {
		previewed = append(previewed, s.GetEvent().GetId())
		if s.GetEvent().GetId() == shownIDs[0] && (s.GetLocale() != "fr" || s.GetTitle() != "Pour iOS en France") {
			t.Errorf("the localized event is previewed in %q as %q", s.GetLocale(), s.GetTitle())
		}
	}
	if !slices.Equal(previewed, shownNow) {
		t.Errorf("previewed %v, GET /events shows %v", previewed, shownNow)
	}
	// The same bytes but for server_time, which may be a second apart.
	cut := func(b string) string { _, rest, _ := strings.Cut(b, `","events":`); return rest }
	if cut(preview.GetBody()) != cut(string(body)) {
		t.Errorf("preview body\n%s\nGET /events body\n%s", preview.GetBody(), body)
	}
	got := map[string]eventspb.HiddenReason{}
	for _, h := range preview.GetHidden() {
		got[h.GetEventId()] = h.GetReason()
	}
	for id, reason := range want {
		if got[id] != reason {
			t.Errorf("event %s hidden for %v, want %v", id, got[id], reason)
		}
	}
}

// TestRandomContextFloodStaysBounded floods a real server with GET /events from a new
// player every request, each shown one of thousands of selections of a dozen rollouts, and
// checks that the heap stays within the answer caches' bounds. (That the flood does not
// push out the answers players share is TestRandomContextFloodKeepsSharedAnswers'.)
func TestRandomContextFloodStaysBounded(t *testing.T) {
	ts := startServer(t)
	now := time.Now()
	for i := range 12 {
		r := createReq(fmt.Sprintf("rollout %d", i), now.Add(-time.Hour), now.Add(time.Hour), "")
		r.RolloutPercent = 50
		r.Localizations = map[string]*eventspb.Localization{"fr": {Title: fmt.Sprintf("déploiement %d", i)}}
		if _, err := ts.events.CreateEvent(withKey(ts.admin), r); err != nil {
			t.Fatal(err)
		}
	}
	get := func(query string) {
		if code, _, body := ts.get(t, "/events?"+query, ts.user); code != 200 {
			t.Fatalf("GET /events?%s: %d %s", query, code, body)
		}
	}
	done := make(chan struct{})
	growth := maxHeapDuring(done)
	const flood = 20_000
	for i := range flood {
		get(fmt.Sprintf("player_id=flood-%d&language=fr&platform=ios", i))
		if i%1000 == 0 {
			get("player_id=regular&language=fr")
		}
	}
	close(done)
	// The caches hold at most 64 + 32 MB of answers and 32,768 request keys.
	g := growth()
	t.Logf("the heap grew by at most %d MiB", g>>20)
	if g > 160<<20 {
		t.Errorf("the heap grew by %d MiB during a flood of %d one-off contexts", g>>20, flood)
	}
}
