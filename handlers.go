package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// eventJSON is an event as players see it over HTTP. Rewards is embedded as the JSON value
// itself, not as a string holding JSON, so a game client parses the response once. For a
// recurring event, the times are those of the occurrence shown (the active one, else the
// next previewed one, else the last), and occurrence is its index. Version grows by one
// with every admin write to the event; it is not the HTTP ETag, which names a whole
// response body.
type eventJSON struct {
	ID          string     `json:"id"`
	Title       string     `json:"title"`
	Description string     `json:"description"`
	Status      string     `json:"status"`
	StartTime   time.Time  `json:"start_time"`
	EndTime     time.Time  `json:"end_time"`
	PreviewTime *time.Time `json:"preview_time,omitempty"`
	Occurrence  *int       `json:"occurrence,omitempty"`
	Priority    int32      `json:"priority"`
	Labels      []string   `json:"labels"`
	Rewards     rawJSON    `json:"rewards"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	Version     int64      `json:"version"`
	// Locale is the BCP 47 tag of the title and description: one of the event's
	// localizations, or the server's -default-locale for its own text.
	Locale string `json:"locale"`
}

// rawJSON is JSON text written as it is: rewards, which validation compacted.
type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }

// toJSON shapes e as it stands in v for players, with its text in locale ("" for its own,
// in defaultLocale).
func toJSON(e Event, v view, locale, defaultLocale string) eventJSON {
	j := eventJSON{
		ID: e.ID, Title: e.Title, Description: e.Description, Status: v.status.String(),
		StartTime: v.start, EndTime: v.end, Priority: e.Priority, Labels: e.Labels,
		Rewards: rawJSON(e.Rewards), CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, Version: e.Version,
		Locale: defaultLocale,
	}
	if l, ok := e.Localizations[locale]; ok {
		j.Locale = locale
		// A localization may translate only one of the two; the other stays the default.
		if l.Title != "" {
			j.Title = l.Title
		}
		if l.Description != "" {
			j.Description = l.Description
		}
	}
	if j.Labels == nil {
		j.Labels = []string{}
	}
	if !e.Preview.IsZero() {
		p := v.start.Add(-e.Start.Sub(e.Preview))
		j.PreviewTime = &p
	}
	if e.Recurrence.repeats() {
		j.Occurrence = &v.occurrence
	}
	return j
}

// playerListBody encodes a GET /events answer: {"server_time":...,"events":[...]}. It
// returns the body and the events array alone, from which the ETag is made.
func playerListBody(t time.Time, events []shown, defaultLocale string) (body, eventsJSON []byte) {
	b := append([]byte(`{"server_time":"`), t.UTC().AppendFormat(nil, time.RFC3339)...)
	b = append(b, `","events":`...)
	start := len(b)
	b = append(b, '[')
	for i, s := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, s.e.fragment(s, defaultLocale)...)
	}
	b = append(b, ']')
	end := len(b)
	b = append(b, "}\n"...)
	return b, b[start:end]
}

// fragmentKey names one way an event is shown: the occurrence, its times and status, and
// the locale of its text.
type fragmentKey struct {
	locale     string
	start      int64
	status     eventStatus
	occurrence int
}

// maxFragments bounds the encodings an event keeps: one per locale and per way it is
// shown, times the zones' offsets for a player-local one. Past it, it is encoded anew.
const maxFragments = 256

// fragment returns e's JSON as sh shows it, encoded once for every answer that lists it
// that way: an answer is then copies of its events' bytes, however many players' answers
// differ in which events they list.
func (e *entry) fragment(sh shown, defaultLocale string) []byte {
	k := fragmentKey{locale: sh.locale, start: sh.v.start.UnixNano(), status: sh.v.status, occurrence: sh.v.occurrence}
	if b, ok := e.fragments.Load(k); ok {
		return b.([]byte)
	}
	b := marshalJSON(toJSON(e.Event, sh.v, sh.locale, defaultLocale))
	if e.fragmentCount.Add(1) <= maxFragments {
		e.fragments.Store(k, b)
	}
	return b
}

