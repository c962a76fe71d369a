package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// eventJSON is an event as players see it over HTTP. Rewards is embedded as the JSON value
// itself, not as a string holding JSON, so a game client parses the response once. For a
// recurring event, the times are those of the occurrence shown (the active one, else the
// next previewed one, else the last), and occurrence is its index.
type eventJSON struct {
	ID          string          `json:"id"`
	Title       string          `json:"title"`
	Description string          `json:"description"`
	Status      string          `json:"status"`
	StartTime   time.Time       `json:"start_time"`
	EndTime     time.Time       `json:"end_time"`
	PreviewTime *time.Time      `json:"preview_time,omitempty"`
	Occurrence  *int            `json:"occurrence,omitempty"`
	Priority    int32           `json:"priority"`
	Labels      []string        `json:"labels"`
	Rewards     json.RawMessage `json:"rewards"`
	CreatedAt   time.Time       `json:"created_at"`
	UpdatedAt   time.Time       `json:"updated_at"`
	ETag        string          `json:"etag"`
}

// toJSON shapes e as it stands in v for players.
func toJSON(e Event, v view) eventJSON {
	j := eventJSON{
		ID: e.ID, Title: e.Title, Description: e.Description, Status: v.status.String(),
		StartTime: v.start, EndTime: v.end, Priority: e.Priority, Labels: e.Labels,
		Rewards: json.RawMessage(e.Rewards), CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, ETag: e.ETag(),
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

// handleEvents serves GET /events: by default the events active now. The common answer
// comes encoded from the read model, so such a request checks the key, picks the bytes and
// writes them. Query parameters:
//
//	status=active,upcoming        which statuses to include (repeatable; default active)
//	label=shop&label=pvp          only events with any of these labels
//	at=2027-01-01T20:00:00Z       answer as of that instant; only with -allow-time-travel
func handleEvents(rm *readModel, allowTimeTravel bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := rm.now()
		if r.URL.RawQuery == "" {
			a := rm.activeAt(now)
			serveCached(w, r, a.resp, a.until.Sub(now))
			return
		}
		q, at, err := parsePlayerQuery(r.URL.Query(), allowTimeTravel)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if at.IsZero() && q.isDefault() {
			a := rm.activeAt(now)
			serveCached(w, r, a.resp, a.until.Sub(now))
			return
		}
		t := now
		if !at.IsZero() {
			t = at
		}
		events, until := rm.snapshot().playerEvents(t, q)
		body, tagged := playerListBody(t, events)
		fresh := until.Sub(t)
		if !at.IsZero() {
			fresh = 0 // time travel is for testing: never cache it
		}
		serveCached(w, r, newCachedResponse(body, tagged), fresh)
	})
}

// parsePlayerQuery reads GET /events's query parameters.
func parsePlayerQuery(v url.Values, allowTimeTravel bool) (playerQuery, time.Time, error) {
	var q playerQuery
	for _, list := range v["status"] {
		for _, name := range strings.Split(list, ",") {
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
	var at time.Time
	if s := v.Get("at"); s != "" {
		if !allowTimeTravel {
			return q, time.Time{}, &fieldError{"at", "time travel is off on this server (start it with -allow-time-travel)"}
		}
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return q, time.Time{}, &fieldError{"at", "must be an RFC 3339 time such as 2027-01-01T20:00:00+01:00"}
		}
		if err := checkTime("at", t.UTC()); err != nil {
			return q, time.Time{}, err
		}
		at = t.UTC()
	}
	return q, at, nil
}

// handleEvent serves GET /events/{id}: the event while players may see it (previewed,
// active or ended). A draft, or an event not yet previewed or started, is 404, so the
// schedule cannot be read early.
func handleEvent(rm *readModel) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := checkID(id); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		now := rm.now()
		e, ok := rm.snapshot().get(id)
		var v view
		if ok {
			v = e.viewAt(now)
		}
		if !ok || !v.visible {
			writeError(w, http.StatusNotFound, "no event with id "+id)
			return
		}
		event := mustJSON(toJSON(e.Event, v))
		body := make([]byte, 0, len(event)+40)
		body = append(body, `{"server_time":"`...)
		body = now.UTC().AppendFormat(body, time.RFC3339)
		body = append(body, `",`...)
		body = append(body, event[1:]...)
		body = append(body, '\n')
		serveCached(w, r, newCachedResponse(body, event), v.until.Sub(now))
	})
}

