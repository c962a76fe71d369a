package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"liveops/eventspb"
)

// accessLines returns the server's access-log lines (the server must be stopped, or its
// batch flushed), each as its JSON fields.
func accessLines(t *testing.T, ts *testServer) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(ts.logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "request" {
			out = append(out, rec)
		}
	}
	return out
}

// traceparent returns a new traceparent header value, sampled, and its trace and parent
// ids in hex.
func traceparent() (header, traceID, spanID string) {
	tid, sid := newTraceID(), newTraceID()
	traceID, spanID = tid.String(), hex.EncodeToString(sid[:8])
	return "00-" + traceID + "-" + spanID + "-01", traceID, spanID
}

// withTrace returns ctx sending the traceparent header as gRPC metadata.
func withTrace(ctx context.Context, header string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "traceparent", header)
}

// getWithHeaders sends GET path with key and the headers in pairs, and returns the status
// and body.
func (ts *testServer) getWithHeaders(t *testing.T, path, key string, pairs ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+ts.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for i := 0; i < len(pairs); i += 2 {
		req.Header.Set(pairs[i], pairs[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// TestTraceIDsWithoutAnEndpoint checks what needs no collector: every request has a trace
// id, the caller's when it sends a valid one, in its access-log line and in what it writes.
func TestTraceIDsWithoutAnEndpoint(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	header, readTrace, _ := traceparent()
	ts.getWithHeaders(t, "/events", ts.user, "traceparent", header)
	ts.getWithHeaders(t, "/livez", "")
	ts.getWithHeaders(t, "/livez", "")
	// Uppercase hex is not a valid traceparent: the request gets a trace of its own.
	header, badTrace, _ := traceparent()
	ts.getWithHeaders(t, "/readyz", "", "traceparent", strings.ToUpper(header))
	header, writeTrace, _ := traceparent()
	if _, err := ts.events.CreateEvent(withTrace(admin, header), createReq("traced", t0, t0.Add(time.Hour), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.events.CreateEvent(admin, createReq("untraced", t0, t0.Add(time.Hour), "")); err != nil {
		t.Fatal(err)
	}
	audit, err := ts.events.ListAuditLog(admin, &eventspb.ListAuditLogRequest{})
	if err != nil || len(audit.GetRevisions()) != 2 {
		t.Fatal(audit, err)
	}
	audited := map[string]string{} // title -> trace id
	for _, r := range audit.GetRevisions() {
		audited[r.GetEvent().GetTitle()] = r.GetTraceId()
	}
	if audited["traced"] != writeTrace {
		t.Errorf("audit trace_id = %q; want the caller's %s", audited["traced"], writeTrace)
	}
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}

	logged := map[string][]string{} // path -> trace ids, in order
	seen := map[string]bool{}
	for _, rec := range accessLines(t, ts) {
		id, _ := rec["trace_id"].(string)
		if b, err := hex.DecodeString(id); err != nil || len(b) != 16 || strings.Trim(id, "0") == "" {
			t.Errorf("access line %v; want a trace_id of 32 hex digits", rec)
		}
		if seen[id] {
			t.Errorf("trace_id %s logged twice; each request without a traceparent needs its own", id)
		}
		seen[id] = true
		path := rec["path"].(string)
		logged[path] = append(logged[path], id)
	}
	for path, want := range map[string][]string{
		"/events":                              {readTrace},
		"/liveops.v1.EventService/CreateEvent": {writeTrace, audited["untraced"]},
	} {
		if got := logged[path]; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s logged trace ids %v; want %v", path, got, want)
		}
	}
	if len(logged["/livez"]) != 2 || len(logged["/readyz"]) != 1 || logged["/readyz"][0] == badTrace {
		t.Errorf("logged %v; want two /livez and one /readyz line, none with the invalid traceparent's id", logged)
	}
}

// TestInternalErrorsNameTheTrace breaks the database under a running server, so that a
// write and a key look-up fail unexpectedly: the caller is told nothing but the trace id,
// and the access log has the cause beside that id.
func TestInternalErrorsNameTheTrace(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	if _, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{}); err != nil { // the key is known from now on
		t.Fatal(err)
	}
	other := newTestStoreAt(t, ts.db)
	if _, err := other.db.Exec(`ALTER TABLE event_revisions RENAME TO event_revisions_gone`); err != nil {
		t.Fatal(err)
	}
	header, writeTrace, _ := traceparent()
	_, err := ts.events.CreateEvent(withTrace(admin, header), createReq("e", t0, t0.Add(time.Hour), ""))
	if want := "internal error (trace " + writeTrace + ")"; status.Code(err) != codes.Internal || status.Convert(err).Message() != want {
		t.Errorf("CreateEvent with the revisions table gone = %v; want INTERNAL %q", err, want)
	}

	if _, err := other.db.Exec(`ALTER TABLE api_keys RENAME TO api_keys_gone`); err != nil {
		t.Fatal(err)
	}
	unknown, _, _ := newKey(roleHTTPUser, "", time.Now(), 0) // well formed: only the database can say
	header, readTrace, _ := traceparent()
	code, body := ts.getWithHeaders(t, "/events", unknown, "traceparent", header)
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil || code != 500 || e.Error.TraceID != readTrace ||
		e.Error.Message != "internal error (trace "+readTrace+")" || e.Error.Code != 500 {
		t.Errorf("GET /events with the keys table gone = %d %s; want 500 with trace_id %s", code, body, readTrace)
	}

	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ trace, cause string }{{writeTrace, "event_revisions"}, {readTrace, "api_keys"}} {
		found := false
		for _, rec := range accessLines(t, ts) {
			found = found || rec["trace_id"] == want.trace && rec["level"] == "ERROR" && strings.Contains(rec["error"].(string), want.cause)
		}
		if !found {
			t.Errorf("no ERROR access line with trace_id %s and the cause (%s)", want.trace, want.cause)
		}
	}
}

func TestCallerTrace(t *testing.T) {
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, tt := range []struct {
		name    string
		headers []string
		ok      bool
		sampled bool
	}{
		{"sampled", []string{"00-" + tid + "-" + sid + "-01"}, true, true},
		{"not sampled", []string{"00-" + tid + "-" + sid + "-00"}, true, false},
		{"a later version with more fields", []string{"01-" + tid + "-" + sid + "-01-what-comes-next"}, true, true},
		{"none", nil, false, false},
		{"two", []string{"00-" + tid + "-" + sid + "-01", "00-" + tid + "-" + sid + "-01"}, false, false},
		{"version ff", []string{"ff-" + tid + "-" + sid + "-01"}, false, false},
		{"version 00 with more fields", []string{"00-" + tid + "-" + sid + "-01-x"}, false, false},
		{"uppercase", []string{"00-" + strings.ToUpper(tid) + "-" + sid + "-01"}, false, false},
		{"zero trace id", []string{"00-" + strings.Repeat("0", 32) + "-" + sid + "-01"}, false, false},
		{"zero span id", []string{"00-" + tid + "-" + strings.Repeat("0", 16) + "-01"}, false, false},
		{"short", []string{"00-" + tid[:31] + "-" + sid + "-01"}, false, false},
		{"not hex", []string{"00-" + tid[:31] + "g-" + sid + "-01"}, false, false},
		{"wrong separator", []string{"00_" + tid + "-" + sid + "-01"}, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.headers {
				h.Add("traceparent", v)
			}
			gotTID, gotSID, flags, ok := callerTrace(h)
			if ok != tt.ok {
				t.Fatalf("callerTrace(%q) ok = %v; want %v", tt.headers, ok, tt.ok)
			}
			if ok && (gotTID.String() != tid || gotSID.String() != sid || flags.IsSampled() != tt.sampled) {
				t.Fatalf("callerTrace(%q) = %s %s %v; want %s %s sampled=%v", tt.headers, gotTID, gotSID, flags, tid, sid, tt.sampled)
			}
		})
	}
}