// playerEventBody encodes a GET /events/{id} answer: the event with server_time first. It
// returns the body and the event alone, from which the ETag is made.
func playerEventBody(t time.Time, sh shown, defaultLocale string) (body, eventJSON []byte) {
	event := marshalJSON(toJSON(sh.e.Event, sh.v, sh.locale, defaultLocale))
	b := append([]byte(`{"server_time":"`), t.UTC().AppendFormat(nil, time.RFC3339)...)
	b = append(b, `",`...)
	b = append(b, event[1:]...)
	return append(b, '\n'), event
}

// handleEvents serves GET /events: by default the events active now. Each variant of the
// query is encoded once per snapshot and second and shared by every request asking it.
// Query parameters:
//
//	status=active,upcoming        which statuses to include (repeatable; default active)
//	label=shop&label=pvp          only events with any of these labels
//	at=2027-01-01T20:00:00Z       answer as of that instant; only with -allow-time-travel
//
//	platform=ios, client_version=1.4.2, country=FR, language=fr-CA, player_id=…,
//	time_zone=Asia/Tokyo or utc_offset=+09:00
//	                              the player's context, for targeted events (see clientctx.go)
//
// sharedMaxAge, when not 0, lets shared caches keep the answers that long (see serveCached).
//
// While no event players can see is targeted, every player gets the same answer and the
// context is only checked. Otherwise the answer is picked by the events this player is
// shown (and their text's locale, and their times where they are player-local): every
// player shown the same selection shares one encoded answer, however many players there
// are.
func handleEvents(rm *readModel, answers *answerCache, tg targeting, allowTimeTravel bool, sharedMaxAge time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		snap := rm.snapshot()
		var ck [512]byte
		var ctxKey []byte
		var f *frame
		if snap.targeted && tg.mayDeclare(r) {
			// Asked exactly this before, in this frame: the same selection, found without
			// reading the query or the context again (only valid requests are indexed).
			now := rm.now()
			f, ctxKey = snap.frameAt(now), tg.contextKey(ck[:0], r)
			if ic, ok := tg.contexts.get(ctxKey); ok && ic.gen == snap.gen && ic.frame == f.seq {
				if a := tg.selections.current(ic.selection, snap.gen, now, tg.defaultLocale); a != nil {
					tg.vary(w, hasParam(r.URL.RawQuery, "language"))
					serveCached(w, r, a.resp, a.until.Sub(now), sharedMaxAge)
					return
				}
			}
		}
		var v url.Values
		var q playerQuery
		var at time.Time
		if r.URL.RawQuery != "" {
			v = r.URL.Query()
			var err error
			if q, at, err = parsePlayerQuery(v, allowTimeTravel); err != nil {
				writeError(w, r, err)
				return
			}
		}
		c, err := tg.contextFor(w, r, v, snap.targeted, rm.zones)
		if err != nil {
			writeError(w, r, err)
			return
		}
		if !at.IsZero() {
			// Time travel is for testing: never cached, here or by the client.
			events, _ := snap.playerEvents(at, q, c)
			serveCached(w, r, newCachedResponse(playerListBody(at, events, tg.defaultLocale)), 0, 0)
			return
		}
		now := rm.now()
		if c == nil || c.declaresNothing() {
			// Everyone who declares nothing gets one answer: it goes with the others'.
			key := q.key()
			switch {
			case c != nil && q.isDefault():
				key = "events|undeclared" // most requests of a game without targeting clients: no concatenation
			case c != nil:
				key += "|undeclared"
			}
			a := answers.get(key, snap.gen, now, func() ([]byte, []byte, time.Time) {
				events, until := snap.playerEvents(now, q, c)
				body, tagged := playerListBody(now, events, tg.defaultLocale)
				return body, tagged, until
			})
			serveCached(w, r, a.resp, a.until.Sub(now), sharedMaxAge)
			return
		}
		buf := shownPool.Get().(*[]shown)
		events, until, f := snap.targetedEvents(now, q, c, (*buf)[:0])
		var key [256]byte
		sel := selectionKey(key[:0], f, q, events, until)
		a := tg.selections.get(sel, snap.gen, now, events, func() ([]byte, []byte, time.Time) {
			body, tagged := playerListBody(now, events, tg.defaultLocale)
			return body, tagged, until
		})
		clear(events) // the pool must not keep entries alive
		*buf = events[:0]
		shownPool.Put(buf)
		if ctxKey != nil {
			tg.contexts.put(ctxKey, indexedContext{gen: snap.gen, frame: f.seq, selection: string(sel)})
		}
		serveCached(w, r, a.resp, a.until.Sub(now), sharedMaxAge)
	})
}

