package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// readModelOf returns a read model holding events (validated here), reading time from c,
// with no store behind it: for the read path alone.
func readModelOf(t testing.TB, c *clock, events ...Event) *readModel {
	t.Helper()
	rm := &readModel{now: c.now, log: newLogger("text", io.Discard), zones: new(zones)}
	rm.stats = newReadModelMetrics(rm)
	for i := range events {
		e := &events[i]
		if e.ID == "" {
			e.ID = newID()
		}
		if err := e.validate(); err != nil {
			t.Fatalf("%s: %v", e.Title, err)
		}
		e.CreatedAt, e.UpdatedAt, e.Version = t0, t0, 1
	}
	rm.snap.Store(newSnapshot(1, events, c.now(), rm.zones))
	return rm
}

// targetedHandler is GET /events and GET /events/{id} over rm, as addRoutes mounts them.
func targetedHandler(rm *readModel, answers *answerCache, selections *selectionCache) http.Handler {
	tg := targeting{defaultLocale: "en", selections: selections, contexts: newContextIndex(1024)}
	mux := http.NewServeMux()
	mux.Handle("GET /events", onlyParams(append([]string{"status", "label", "at"}, contextParams...), handleEvents(rm, answers, tg, true, 0)))
	mux.Handle("GET /events/{id}", onlyParams(append([]string{"at"}, contextParams...), handleEvent(rm, answers, tg, true, 0)))
	return mux
}

type playerAnswerJSON struct {
	Events []struct {
		ID, Title, Description, Locale, Status string
		StartTime                              time.Time `json:"start_time"`
		EndTime                                time.Time `json:"end_time"`
	} `json:"events"`
}