// maxCacheAge caps Cache-Control max-age, so that clients and CDNs come back often enough
// to notice a new event.
const maxCacheAge = 30 * time.Second

// Header values used on every cached response, made once so that a request allocates
// nothing for them. They are never modified.
var (
	hdrJSON    = []string{"application/json"}
	hdrVary    = []string{"Authorization, Accept-Encoding"}
	hdrGzip    = []string{"gzip"}
	hdrMaxAges = func() [][]string {
		out := make([][]string, int(maxCacheAge/time.Second)+1)
		for i := range out {
			out[i] = []string{"max-age=" + strconv.Itoa(i)}
		}
		return out
	}()
)

// serveCached writes c, honouring If-None-Match (304) and Accept-Encoding (gzip), with a
// Cache-Control max-age that does not run past fresh, the time until the answer can change.
func serveCached(w http.ResponseWriter, r *http.Request, c *cachedResponse, fresh time.Duration) {
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h["Vary"] = hdrVary
	h["Cache-Control"] = hdrMaxAges[int(min(max(fresh, 0), maxCacheAge)/time.Second)]
	body, etag, length := c.body, c.etag, c.length
	if len(c.body) >= minGzipSize && acceptsGzip(r.Header["Accept-Encoding"]) {
		if gz := c.gzipped(); gz != nil {
			body, etag, length = gz.body, gz.etag, gz.length
			h["Content-Encoding"] = hdrGzip
		}
	}
	h["Etag"] = etag
	if inm := r.Header["If-None-Match"]; len(inm) > 0 && etagListMatches(inm, etag[0]) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Length"] = length
	w.Write(body)
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip: it names gzip (or *)
// without q=0.
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			name, params, _ := strings.Cut(item, ";")
			name = strings.TrimSpace(name)
			if !strings.EqualFold(name, "gzip") && name != "*" {
				continue
			}
			q := strings.TrimSpace(params)
			if q, ok := strings.CutPrefix(q, "q="); ok && strings.Trim(q, "0.") == "" {
				return false // q=0, q=0.0, q=0.000: explicitly refused
			}
			return true
		}
	}
	return false
}

// etagListMatches reports whether an If-None-Match header matches etag, with the weak
// comparison RFC 9110 asks for: W/ prefixes are ignored, and * matches anything.
func etagListMatches(values []string, etag string) bool {
	etag = strings.TrimPrefix(etag, "W/")
	for _, v := range values {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			item = strings.TrimSpace(item)
			if item == "*" || strings.TrimPrefix(item, "W/") == etag {
				return true
			}
		}
	}
	return false
}

// handleHealthz answers 200 when the database answers a query within a second, 503 otherwise.
func handleHealthz(st *store, log *logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := st.ping(ctx); err != nil {
			log.Error("health check failed", "err", err)
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// handleNotFound answers every path no route matches.
func handleNotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
}

// handleMethodNotAllowed answers a known path asked with a method it does not serve.
func handleMethodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; allowed: "+allow)
	})
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // the body is JSON, not HTML: keep <, > and & readable
	if err := enc.Encode(v); err != nil {
		// Only a programming error gets here: every value written is a plain struct.
		http.Error(w, `{"error":{"code":500,"message":"internal error"}}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// writeError writes the one error shape every HTTP error uses:
// {"error":{"code":N,"message":"..."}}.
func writeError(w http.ResponseWriter, status int, msg string) {
	type errorBody struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, status, struct {
		Error errorBody `json:"error"`
	}{errorBody{status, msg}})
}