// contextFor reads the player's context when the answer can depend on it (targeted), and
// adds what it read from headers to Vary; it returns nil when the answer cannot depend on
// it. Context parameters are checked either way: a malformed one is a 400 whatever the
// events are.
func (tg targeting) contextFor(w http.ResponseWriter, r *http.Request, v url.Values, targeted bool, z *zones) (*clientContext, error) {
	if !targeted && !hasAny(v, contextParams) {
		return nil, nil
	}
	c, err := tg.clientContextFrom(v, r.Header, z)
	if err != nil || !targeted {
		return nil, err
	}
	_, hasLanguage := v["language"]
	tg.vary(w, hasLanguage)
	return &c, nil
}

// The Vary values a targeted answer needs: the headers its context may be read from.
var (
	varyLanguage = []string{"Accept-Language"}
)

// vary adds to w's Vary the request headers a targeted answer depends on: Accept-Language
// when the query string gives no language, and the trusted country header.
func (tg targeting) vary(w http.ResponseWriter, hasLanguage bool) {
	h := w.Header()
	if !hasLanguage {
		h["Vary"] = append(h["Vary"], varyLanguage...)
	}
	if tg.countryHeader != "" {
		h["Vary"] = append(h["Vary"], tg.countryHeader)
	}
}

func hasAny(v url.Values, names []string) bool {
	for _, n := range names {
		if _, ok := v[n]; ok {
			return true
		}
	}
	return false
}

// selectionKey appends to b the name, in the selection cache, of the answer of a player
// asking q who is shown events (by their place in frame f, with their locales and, for
// player-local ones, their times) until until: every player shown the same gets the same
// key. A frame's places mean nothing in another's, so the key starts with the frame's.
func selectionKey(b []byte, f *frame, q playerQuery, events []shown, until time.Time) []byte {
	b = binary.LittleEndian.AppendUint64(b, f.seq)
	if !q.isDefault() {
		b = append(b, q.key()...)
	}
	local := false
	for _, s := range events {
		b = append(b, '|', byte(s.pos), byte(s.pos>>8))
		b = append(b, s.locale...)
		if s.e.TimeMode == timeModePlayerLocal {
			b = binary.LittleEndian.AppendUint64(b, uint64(s.v.start.Unix()))
			local = true
		}
	}
	if local {
		b = binary.LittleEndian.AppendUint64(b, uint64(until.Unix()))
	}
	return b
}

// playerAnswer is the body GET /events answers with events at t.
func playerAnswer(t time.Time, events []shown, defaultLocale string) []byte {
	body, _ := playerListBody(t, events, defaultLocale)
	return body
}

// key names q in the answer cache: the same for every spelling of one question.
func (q playerQuery) key() string {
	if q.isDefault() {
		return "events"
	}
	labels := slices.Compact(slices.Sorted(slices.Values(q.labels)))
	return "events?" + strconv.Itoa(int(q.statuses)) + "&" + strings.Join(labels, ",")
}

// parsePlayerQuery reads GET /events's query parameters.
func parsePlayerQuery(v url.Values, allowTimeTravel bool) (playerQuery, time.Time, error) {
	q, err := playerQueryFrom(v["status"], v["label"])
	if err != nil {
		return q, time.Time{}, err
	}
	at, err := parseAt(v, allowTimeTravel)
	return q, at, err
}

// playerQueryFrom reads what a player asks for: statuses (active, upcoming; each may be a
// comma-separated list) and labels.
func playerQueryFrom(statuses, labels []string) (playerQuery, error) {
	var q playerQuery
	for _, list := range statuses {
		for name := range strings.SplitSeq(list, ",") {
			switch strings.TrimSpace(name) {
			case "active":
				q.statuses.add(statusActive)
			case "upcoming":
				q.statuses.add(statusUpcoming)
			case "ended":
				// Every event ever held has ended; listing them all is no job for a
				// game client's poll. One ended event stays readable by id.
				return q, &fieldError{"status", "ended events are not listed; read one with GET /events/{id}"}
			default:
				return q, &fieldError{"status", fmt.Sprintf("unknown status %q; want active or upcoming", name)}
			}
		}
	}
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return q, &fieldError{"label", err.Error()}
		}
		q.labels = append(q.labels, l)
	}
	return q, nil
}