// ask sends GET path with query and headers h, and returns the response and its decoded body.
func ask(t *testing.T, h http.Handler, path, query string, header http.Header) (*http.Response, playerAnswerJSON) {
	t.Helper()
	req := httptest.NewRequest("GET", path+"?"+query, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	var body playerAnswerJSON
	if resp.StatusCode == 200 && strings.HasPrefix(path, "/events") && path == "/events" {
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
	}
	return resp, body
}

func shownTitles(b playerAnswerJSON) string {
	var out []string
	for _, e := range b.Events {
		out = append(out, e.Title)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

func TestTargetedEventsByContext(t *testing.T) {
	c := newClock(t0)
	on := func(title string, a *Audience) Event {
		return Event{Title: title, Start: t0.Add(-time.Hour), End: t0.Add(time.Hour), Audience: a}
	}
	rm := readModelOf(t, c,
		on("all", nil),
		on("ios", &Audience{Platforms: []string{"ios"}}),
		on("v2", &Audience{MinVersion: "2.0.0"}),
		on("france", &Audience{Countries: []string{"FR"}}),
		on("french", &Audience{Languages: []string{"fr"}}),
		on("not-cn", &Audience{Exclude: &Audience{Countries: []string{"CN"}}}),
		Event{Title: "half", Start: t0.Add(-time.Hour), End: t0.Add(time.Hour), RolloutPercent: 50},
	)
	h := targetedHandler(rm, newAnswerCache(64, 1<<20), newSelectionCache(64, 1<<20))
	// A player in the 50% rollout and one out of it.
	var half *entry
	for e := range rm.snapshot().ordered.all() {
		if e.Title == "half" {
			half = e
		}
	}
	var in, out string
	for i := 0; in == "" || out == ""; i++ {
		id := fmt.Sprintf("p%d", i)
		if inRollout(half.ID, id, 50) {
			in = id
		} else {
			out = id
		}
	}
	tests := []struct {
		query  string
		header http.Header
		want   string
	}{
		{"", nil, "all,not-cn"},
		{"platform=ios", nil, "all,ios,not-cn"},
		{"platform=IOS&client_version=2.1", nil, "all,ios,not-cn,v2"},
		{"client_version=1.9.9", nil, "all,not-cn"},
		{"country=fr", nil, "all,france,not-cn"},
		{"country=CN", nil, "all"},
		{"language=fr-CA", nil, "all,french,not-cn"},
		{"", http.Header{"Accept-Language": {"de, fr;q=0.5"}}, "all,french,not-cn"},
		{"player_id=" + in, nil, "all,half,not-cn"},
		{"player_id=" + out, nil, "all,not-cn"},
	}
	for _, tc := range tests {
		resp, body := ask(t, h, "/events", tc.query, tc.header)
		if resp.StatusCode != 200 {
			t.Fatalf("%q: %d", tc.query, resp.StatusCode)
		}
		if got := shownTitles(body); got != tc.want {
			t.Errorf("%q %v: shown %s, want %s", tc.query, tc.header, got, tc.want)
		}
	}
	// By id: an event not for this player is not there.
	var ios *entry
	for e := range rm.snapshot().ordered.all() {
		if e.Title == "ios" {
			ios = e
		}
	}
	if resp, _ := ask(t, h, "/events/"+ios.ID, "platform=android", nil); resp.StatusCode != 404 {
		t.Errorf("GET /events/{id} of an ios event for android: %d, want 404", resp.StatusCode)
	}
	if resp, _ := ask(t, h, "/events/"+ios.ID, "platform=ios", nil); resp.StatusCode != 200 {
		t.Errorf("GET /events/{id} of an ios event for ios: %d, want 200", resp.StatusCode)
	}
}

func TestTargetingParametersAreChecked(t *testing.T) {
	c := newClock(t0)
	rm := readModelOf(t, c, Event{Title: "all", Start: t0, End: t0.Add(time.Hour)})
	h := targetedHandler(rm, newAnswerCache(64, 1<<20), newSelectionCache(64, 1<<20))
	for query, field := range map[string]string{
		"platform=gameboy":   "platform",
		"client_version=1.x": "client_version",
		"country=XX":         "country",
		"language=english!":  "language",
		"player_id=" + url.QueryEscape(strings.Repeat("p", 129)): "player_id",
		"player_id=" + url.QueryEscape("a b"):                    "player_id",
		"time_zone=Mars/Olympus":                                 "time_zone",
		"time_zone=Local":                                        "time_zone",
		"utc_offset=%2B15:00":                                    "utc_offset",
		"utc_offset=%2B09:10":                                    "utc_offset",
		"time_zone=UTC&utc_offset=%2B01:00":                      "utc_offset",
		"platforms=ios":                                          "platforms",
	} {
		resp, _ := ask(t, h, "/events", query, nil)
		body, _ := io.ReadAll(resp.Body)
		var e errorBody
		json.Unmarshal(body, &e)
		named := slices.ContainsFunc(e.Error.Fields, func(f fieldJSON) bool { return f.Field == field })
		if resp.StatusCode != 400 || !named {
			t.Errorf("%s: %d %s, want 400 naming %s", query, resp.StatusCode, body, field)
		}
	}
	// Well-formed: an unescaped '+' in utc_offset arrives as a space and is read back.
	for _, q := range []string{"utc_offset=+09:00", "utc_offset=-03:30", "utc_offset=%2B0545", "time_zone=Asia/Tokyo", "player_id=abc-123_XYZ"} {
		if resp, _ := ask(t, h, "/events", q, nil); resp.StatusCode != 200 {
			t.Errorf("%s: %d, want 200", q, resp.StatusCode)
		}
	}
}

func TestLocalizedTextVaryAndETags(t *testing.T) {
	c := newClock(t0)
	rm := readModelOf(t, c, Event{Title: "Festival", Description: "Fun", Start: t0.Add(-time.Hour), End: t0.Add(time.Hour),
		Localizations: map[string]Localization{"fr": {Title: "Fête", Description: "Joie"}, "fr-CA": {Title: "Party"}, "de": {Title: "Fest"}}})
	h := targetedHandler(rm, newAnswerCache(64, 1<<20), newSelectionCache(64, 1<<20))
	tests := []struct {
		query, acceptLanguage, title, description, locale string
	}{
		{"", "", "Festival", "Fun", "en"},
		{"", "fr-CA", "Party", "Joie", "fr-CA"}, // the description falls back to the language's
		{"", "fr-BE", "Fête", "Joie", "fr"},
		{"", "ja, de;q=0.9", "Fest", "Fun", "de"},
		{"", "en-GB, fr", "Festival", "Fun", "en"},
		{"language=fr", "de", "Fête", "Joie", "fr"}, // the parameter wins over the header
	}
	etags := map[string]string{}
	for _, tc := range tests {
		hdr := http.Header{}
		if tc.acceptLanguage != "" {
			hdr.Set("Accept-Language", tc.acceptLanguage)
		}
		resp, body := ask(t, h, "/events", tc.query, hdr)
		if len(body.Events) != 1 {
			t.Fatalf("%+v: %d events", tc, len(body.Events))
		}
		got := body.Events[0]
		if got.Title != tc.title || got.Locale != tc.locale {
			t.Errorf("%q %q: title %q locale %q, want %q %q", tc.query, tc.acceptLanguage, got.Title, got.Locale, tc.title, tc.locale)
		}
		vary := strings.Join(resp.Header.Values("Vary"), ",")
		if tc.query == "" && !strings.Contains(vary, "Accept-Language") {
			t.Errorf("%q: Vary %q does not name Accept-Language", tc.acceptLanguage, vary)
		}
		etag := resp.Header.Get("ETag")
		if prev, ok := etags[tc.locale]; ok && prev != etag && tc.locale != "en" {
			t.Errorf("locale %s: ETags %s and %s for one text", tc.locale, prev, etag)
		}
		for l, other := range etags {
			if l != tc.locale && other == etag {
				t.Errorf("locales %s and %s share the ETag %s", l, tc.locale, etag)
			}
		}
		etags[tc.locale] = etag
		// The client's conditional request for its own variant: 304.
		hdr.Set("If-None-Match", etag)
		if resp, _ := ask(t, h, "/events", tc.query, hdr); resp.StatusCode != http.StatusNotModified {
			t.Errorf("%q %q: If-None-Match its own ETag: %d, want 304", tc.query, tc.acceptLanguage, resp.StatusCode)
		}
	}
}

func TestPlayerLocalTime(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// The daily reset at 04:00, an hour long, in each player's own zone, from 2026-03-27.
	daily := Event{Title: "reset", Start: at("2026-03-27T04:00:00Z"), End: at("2026-03-27T05:00:00Z"), TimeMode: timeModePlayerLocal,
		Recurrence: Recurrence{Unit: unitDaily, Interval: 1}}
	// An evening event at 18:00 on 2026-06-01, wherever the player is.
	evening := Event{Title: "evening", Start: at("2026-06-01T18:00:00Z"), End: at("2026-06-01T20:00:00Z"), TimeMode: timeModePlayerLocal}
	c := newClock(at("2026-03-20T00:00:00Z"))
	rm := readModelOf(t, c, daily, evening)
	h := targetedHandler(rm, newAnswerCache(64, 1<<20), newSelectionCache(64, 1<<20))

	tests := []struct {
		name, zone, at, wantStart string // wantStart "" for not active
	}{
		// Paris moves to summer time on 2026-03-29: 04:00 is 03:00Z before, 02:00Z after.
		{"Paris, winter", "time_zone=Europe/Paris", "2026-03-28T03:30:00Z", "2026-03-28T03:00:00Z"},
		{"Paris, first summer day", "time_zone=Europe/Paris", "2026-03-29T02:30:00Z", "2026-03-29T02:00:00Z"},
		{"Paris, no longer at 03:30Z", "time_zone=Europe/Paris", "2026-03-29T03:30:00Z", ""},
		// Sydney leaves summer time on 2026-04-05: 04:00 is 17:00Z the day before, then 18:00Z.
		{"Sydney, summer", "time_zone=Australia/Sydney", "2026-04-03T17:30:00Z", "2026-04-03T17:00:00Z"},
		{"Sydney, winter", "time_zone=Australia/Sydney", "2026-04-04T18:30:00Z", "2026-04-04T18:00:00Z"},
		{"Sydney, not at 17:30Z any more", "time_zone=Australia/Sydney", "2026-04-04T17:30:00Z", ""},
		// Either side of the date line: UTC+14 sees 18:00 first, UTC-11 a day and an hour later.
		{"Kiritimati", "time_zone=Pacific/Kiritimati", "2026-06-01T04:30:00Z", "2026-06-01T04:00:00Z"},
		{"Pago Pago, not yet", "time_zone=Pacific/Pago_Pago", "2026-06-01T04:30:00Z", ""},
		{"Pago Pago", "time_zone=Pacific/Pago_Pago", "2026-06-02T05:30:00Z", "2026-06-02T05:00:00Z"},
		{"a fixed offset", "utc_offset=%2B05:30", "2026-06-01T12:45:00Z", "2026-06-01T12:30:00Z"},
		{"no zone is UTC", "", "2026-06-01T18:30:00Z", "2026-06-01T18:00:00Z"},
	}
	for _, tc := range tests {
		c.set(at(tc.at))
		_, body := ask(t, h, "/events", tc.zone, nil)
		got := ""
		for _, e := range body.Events {
			got = e.StartTime.UTC().Format(time.RFC3339)
		}
		if got != tc.wantStart {
			t.Errorf("%s at %s: active occurrence starts %q, want %q", tc.name, tc.at, got, tc.wantStart)
		}
	}
}

// TestRandomContextFloodKeepsSharedAnswers floods GET /events with a new player every
// request, each shown a different selection of a dozen 50% rollouts, and checks that the
// answer cache stays within its bounds and keeps the answer a regular player shares.
func TestRandomContextFloodKeepsSharedAnswers(t *testing.T) {
	c := newClock(t0)
	var events []Event
	for i := range 12 {
		events = append(events, Event{Title: fmt.Sprintf("r%d", i), Start: t0.Add(-time.Hour), End: t0.Add(time.Hour), RolloutPercent: 50})
	}
	events = append(events, Event{Title: "all", Start: t0.Add(-time.Hour), End: t0.Add(time.Hour)})
	rm := readModelOf(t, c, events...)
	const entries, bytes = 32, 1 << 20
	selections := newSelectionCache(entries, bytes)
	h := targetedHandler(rm, newAnswerCache(entries, bytes), selections)

	regular := "player_id=regular-player"
	_, want := ask(t, h, "/events", regular, nil)
	ask(t, h, "/events", regular, nil) // asked again: a shared answer
	flood := 0
	second := func() {
		// Answers hold for one second (their server_time): each second the cache fills anew,
		// the flood first.
		c.set(c.now().Add(time.Second))
		for range 3 * entries {
			ask(t, h, "/events", fmt.Sprintf("player_id=flood-%d", flood), nil)
			flood++
		}
		ask(t, h, "/events", regular, nil)
	}
	for range 20 {
		second()
	}
	selections.mu.RLock()
	cached := maps.Clone(selections.answers)
	selections.mu.RUnlock()
	size := 0
	for _, a := range cached {
		size += a.resp.size()
	}
	if len(cached) > entries || size > bytes {
		t.Fatalf("the cache holds %d answers, %d bytes; bounds %d, %d", len(cached), size, entries, bytes)
	}
	q := playerQuery{}
	shownNow, until, f := rm.snapshot().targetedEvents(c.now(), q, &clientContext{playerID: "regular-player", defaultLocale: "en"}, nil)
	if _, ok := cached[string(selectionKey(nil, f, q, shownNow, until))]; !ok {
		t.Errorf("the regular player's answer was pushed out by the flood (%d answers cached)", len(cached))
	}
	if _, got := ask(t, h, "/events", regular, nil); shownTitles(got) != shownTitles(want) {
		t.Errorf("regular player: %s, then %s", shownTitles(want), shownTitles(got))
	}
}

// benchmarkEvents are 20 active events, half of them targeted (platforms, countries,
// languages, versions, rollouts), all localized into 5 locales.
func benchmarkEvents() []Event {
	locs := map[string]Localization{}
	for _, l := range []string{"fr", "de", "ja", "pt-BR", "es"} {
		locs[l] = Localization{Title: "Event in " + l, Description: "A description of typical length for a game client card, in " + l + "."}
	}
	audiences := []*Audience{
		{Platforms: []string{"ios"}}, {Platforms: []string{"android"}}, {Countries: []string{"FR", "DE"}},
		{Languages: []string{"ja"}}, {MinVersion: "2.0.0"}, {Exclude: &Audience{Countries: []string{"US"}}},
		nil, nil, nil, nil, // rollouts
	}
	var events []Event
	for i := range 20 {
		e := Event{Title: fmt.Sprintf("Active event %d", i), Description: "A description of typical length for a game client card.",
			Start: t0.Add(-time.Duration(i+1) * time.Hour), End: t0.Add(24 * time.Hour), Rewards: `{"items":[{"id":"gem","qty":50}]}`,
			Localizations: locs}
		if i < len(audiences) {
			e.Audience = audiences[i]
			if e.Audience == nil {
				e.RolloutPercent = int32(10 * (i - 5))
			}
		}
		events = append(events, e)
	}
	return events
}

// benchmarkContexts are n player contexts, as query strings: each a player of its own, on
// one of five platforms, languages and countries, and two client versions.
func benchmarkContexts(n int) []string {
	platforms := []string{"ios", "android", "windows", "web", "switch"}
	langs := []string{"en", "fr", "de", "ja", "pt-BR"}
	countries := []string{"US", "FR", "DE", "JP", "BR"}
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("player_id=p%d&platform=%s&language=%s&country=%s&client_version=%d.1.0",
			i, platforms[i%5], langs[i/5%5], countries[i/25%5], 1+i/125%2)
	}
	return out
}

// BenchmarkGetEventsTargeted is GET /events over 20 active events, half targeted and all
// in 5 locales, for requests cycling through 10,000 player contexts (targeted), against the
// same events untargeted and requests without a context (untargeted).
func BenchmarkGetEventsTargeted(b *testing.B) {
	c := newClock(t0)
	contexts := benchmarkContexts(10_000)
	run := func(b *testing.B, events []Event, queries []string) {
		h := targetedHandler(readModelOf(b, c, events...), newAnswerCache(maxCachedAnswers, maxCachedAnswerBytes),
			newSelectionCache(maxCachedSelections, maxCachedSelectionBytes))
		reqs := make([]*http.Request, len(queries))
		for i, q := range queries {
			reqs[i] = httptest.NewRequest("GET", "/events?"+q, nil)
		}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, reqs[i%len(reqs)])
				if rec.Code != 200 {
					b.Fatalf("status %d", rec.Code)
				}
				i++
			}
		})
	}
	b.Run("targeted", func(b *testing.B) { run(b, benchmarkEvents(), contexts) })
	b.Run("untargeted", func(b *testing.B) {
		events := benchmarkEvents()
		for i := range events {
			events[i].Audience, events[i].RolloutPercent, events[i].Localizations = nil, 0, nil
		}
		run(b, events, []string{""})
	})
}

