package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// eventJSON is an event as players see it over HTTP. Rewards is embedded as the JSON value
// itself, not as a string holding JSON, so a game client parses the response once.
type eventJSON struct {
	ID          string          `json:"id"`
	Title       string          `json:"title"`
	Description string          `json:"description"`
	StartTime   time.Time       `json:"start_time"`
	EndTime     time.Time       `json:"end_time"`
	Rewards     json.RawMessage `json:"rewards"`
	CreatedAt   time.Time       `json:"created_at"`
	UpdatedAt   time.Time       `json:"updated_at"`
	ETag        string          `json:"etag"`
}

func toJSON(e Event) eventJSON {
	return eventJSON{
		ID: e.ID, Title: e.Title, Description: e.Description,
		StartTime: e.Start, EndTime: e.End, Rewards: json.RawMessage(e.Rewards),
		CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, ETag: e.ETag(),
	}
}

// handleEvents serves GET /events: the events active now. The answer comes encoded from
// the read model, so a request checks the key, picks the bytes and writes them.
func handleEvents(rm *readModel) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := rm.now()
		a := rm.activeAt(now)
		serveCached(w, r, a.resp, a.until.Sub(now))
	})
}

// handleEvent serves GET /events/{id}. Players see an event once it has started, and after
// it ended; an event that has not started yet is 404, so the schedule cannot be read early.
func handleEvent(rm *readModel) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := checkID(id); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		now := rm.now()
		e, ok := rm.snapshot().get(id)
		if !ok || now.Before(e.Start) {
			writeError(w, http.StatusNotFound, "no event with id "+id)
			return
		}
		// The answer changes when the event ends (its status, for clients that compute one)
		// or is edited; an edit is a new snapshot entry.
		fresh := maxCacheAge
		if now.Before(e.End) {
			fresh = e.End.Sub(now)
		}
		serveCached(w, r, e.playerResponse(), fresh)
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

// serverError logs err in full and tells the client only that something went wrong, so no
// SQL or internal detail leaks.
func serverError(w http.ResponseWriter, log *logger, err error) {
	log.Error("internal error", "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}