// parseAt reads the time-travel parameter at, which the player routes share: the zero time
// when it is absent.
func parseAt(v url.Values, allowTimeTravel bool) (time.Time, error) {
	s := v.Get("at")
	if s == "" {
		return time.Time{}, nil
	}
	if !allowTimeTravel {
		return time.Time{}, &fieldError{"at", "time travel is off on this server (start it with -allow-time-travel)"}
	}
	// A '+' in a query string means a space, so an offset such as +01:00 sent unescaped
	// arrives as " 01:00". No RFC 3339 time holds a space there, so it can only be that.
	if i := strings.LastIndexByte(s, ' '); i > 0 && len(s)-i == len(" 01:00") {
		s = s[:i] + "+" + s[i+1:]
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, &fieldError{"at", fmt.Sprintf("must be an RFC 3339 time such as 2027-01-01T20:00:00Z or 2027-01-01T21:00:00%%2B01:00, got %q", v.Get("at"))}
	}
	if err := checkTime("at", t.UTC()); err != nil {
		return time.Time{}, err
	}
	return t.UTC(), nil
}

// handleEvent serves GET /events/{id}: the event while players may see it (previewed,
// active or ended). A draft, or an event not yet previewed or started, is 404, so the
// schedule cannot be read early. It takes at like GET /events.
func handleEvent(rm *readModel, answers *answerCache, tg targeting, allowTimeTravel bool, sharedMaxAge time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := checkID("id", id); err != nil {
			writeError(w, r, err)
			return
		}
		var v url.Values
		var at time.Time
		if r.URL.RawQuery != "" {
			v = r.URL.Query()
			var err error
			if at, err = parseAt(v, allowTimeTravel); err != nil {
				writeError(w, r, err)
				return
			}
		}
		now := rm.now()
		t := now
		if !at.IsZero() {
			t = at
		}
		snap := rm.snapshot()
		e, ok := snap.get(id)
		c, err := tg.contextFor(w, r, v, ok && e.targeted, rm.zones)
		if err != nil {
			writeError(w, r, err)
			return
		}
		var sh shown
		if ok && e.State != stateDraft {
			sh, _ = e.forPlayer(t, c)
		}
		// An event this player is not shown is, to this player, not there.
		if sh.e == nil || !sh.v.visible {
			writeError(w, r, &notFoundError{"no event with id " + id})
			return
		}
		if !at.IsZero() {
			serveCached(w, r, newCachedResponse(playerEventBody(t, sh, tg.defaultLocale)), 0, 0)
			return
		}
		key := "event/" + id
		if c != nil {
			key += "|" + sh.locale + "|" + strconv.FormatInt(sh.v.start.Unix(), 36)
		}
		a := answers.get(key, snap.gen, now, func() ([]byte, []byte, time.Time) {
			body, tagged := playerEventBody(now, sh, tg.defaultLocale)
			return body, tagged, sh.v.until
		})
		serveCached(w, r, a.resp, a.until.Sub(now), sharedMaxAge)
	})
}

// handleNotFound answers every path no route matches.
func handleNotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, &httpError{http.StatusNotFound, "no such endpoint: " + r.URL.Path})
	})
}

// handleMethodNotAllowed answers a known path asked with a method it does not serve.
func handleMethodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, r, &httpError{http.StatusMethodNotAllowed, "method " + r.Method + " not allowed; allowed: " + allow})
	})
}

