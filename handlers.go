package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
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

// handleEvents serves GET /events: the events active now.
func handleEvents(st *store, now func() time.Time, log *slog.Logger) http.Handler {
	type response struct {
		Events []eventJSON `json:"events"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		events, err := st.ActiveEvents(r.Context(), now())
		if err != nil {
			serverError(w, log, err)
			return
		}
		resp := response{Events: make([]eventJSON, 0, len(events))}
		for _, e := range events {
			resp.Events = append(resp.Events, toJSON(e))
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

// handleEvent serves GET /events/{id}. Players see an event once it has started, and after
// it ended; an event that has not started yet is 404, so the schedule cannot be read early.
func handleEvent(st *store, now func() time.Time, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := checkID(id); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		e, err := st.Event(r.Context(), id)
		if err == nil && now().Before(e.Start) {
			err = errNotFound
		}
		switch {
		case errors.Is(err, errNotFound):
			writeError(w, http.StatusNotFound, "no event with id "+id)
		case err != nil:
			serverError(w, log, err)
		default:
			writeJSON(w, http.StatusOK, toJSON(e))
		}
	})
}

// handleHealthz answers 200 when the database answers a query within a second, 503 otherwise.
func handleHealthz(st *store, log *slog.Logger) http.Handler {
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
func serverError(w http.ResponseWriter, log *slog.Logger, err error) {
	log.Error("internal error", "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}
