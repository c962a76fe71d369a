package main

import (
	"context"
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
}

// rawJSON is JSON text written as it is: rewards, which validation compacted.
type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }

// toJSON shapes e as it stands in v for players.
func toJSON(e Event, v view) eventJSON {
	j := eventJSON{
		ID: e.ID, Title: e.Title, Description: e.Description, Status: v.status.String(),
		StartTime: v.start, EndTime: v.end, Priority: e.Priority, Labels: e.Labels,
		Rewards: rawJSON(e.Rewards), CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, Version: e.Version,
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
func playerListBody(t time.Time, events []shown) (body, eventsJSON []byte) {
	b := append([]byte(`{"server_time":"`), t.UTC().AppendFormat(nil, time.RFC3339)...)
	b = append(b, `","events":`...)
	start := len(b)
	b = append(b, '[')
	for i, s := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, marshalJSON(toJSON(s.e.Event, s.v))...)
	}
	b = append(b, ']')
	end := len(b)
	b = append(b, "}\n"...)
	return b, b[start:end]
}

// playerEventBody encodes a GET /events/{id} answer: the event with server_time first. It
// returns the body and the event alone, from which the ETag is made.
func playerEventBody(t time.Time, e Event, v view) (body, eventJSON []byte) {
	event := marshalJSON(toJSON(e, v))
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
// sharedMaxAge, when not 0, lets shared caches keep the answers that long (see serveCached).
func handleEvents(rm *readModel, answers *answerCache, allowTimeTravel bool, sharedMaxAge time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var q playerQuery
		var at time.Time
		if r.URL.RawQuery != "" {
			var err error
			if q, at, err = parsePlayerQuery(r.URL.Query(), allowTimeTravel); err != nil {
				writeError(w, r, err)
				return
			}
		}
		snap := rm.snapshot()
		if !at.IsZero() {
			// Time travel is for testing: never cached, here or by the client.
			events, _ := snap.playerEvents(at, q)
			serveCached(w, r, newCachedResponse(playerListBody(at, events)), 0, 0)
			return
		}
		now := rm.now()
		a := answers.get(q.key(), snap.gen, now, func() ([]byte, []byte, time.Time) {
			events, until := snap.playerEvents(now, q)
			body, tagged := playerListBody(now, events)
			return body, tagged, until
		})
		serveCached(w, r, a.resp, a.until.Sub(now), sharedMaxAge)
	})
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
	var q playerQuery
	for _, list := range v["status"] {
		for name := range strings.SplitSeq(list, ",") {
			switch strings.TrimSpace(name) {
			case "active":
				q.statuses.add(statusActive)
			case "upcoming":
				q.statuses.add(statusUpcoming)
			case "ended":
				// Every event ever held has ended; listing them all is no job for a
				// game client's poll. One ended event stays readable by id.
				return q, time.Time{}, &fieldError{"status", "ended events are not listed; read one with GET /events/{id}"}
			default:
				return q, time.Time{}, &fieldError{"status", fmt.Sprintf("unknown status %q; want active or upcoming", name)}
			}
		}
	}
	for _, l := range v["label"] {
		if err := checkLabel(l); err != nil {
			return q, time.Time{}, &fieldError{"label", err.Error()}
		}
		q.labels = append(q.labels, l)
	}
	at, err := parseAt(v, allowTimeTravel)
	return q, at, err
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
func handleEvent(rm *readModel, answers *answerCache, allowTimeTravel bool, sharedMaxAge time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := checkID("id", id); err != nil {
			writeError(w, r, err)
			return
		}
		var at time.Time
		if r.URL.RawQuery != "" {
			var err error
			if at, err = parseAt(r.URL.Query(), allowTimeTravel); err != nil {
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
		var v view
		if ok {
			v = e.viewAt(t)
		}
		if !ok || !v.visible {
			writeError(w, r, &notFoundError{"no event with id " + id})
			return
		}
		if !at.IsZero() {
			serveCached(w, r, newCachedResponse(playerEventBody(t, e.Event, v)), 0, 0)
			return
		}
		a := answers.get("event/"+id, snap.gen, now, func() ([]byte, []byte, time.Time) {
			body, tagged := playerEventBody(now, e.Event, v)
			return body, tagged, v.until
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
		if r.URL.RawQuery != "" {
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