// onlyParams answers 400, naming the parameter, to a request whose query string holds a
// parameter the route does not take, so that a misspelt filter is not silently ignored.
func onlyParams(allowed []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" && !onlyKnownParams(r.URL.RawQuery, allowed) {
			v, err := url.ParseQuery(r.URL.RawQuery)
			if err != nil {
				writeError(w, r, &fieldError{"query", "is malformed: " + err.Error()})
				return
			}
			reason := "unknown query parameter; this endpoint takes none"
			if len(allowed) > 0 {
				reason = "unknown query parameter; this endpoint takes only " + strings.Join(allowed, ", ")
			}
			var errs fieldErrors
			for _, name := range slices.Sorted(maps.Keys(v)) {
				if !slices.Contains(allowed, name) {
					errs = append(errs, &fieldError{name, reason})
				}
			}
			if len(errs) > 0 {
				writeError(w, r, errs)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// hasParam reports whether the query string raw has a parameter called name.
func hasParam(raw, name string) bool {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if key, _, _ := strings.Cut(pair, "="); key == name {
			return true
		}
		if strings.ContainsAny(pair, "%+") {
			if v, err := url.ParseQuery(pair); err == nil && v.Has(name) {
				return true
			}
		}
	}
	return false
}

// onlyKnownParams reports, without allocating, that a query string free of escapes and
// semicolons names only allowed parameters; false sends it to the full parse, which
// reports what is wrong with it.
func onlyKnownParams(raw string, allowed []string) bool {
	if strings.ContainsAny(raw, "%;+") {
		return false
	}
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" {
			continue
		}
		name, _, _ := strings.Cut(pair, "=")
		if !slices.Contains(allowed, name) {
			return false
		}
	}
	return true
}

// retryAfterSeconds rounds a wait up to whole seconds, as Retry-After counts it and as the
// gRPC RetryInfo says it too: a client told 0 would come straight back.
func retryAfterSeconds(d time.Duration) time.Duration {
	return max(time.Second, (d+time.Second-1)/time.Second*time.Second)
}

// httpError is a refusal that only HTTP has words for: an unknown endpoint, a method a
// path does not serve, a body on a GET.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

// errorBody is the one shape every HTTP error has:
// {"error":{"code":400,"message":"...","fields":[{"field":"status","reason":"..."}]}}.
// An internal error carries the request's trace_id instead of fields.
type errorBody struct {
	Error struct {
		Code    int         `json:"code"`
		Message string      `json:"message"`
		Fields  []fieldJSON `json:"fields,omitempty"`
		TraceID string      `json:"trace_id,omitempty"`
	} `json:"error"`
}

type fieldJSON struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// writeError answers err as JSON with the status it maps to. This is the one place an
// error becomes an HTTP status: validation problems are 400 naming each field, a missing
// event 404, refused keys 401, 403 or 429 with the headers those need, a database that is
// busy or away 503, a request whose context ended first (its client went away) 503 too,
// and anything unexpected 500 with a generic message and the trace id, its cause going
// only to the access log.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var body errorBody
	status, msg := http.StatusInternalServerError, "internal error"
	var ae *authError
	var he *httpError
	var nf *notFoundError
	switch {
	case errors.As(err, &ae):
		status, msg = http.StatusUnauthorized, ae.msg
		switch ae.kind {
		case authForbidden:
			status = http.StatusForbidden
		case authThrottled:
			status = http.StatusTooManyRequests
			w.Header().Set("Retry-After", strconv.Itoa(int(retryAfterSeconds(ae.retryAfter)/time.Second)))
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="liveops"`)
		}
	case errors.As(err, &he):
		status, msg = he.status, he.msg
	case fieldProblems(err) != nil:
		status, msg = http.StatusBadRequest, err.Error()
		for _, fe := range fieldProblems(err) {
			body.Error.Fields = append(body.Error.Fields, fieldJSON{fe.Field, fe.Reason})
		}
	case errors.As(err, &nf):
		status, msg = http.StatusNotFound, nf.msg
	case errors.Is(err, errBusy), errors.Is(err, errReadOnly), errors.Is(err, errUnavailable):
		status, msg = http.StatusServiceUnavailable, "the database is unavailable; retry shortly"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// Not the server's failure, nor the database's: the access log shows it as a 503,
		// not at level ERROR.
		status, msg = http.StatusServiceUnavailable, "the request ran out of time or was canceled; retry shortly"
	}
	if status == http.StatusInternalServerError {
		noteReason(r.Context(), err.Error())
		msg, body.Error.TraceID = internalMessage(r.Context()), traceIDFrom(r.Context())
	} else {
		noteReason(r.Context(), msg)
	}
	body.Error.Code, body.Error.Message = status, msg
	writeJSON(w, status, body)
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b := append(marshalJSON(v), '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