// BenchmarkGetEventsTargetedService is BenchmarkGetEventsTargeted through the whole
// service (switch, access log, key check, metrics), as BenchmarkGetEvents measures it.
func BenchmarkGetEventsTargetedService(b *testing.B) {
	st := newTestStore(b)
	now := time.Now()
	for _, e := range benchmarkEvents() {
		e.ID, e.Start, e.End = newID(), now.Add(e.Start.Sub(t0)), now.Add(e.End.Sub(t0))
		if err := e.validate(); err != nil {
			b.Fatal(err)
		}
		if _, _, err := st.CreateEvent(context.Background(), e, ""); err != nil {
			b.Fatal(err)
		}
	}
	key, _ := createTestKey(b, st, roleHTTPUser)
	cfg, err := parseConfig(nil, func(string) string { return "" }, io.Discard, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	svc, err := newService(context.Background(), cfg, st, time.Now, newLogger("text", io.Discard))
	if err != nil {
		b.Fatal(err)
	}
	var reqs []*http.Request
	for _, q := range append(benchmarkContexts(10_000), "") {
		r := httptest.NewRequest("GET", "/events?"+q, nil)
		r.Header.Set("Authorization", "Bearer "+key)
		reqs = append(reqs, r)
	}
	w := &discardResponse{header: http.Header{}}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		clear(w.header)
		w.status = 0
		svc.handler.ServeHTTP(w, reqs[i%len(reqs)])
		if w.status != 0 && w.status != 200 {
			b.Fatalf("status %d", w.status)
		}
		i++
	}
}

