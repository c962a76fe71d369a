package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"liveops/eventspb"
)

// otlpReceiver is the trace endpoint of an OpenTelemetry Collector, in process: it keeps
// every span exported to it, over gRPC (the official TraceService) or HTTP (POST
// /v1/traces, protobuf), with the service.name of the resource that sent it.
type otlpReceiver struct {
	collectortracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []*tracepb.Span
	service map[*tracepb.Span]string
}

func (rc *otlpReceiver) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		var service string
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				rc.spans = append(rc.spans, s)
				rc.service[s] = service
			}
		}
	}
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

func (rc *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != "POST" || r.URL.Path != "/v1/traces" {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	req := &collectortracepb.ExportTraceServiceRequest{}
	if err == nil {
		err = proto.Unmarshal(body, req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, _ := rc.Export(r.Context(), req)
	b, _ := proto.Marshal(resp)
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(b)
}

// startOTLPReceiver starts a receiver for protocol (grpc or http/protobuf) on a free port of
// 127.0.0.1 and returns it with the URL to give OTEL_EXPORTER_OTLP_ENDPOINT.
func startOTLPReceiver(t testing.TB, protocol string) (*otlpReceiver, string) {
	t.Helper()
	rc := &otlpReceiver{service: map[*tracepb.Span]string{}}
	if protocol != "grpc" {
		srv := httptest.NewServer(rc)
		t.Cleanup(srv.Close)
		return rc, srv.URL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(gs, rc)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return rc, "http://" + ln.Addr().String()
}

// span returns the first span received that matches, or nil.
func (rc *otlpReceiver) span(match func(*tracepb.Span) bool) *tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, s := range rc.spans {
		if match(s) {
			return s
		}
	}
	return nil
}

// serviceOf returns the service.name of the resource that sent s.
func (rc *otlpReceiver) serviceOf(s *tracepb.Span) string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.service[s]
}

// attr returns a span attribute's value as text, "" when it is absent.
func attr(s *tracepb.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			if v, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_IntValue); ok {
				return strconv.FormatInt(v.IntValue, 10)
			}
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

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

func TestSpansReachACollector(t *testing.T) {
	for _, tt := range []struct{ protocol, engine string }{
		{"grpc", "sqlite"},
		{"http/protobuf", "postgres"},
	} {
		t.Run(tt.protocol+"/"+tt.engine, func(t *testing.T) {
			rc, endpoint := startOTLPReceiver(t, tt.protocol)
			ts := startServerEnv(t, testDSN(t, tt.engine), map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
				"OTEL_EXPORTER_OTLP_PROTOCOL": tt.protocol,
				"OTEL_TRACES_SAMPLER":         "always_on",
				"OTEL_SERVICE_NAME":           "liveops-test",
				"OTEL_BSP_SCHEDULE_DELAY":     "50",
			})

			// A player's read, as curl would send it from inside a trace.
			header, readTrace, readParent := traceparent()
			if code, body := ts.getWithHeaders(t, "/events", ts.user, "traceparent", header, "tracestate", "game=abc"); code != 200 {
				t.Fatalf("GET /events = %d %s", code, body)
			}
			// An admin's write, from another trace.
			header, writeTrace, writeParent := traceparent()
			created, err := ts.events.CreateEvent(withTrace(withKey(ts.admin), header), createReq("traced", t0, t0.Add(time.Hour), ""))
			if err != nil {
				t.Fatal(err)
			}

			var read, write *tracepb.Span
			waitFor(t, func() bool {
				read = rc.span(func(s *tracepb.Span) bool { return hex.EncodeToString(s.GetTraceId()) == readTrace })
				write = rc.span(func(s *tracepb.Span) bool {
					return hex.EncodeToString(s.GetTraceId()) == writeTrace && s.GetKind() == tracepb.Span_SPAN_KIND_SERVER
				})
				return read != nil && write != nil
			})
			for _, c := range []struct {
				span         *tracepb.Span
				name, parent string
				attrs        map[string]string
			}{
				{read, "GET /events", readParent, map[string]string{
					"http.route": "/events", "http.request.method": "GET", "http.response.status_code": "200",
					"url.path": "/events", "url.scheme": "http", "server.address": "127.0.0.1"}},
				{write, "liveops.v1.EventService/CreateEvent", writeParent, map[string]string{
					"rpc.system": "grpc", "rpc.service": "liveops.v1.EventService", "rpc.method": "CreateEvent",
					"rpc.grpc.status_code": "0"}},
			} {
				s := c.span
				if s.GetName() != c.name || s.GetKind() != tracepb.Span_SPAN_KIND_SERVER || hex.EncodeToString(s.GetParentSpanId()) != c.parent {
					t.Errorf("span %q, kind %v, parent %x; want %q, SERVER, the caller's span %s", s.GetName(), s.GetKind(), s.GetParentSpanId(), c.name, c.parent)
				}
				for k, want := range c.attrs {
					if got := attr(s, k); got != want {
						t.Errorf("%s: %s = %q; want %q", c.name, k, got, want)
					}
				}
				if got := rc.serviceOf(s); got != "liveops-test" {
					t.Errorf("%s: service.name = %q; want OTEL_SERVICE_NAME's liveops-test", c.name, got)
				}
			}
			if read.GetTraceState() != "game=abc" {
				t.Errorf("tracestate = %q; want the caller's game=abc carried on", read.GetTraceState())
			}

			// The write's database transaction and snapshot update are its children.
			system := map[string]string{"sqlite": "sqlite", "postgres": "postgresql"}[tt.engine]
			var tx, apply *tracepb.Span
			waitFor(t, func() bool {
				child := func(name string) *tracepb.Span {
					return rc.span(func(s *tracepb.Span) bool {
						return s.GetName() == name && string(s.GetParentSpanId()) == string(write.GetSpanId())
					})
				}
				tx, apply = child("db transaction create event"), child("snapshot apply")
				return tx != nil && apply != nil
			})
			if attr(tx, "db.system.name") != system || attr(tx, "db.operation.name") != "create event" {
				t.Errorf("transaction span attributes %v; want db.system.name %s and db.operation.name", tx.GetAttributes(), system)
			}

			// The audit log says which trace wrote.
			audit, err := ts.events.ListAuditLog(withKey(ts.admin), &eventspb.ListAuditLogRequest{})
			if err != nil || len(audit.GetRevisions()) != 1 || audit.GetRevisions()[0].GetTraceId() != writeTrace {
				t.Fatalf("ListAuditLog = %v, %v; want the create with trace_id %s", audit, err, writeTrace)
			}
			revs, err := ts.events.ListEventRevisions(withKey(ts.admin), &eventspb.ListEventRevisionsRequest{EventId: created.GetEvent().GetId()})
			if err != nil || revs.GetRevisions()[0].GetTraceId() != writeTrace {
				t.Fatalf("ListEventRevisions = %v, %v; want trace_id %s", revs, err, writeTrace)
			}

			if err := ts.stop(); err != nil {
				t.Fatal(err)
			}
			for _, rec := range accessLines(t, ts) {
				if rec["path"] == "/events" && rec["trace_id"] != readTrace {
					t.Errorf("access line %v; want trace_id %s", rec, readTrace)
				}
			}
		})
	}
}

// TestCollectorOutageCostsRequestsNothing points the exporter at a port nobody listens on.
// Spans wait in a queue for a background exporter that drops them when the queue is full,
// so requests must neither fail nor wait. Timings on a shared machine are noisy, so the
// bound is loose: an export that held requests up would hold them for the exporter's
// timeout (10 s), and all of these together must take well under that.
func TestCollectorOutageCostsRequestsNothing(t *testing.T) {
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		t.Run(protocol, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			down := "http://" + ln.Addr().String()
			ln.Close()
			ts := startServerEnv(t, filepath.Join(t.TempDir(), "liveops.db"), map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": down,
				"OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
				"OTEL_TRACES_SAMPLER":         "always_on",
				"OTEL_BSP_SCHEDULE_DELAY":     "10",
			}, "-shutdown-timeout", "1s")

			start := time.Now()
			for i := range 200 {
				if code, _, body := ts.get(t, "/events", ts.user); code != 200 {
					t.Fatalf("GET /events = %d %s", code, body)
				}
				if i%10 == 0 {
					if _, err := ts.events.CreateEvent(withKey(ts.admin), createReq("e", t0, t0.Add(time.Hour), "")); err != nil {
						t.Fatalf("CreateEvent with the collector down: %v", err)
					}
				}
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("220 requests took %v with the collector down; want well under the exporter's 10 s timeout", took)
			}
			// Stopping waits for the last spans for at most -shutdown-timeout.
			start = time.Now()
			if err := ts.stop(); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("stopping took %v with the collector down; want about -shutdown-timeout (1s)", took)
			}
		})
	}
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