func TestTrustedCountryHeader(t *testing.T) {
	c := newClock(t0)
	rm := readModelOf(t, c,
		Event{Title: "france", Start: t0.Add(-time.Hour), End: t0.Add(time.Hour), Audience: &Audience{Countries: []string{"FR"}}})
	mux := http.NewServeMux()
	tg := targeting{defaultLocale: "en", countryHeader: "Cf-Ipcountry", selections: newSelectionCache(64, 1<<20), contexts: newContextIndex(64)}
	mux.Handle("GET /events", onlyParams(append([]string{"status", "label", "at"}, contextParams...),
		handleEvents(rm, newAnswerCache(64, 1<<20), tg, false, 0)))
	tests := []struct {
		query, header string
		want          string
	}{
		{"", "FR", "france"},
		{"country=DE", "FR", "france"}, // the front's word wins over the client's claim
		{"country=FR", "DE", ""},
		{"country=FR", "XX", "france"}, // the front does not know: the client's claim stands
		{"", "", ""},
	}
	for _, tc := range tests {
		h := http.Header{}
		if tc.header != "" {
			h.Set("CF-IPCountry", tc.header)
		}
		resp, body := ask(t, mux, "/events", tc.query, h)
		if got := shownTitles(body); got != tc.want {
			t.Errorf("%q with CF-IPCountry %q: shown %q, want %q", tc.query, tc.header, got, tc.want)
		}
		if vary := strings.Join(resp.Header.Values("Vary"), ","); !strings.Contains(vary, "Cf-Ipcountry") {
			t.Errorf("Vary %q does not name the country header", vary)
		}
	}
	// Without the flag, the header is anyone's to send: it is ignored.
	h := targetedHandler(rm, newAnswerCache(64, 1<<20), newSelectionCache(64, 1<<20))
	if _, body := ask(t, h, "/events", "", http.Header{"Cf-Ipcountry": {"FR"}}); shownTitles(body) != "" {
		t.Errorf("an untrusted country header was believed")
	}
}

func TestContextIndexStartsOverWhenFull(t *testing.T) {
	x := newContextIndex(3)
	for i := range 10 {
		x.put([]byte(fmt.Sprint(i)), indexedContext{selection: fmt.Sprint(i)})
		if len(x.m) > 3 {
			t.Fatalf("the index holds %d entries; its bound is 3", len(x.m))
		}
	}
	if ic, ok := x.get([]byte("9")); !ok || ic.selection != "9" {
		t.Errorf("the last entry put is not found: %v %v", ic, ok)
	}
}