func TestTracingConfig(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		endpoint string // "" for no export
		sampler  string // the SDK's description of the sampler
		err      string // the variable the error must name
	}{
		{"off by default", nil, "", "", ""},
		{"http by default, with the signal's path", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
			"http://collector:4318/v1/traces", "ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}", ""},
		{"http below a base path", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com/otlp/"},
			"https://otel.example.com/otlp/v1/traces", "", ""},
		{"grpc as given", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}, "http://collector:4317", "TraceIDRatioBased{0.01}", ""},
		{"always off", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "always_off"},
			"http://c:4318/v1/traces", "AlwaysOffSampler", ""},
		{"parent-based ratio", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
			"OTEL_TRACES_SAMPLER_ARG": "0.5"}, "http://c:4318/v1/traces", "ParentBased{root:TraceIDRatioBased{0.5},", ""},
		{"disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, "", "", ""},

		{"unknown sampler", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "sometimes"}, "", "", "OTEL_TRACES_SAMPLER:"},
		{"ratio above 1", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "traceidratio",
			"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "", "", "OTEL_TRACES_SAMPLER_ARG"},
		{"ratio not a number", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
			"OTEL_TRACES_SAMPLER_ARG": "half"}, "", "", "OTEL_TRACES_SAMPLER_ARG"},
		{"ratio NaN", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "traceidratio",
			"OTEL_TRACES_SAMPLER_ARG": "NaN"}, "", "", "OTEL_TRACES_SAMPLER_ARG"},
		{"http/json", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "", "", "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"endpoint without a scheme", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "", "", "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{"endpoint not http", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector:4317"}, "", "", "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{"disabled, misspelt", map[string]string{"OTEL_SDK_DISABLED": "yes"}, "", "", "OTEL_SDK_DISABLED"},
		{"batch delay not milliseconds", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_BSP_SCHEDULE_DELAY": "5s"}, "", "", "OTEL_BSP_SCHEDULE_DELAY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig(nil, func(k string) string { return tt.env[k] }, io.Discard, io.Discard)
			if tt.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.err) {
					t.Fatalf("parseConfig = %v; want an error naming %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := cfg.tracing
			if c.endpoint != tt.endpoint {
				t.Errorf("endpoint = %q; want %q", c.endpoint, tt.endpoint)
			}
			if tt.sampler != "" && !strings.HasPrefix(c.sampler.Description(), tt.sampler) {
				t.Errorf("sampler = %s; want %s", c.sampler.Description(), tt.sampler)
			}
		})
	}
	// A value that cannot be used stops the start, before the port is taken or a database made.
	db := filepath.Join(t.TempDir(), "x.db")
	env := map[string]string{"OTEL_TRACES_SAMPLER": "sometimes", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
	err := run(context.Background(), []string{"liveops", "-addr", "127.0.0.1:0", "-db", db}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "OTEL_TRACES_SAMPLER") {
		t.Fatalf("run = %v; want the start refused, naming OTEL_TRACES_SAMPLER", err)
	}
	if _, err := os.Stat(db); err == nil {
		t.Fatal("a start refused for its tracing settings created the database")
	}
}
