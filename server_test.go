package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// logSink collects a server's log output and reports the address from its "listening" line.
type logSink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	addrc chan string
	once  sync.Once
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.buf.Write(p)
	s.mu.Unlock()
	for _, line := range bytes.Split(p, []byte("\n")) {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" {
			s.once.Do(func() { s.addrc <- rec.Addr })
		}
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// testServer is the real server, started by run on 127.0.0.1:0, with a key of each role
// and clients for both protocols.
type testServer struct {
	addr   string
	db     string
	user   string // an http_user key
	admin  string // a grpc_admin key
	logs   *logSink
	events eventspb.EventServiceClient
	conn   *grpc.ClientConn
	stop   func() error // cancels run's context and returns what run returned
}

func startServer(t testing.TB, extraArgs ...string) *testServer {
	t.Helper()
	return startServerWith(t, filepath.Join(t.TempDir(), "liveops.db"), extraArgs...)
}

// startServerWith is startServer on the database db names (see testDSN).
func startServerWith(t testing.TB, db string, extraArgs ...string) *testServer {
	t.Helper()
	return startServerEnv(t, db, nil, extraArgs...)
}

// startServerEnv is startServerWith with env as the environment run reads.
func startServerEnv(t testing.TB, db string, env map[string]string, extraArgs ...string) *testServer {
	t.Helper()
	st, err := openStore(context.Background(), db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	user, err := createTestKey(t, st, roleHTTPUser)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := createTestKey(t, st, roleGRPCAdmin)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	return startServerOnEnv(t, db, user, admin, env, extraArgs...)
}

func startServerOn(t testing.TB, db, user, admin string, extraArgs ...string) *testServer {
	t.Helper()
	return startServerOnEnv(t, db, user, admin, nil, extraArgs...)
}

func startServerOnEnv(t testing.TB, db, user, admin string, env map[string]string, extraArgs ...string) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &logSink{addrc: make(chan string, 1)}
	args := append([]string{"liveops", "-addr", "127.0.0.1:0", "-db", db, "-log-format", "json"}, extraArgs...)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, func(k string) string { return env[k] }, io.Discard, logs) }()

	ts := &testServer{db: db, user: user, admin: admin, logs: logs}
	var once sync.Once
	var runErr error
	ts.stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Errorf("run: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	select {
	case ts.addr = <-logs.addrc:
	case err := <-done:
		t.Fatalf("run returned before listening: %v\n%s", err, logs)
	}
	ts.dial(t)
	return ts
}

// dial connects the test server's gRPC client.
func (ts *testServer) dial(t testing.TB) {
	t.Helper()
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ts.conn, ts.events = conn, eventspb.NewEventServiceClient(conn)
}

// withKey returns a context that sends key as gRPC authorization metadata.
func withKey(key string) context.Context {
	ctx := context.Background()
	if key == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// get sends an HTTP GET with key (if any) and returns the status, headers and body.
func (ts *testServer) get(t *testing.T, path, key string) (int, http.Header, []byte) {
	t.Helper()
	return ts.do(t, "GET", path, key)
}

func (ts *testServer) do(t *testing.T, method, path, key string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+ts.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
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
	return resp.StatusCode, resp.Header, body
}

type eventsBody struct {
	Events []map[string]any `json:"events"`
}

func createReq(title string, start, end time.Time, rewards string) *eventspb.CreateEventRequest {
	return &eventspb.CreateEventRequest{
		Title: title, Description: "about " + title,
		StartTime: timestamppb.New(start), EndTime: timestamppb.New(end), Rewards: rewards,
	}
}

func TestEndToEndStory(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ts := startServerWith(t, dsn)
		admin := withKey(ts.admin)
		now := time.Now().UTC()

		created, err := ts.events.CreateEvent(admin, createReq("Halloween", now.Add(-time.Hour), now.Add(time.Hour), `{"pumpkins": 3}`))
		if err != nil {
			t.Fatalf("CreateEvent: %v", err)
		}
		ev := created.GetEvent()
		if !validID(ev.GetId()) || ev.GetCreatedAt() == nil || !ev.GetCreatedAt().AsTime().Equal(ev.GetUpdatedAt().AsTime()) {
			t.Fatalf("created event = %v", ev)
		}
		if _, err := ts.events.CreateEvent(admin, createReq("Christmas", now.Add(24*time.Hour), now.Add(48*time.Hour), "")); err != nil {
			t.Fatal(err)
		}

		// Players see the active event, with rewards as a JSON object.
		code, hdr, body := ts.get(t, "/events", ts.user)
		if code != 200 || hdr.Get("Content-Type") != "application/json" {
			t.Fatalf("GET /events = %d %s %s", code, hdr.Get("Content-Type"), body)
		}
		var list eventsBody
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Events) != 1 || list.Events[0]["id"] != ev.GetId() || list.Events[0]["title"] != "Halloween" {
			t.Fatalf("GET /events = %s; want only Halloween", body)
		}
		if r, ok := list.Events[0]["rewards"].(map[string]any); !ok || r["pumpkins"] != 3.0 {
			t.Fatalf("rewards = %#v; want the JSON object itself", list.Events[0]["rewards"])
		}
		for _, f := range []string{"id", "title", "description", "start_time", "end_time", "rewards", "created_at", "updated_at"} {
			if _, ok := list.Events[0][f]; !ok {
				t.Errorf("event JSON lacks %q: %s", f, body)
			}
		}
		if s, _ := list.Events[0]["start_time"].(string); !strings.HasSuffix(s, "Z") {
			t.Errorf("start_time = %q; want RFC 3339 UTC", s)
		}

		code, _, body = ts.get(t, "/events/"+ev.GetId(), ts.user)
		if code != 200 || !strings.Contains(string(body), `"Halloween"`) {
			t.Fatalf("GET /events/{id} = %d %s", code, body)
		}

		// An update replaces fields, keeps created_at, bumps updated_at.
		upd, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{
			Id: ev.GetId(), Title: "Halloween Night", StartTime: ev.GetStartTime(), EndTime: ev.GetEndTime(), Rewards: "[]",
		})
		if err != nil {
			t.Fatalf("UpdateEvent: %v", err)
		}
		if u := upd.GetEvent(); u.GetTitle() != "Halloween Night" || u.GetDescription() != "" ||
			!u.GetCreatedAt().AsTime().Equal(ev.GetCreatedAt().AsTime()) || !u.GetUpdatedAt().AsTime().After(ev.GetUpdatedAt().AsTime()) {
			t.Fatalf("updated event = %v", u)
		}
		_, _, body = ts.get(t, "/events/"+ev.GetId(), ts.user)
		if !strings.Contains(string(body), `"Halloween Night"`) || !strings.Contains(string(body), `"rewards":[]`) {
			t.Fatalf("GET after update = %s", body)
		}
		got, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: ev.GetId()})
		if err != nil || got.GetEvent().GetTitle() != "Halloween Night" {
			t.Fatalf("GetEvent = %v, %v", got, err)
		}
		all, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{})
		if err != nil || len(all.GetEvents()) != 2 || all.GetEvents()[0].GetTitle() != "Halloween Night" {
			t.Fatalf("ListEvents = %v, %v; want both events, the earlier first", all, err)
		}

		del, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: ev.GetId()})
		if err != nil || !del.GetSuccess() {
			t.Fatalf("DeleteEvent = %v, %v", del, err)
		}
		if code, _, body := ts.get(t, "/events/"+ev.GetId(), ts.user); code != 404 {
			t.Fatalf("GET deleted event = %d %s; want 404", code, body)
		}
		if _, _, body := ts.get(t, "/events", ts.user); !strings.HasSuffix(strings.TrimSpace(string(body)), `"events":[]}`) {
			t.Fatalf("GET /events with nothing active = %s; want an empty array", body)
		}

		// The admin writes are logged with the key id and never the key. Access-log lines are
		// written in batches; stopping the server writes the last one.
		if err := ts.stop(); err != nil {
			t.Fatal(err)
		}
		logs := ts.logs.String()
		for _, action := range []string{"create", "update", "delete"} {
			if !strings.Contains(logs, `"msg":"admin write","action":"`+action+`","event_id":"`) {
				t.Errorf("no admin write log line for %s", action)
			}
		}
		if strings.Contains(logs, ts.admin) || strings.Contains(logs, ts.user) {
			t.Errorf("a key appears in the log")
		}
		if !strings.Contains(logs, `"proto":"grpc","path":"/liveops.v1.EventService/CreateEvent","code":"OK"`) ||
			!strings.Contains(logs, `"method":"GET","path":"/events","status":200`) {
			t.Errorf("request log lines missing:\n%s", logs)
		}
	})
}

func TestRoleMatrix(t *testing.T) {
	// Many refused keys from one address: keep the failure limit out of the way.
	ts := startServer(t, "-auth-fail-limit", "1000")
	st, err := openStore(context.Background(), ts.db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	revokedUser, revokedUserRec, _ := newKey(roleHTTPUser, "", time.Now(), 0)
	revokedAdmin, revokedAdminRec, _ := newKey(roleGRPCAdmin, "", time.Now(), 0)
	unknown, _, _ := newKey(roleGRPCAdmin, "", time.Now(), 0)
	for _, k := range []apiKey{revokedUserRec, revokedAdminRec} {
		if err := st.CreateKey(context.Background(), k); err != nil {
			t.Fatal(err)
		}
		if err := st.RevokeKey(context.Background(), k.ID); err != nil {
			t.Fatal(err)
		}
	}
	// The server learns of keys from the database, so wait until it sees the revoked ones:
	// a reload between a key's create and its revoke holds it as live until the next.
	waitFor(t, func() bool {
		c, _, _ := ts.get(t, "/events", revokedUser)
		_, err := ts.events.ListEvents(withKey(revokedAdmin), &eventspb.ListEventsRequest{})
		return c == 401 && status.Code(err) == codes.Unauthenticated
	})

	t.Run("http", func(t *testing.T) {
		tests := []struct {
			name string
			key  string
			want int
		}{
			{"no key", "", 401},
			{"malformed key", "not-a-key", 401},
			{"unknown key", unknown, 401},
			{"revoked key", revokedUser, 401},
			{"grpc_admin key", ts.admin, 403},
			{"http_user key", ts.user, 200},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				for _, path := range []string{"/events", "/events/" + newID()} {
					code, hdr, body := ts.get(t, path, tt.key)
					want := tt.want
					if want == 200 && path != "/events" {
						want = 404 // an unknown id, but past authorization
					}
					if code != want {
						t.Fatalf("GET %s = %d %s; want %d", path, code, body, want)
					}
					if code == 401 && hdr.Get("WWW-Authenticate") == "" {
						t.Errorf("401 without WWW-Authenticate")
					}
					if code >= 400 {
						var e struct {
							Error struct {
								Code    int
								Message string
							}
						}
						if json.Unmarshal(body, &e) != nil || e.Error.Code != code || e.Error.Message == "" {
							t.Errorf("error body = %s; want the JSON error shape", body)
						}
					}
				}
			})
		}
	})

	t.Run("grpc", func(t *testing.T) {
		tests := []struct {
			name string
			key  string
			want codes.Code
		}{
			{"no key", "", codes.Unauthenticated},
			{"malformed key", "not-a-key", codes.Unauthenticated},
			{"unknown key", unknown, codes.Unauthenticated},
			{"revoked key", revokedAdmin, codes.Unauthenticated},
			{"http_user key", ts.user, codes.PermissionDenied},
			{"grpc_admin key", ts.admin, codes.OK},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := ts.events.ListEvents(withKey(tt.key), &eventspb.ListEventsRequest{})
				if got := status.Code(err); got != tt.want {
					t.Fatalf("ListEvents: %v; want %v", err, tt.want)
				}
				_, err = ts.events.CreateEvent(withKey(tt.key), createReq("x", t0, t0.Add(time.Hour), ""))
				if got := status.Code(err); got != tt.want {
					t.Fatalf("CreateEvent: %v; want %v", err, tt.want)
				}
				if got := reflectionCode(t, ts.conn, tt.key, false); got != tt.want {
					t.Errorf("reflection v1: %v; want %v", got, tt.want)
				}
				if got := reflectionCode(t, ts.conn, tt.key, true); got != tt.want {
					t.Errorf("reflection v1alpha: %v; want %v", got, tt.want)
				}
				// An unknown method is never UNIMPLEMENTED to a caller without an admin key.
				err = ts.conn.Invoke(withKey(tt.key), "/liveops.v1.Secret/Enumerate", &emptypb.Empty{}, &emptypb.Empty{})
				want := tt.want
				if want == codes.OK {
					want = codes.Unimplemented
				}
				if got := status.Code(err); got != want {
					t.Errorf("unknown method: %v; want %v", err, want)
				}
			})
		}
	})

	t.Run("health needs no key", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Health/Check = %v, %v; want SERVING", resp, err)
		}
		code, _, body := ts.get(t, "/healthz", "")
		if code != 200 || !strings.Contains(string(body), `"ok"`) {
			t.Fatalf("GET /healthz = %d %s", code, body)
		}
	})
}

// reflectionCode lists services over server reflection with key and returns the status.
func reflectionCode(t *testing.T, conn *grpc.ClientConn, key string, alpha bool) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(withKey(key), 5*time.Second)
	defer cancel()
	var err error
	if alpha {
		var s reflectionv1alpha.ServerReflection_ServerReflectionInfoClient
		if s, err = reflectionv1alpha.NewServerReflectionClient(conn).ServerReflectionInfo(ctx); err == nil {
			// Send reports io.EOF when the server already ended the stream; Recv has the status.
			s.Send(&reflectionv1alpha.ServerReflectionRequest{MessageRequest: &reflectionv1alpha.ServerReflectionRequest_ListServices{}})
			_, err = s.Recv()
		}
	} else {
		var s reflectionv1.ServerReflection_ServerReflectionInfoClient
		if s, err = reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx); err == nil {
			s.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}})
			_, err = s.Recv()
		}
	}
	return status.Code(err)
}

// waitFor polls cond until it holds, failing the test after 5 seconds. It is for state that
// another goroutine or process changes, not for server readiness.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestChangesDuringStartupAreNoticed(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "liveops.db")
	st, err := openStore(ctx, path, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	secret, _ := createTestKey(t, st, roleHTTPUser)
	cfg, _ := parseConfig(nil, func(string) string { return "" }, io.Discard, io.Discard)
	log := newLogger("text", io.Discard)
	svc, err := newService(ctx, cfg, st, time.Now, log)
	if err != nil {
		t.Fatal(err)
	}
	// Between loading and the watcher's first look, another process revokes the key.
	keys, _ := st.Keys(ctx)
	other, _ := openStore(ctx, path, time.Now)
	defer other.Close()
	if err := other.RevokeKey(ctx, keys[0].ID); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchDatabase(wctx, st, svc.keys, svc.events, log, time.Hour, time.Hour, nil)
	}()
	defer func() { stop(); <-done }()
	// With an hour between polls, only the watcher's start can catch the revoke.
	waitFor(t, func() bool { _, err := svc.keys.authenticate(ctx, secret, true); return errors.Is(err, errRevokedKey) })
}

func TestRevokeFromAnotherProcessTakesEffect(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		// The default reload interval (1s) is what the 5-second promise rests on.
		ts := startServerWith(t, dsn)
		if code, _, _ := ts.get(t, "/events", ts.user); code != 200 {
			t.Fatalf("before revoke: %d", code)
		}
		// A second *sql.DB on the same file stands in for `liveops keys revoke` in another process.
		var out, errOut bytes.Buffer
		st, _ := openStore(context.Background(), ts.db, time.Now)
		keys, _ := st.Keys(context.Background())
		st.Close()
		var userID string
		for _, k := range keys {
			if k.Role == roleHTTPUser {
				userID = k.ID
			}
		}
		if err := run(context.Background(), []string{"liveops", "keys", "revoke", "-db", ts.db, userID}, func(string) string { return "" }, &out, &errOut); err != nil {
			t.Fatalf("keys revoke: %v (%s)", err, errOut.String())
		}
		// waitFor gives up after 5 s: the promise is a revoke enforced within a reload or two.
		waitFor(t, func() bool { c, _, _ := ts.get(t, "/events", ts.user); return c == 401 })
		_, _, body := ts.get(t, "/events", ts.user)
		if !strings.Contains(string(body), "revoked") {
			t.Errorf("401 body = %s; want it to say the key is revoked", body)
		}
	})
}

func TestGRPCErrors(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	valid := func() *eventspb.CreateEventRequest { return createReq("ok", t0, t0.Add(time.Hour), "{}") }
	tests := []struct {
		name  string
		req   func() *eventspb.CreateEventRequest
		field string
	}{
		{"missing title", func() *eventspb.CreateEventRequest { r := valid(); r.Title = ""; return r }, "title"},
		{"long title", func() *eventspb.CreateEventRequest { r := valid(); r.Title = strings.Repeat("x", 101); return r }, "title"},
		{"long description", func() *eventspb.CreateEventRequest {
			r := valid()
			r.Description = strings.Repeat("x", 1001)
			return r
		}, "description"},
		{"missing start", func() *eventspb.CreateEventRequest { r := valid(); r.StartTime = nil; return r }, "start_time"},
		{"missing end", func() *eventspb.CreateEventRequest { r := valid(); r.EndTime = nil; return r }, "end_time"},
		{"invalid start", func() *eventspb.CreateEventRequest {
			r := valid()
			r.StartTime = &timestamppb.Timestamp{Seconds: 1, Nanos: -1}
			return r
		}, "start_time"},
		{"end before start", func() *eventspb.CreateEventRequest { r := valid(); r.EndTime = r.StartTime; return r }, "end_time"},
		{"rewards not JSON", func() *eventspb.CreateEventRequest { r := valid(); r.Rewards = "{"; return r }, "rewards"},
		{"rewards a scalar", func() *eventspb.CreateEventRequest { r := valid(); r.Rewards = "42"; return r }, "rewards"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ts.events.CreateEvent(admin, tt.req())
			if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), tt.field+":") {
				t.Fatalf("CreateEvent = %v; want INVALID_ARGUMENT naming %s", err, tt.field)
			}
		})
	}
	list, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{})
	if err != nil || len(list.GetEvents()) != 0 {
		t.Fatalf("after rejected creates ListEvents = %v, %v; want nothing stored", list, err)
	}

	created, err := ts.events.CreateEvent(admin, valid())
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetEvent().GetId()
	bad := &eventspb.UpdateEventRequest{Id: id, Title: "", StartTime: timestamppb.New(t0), EndTime: timestamppb.New(t0.Add(time.Hour))}
	if _, err := ts.events.UpdateEvent(admin, bad); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invalid UpdateEvent = %v; want INVALID_ARGUMENT", err)
	}
	if got, _ := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: id}); got.GetEvent().GetTitle() != "ok" {
		t.Fatalf("a rejected update changed the event: %v", got)
	}

	unknown, malformed := newID(), "ABC"
	for _, c := range []struct {
		name string
		call func(id string) error
	}{
		{"GetEvent", func(id string) error {
			_, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: id})
			return err
		}},
		{"UpdateEvent", func(id string) error {
			r := &eventspb.UpdateEventRequest{Id: id, Title: "t", StartTime: timestamppb.New(t0), EndTime: timestamppb.New(t0.Add(time.Hour))}
			_, err := ts.events.UpdateEvent(admin, r)
			return err
		}},
		{"DeleteEvent", func(id string) error {
			_, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: id})
			return err
		}},
	} {
		if err := c.call(unknown); status.Code(err) != codes.NotFound {
			t.Errorf("%s(unknown id) = %v; want NOT_FOUND", c.name, err)
		}
		if err := c.call(malformed); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s(malformed id) = %v; want INVALID_ARGUMENT", c.name, err)
		}
	}
}

func TestHTTPErrors(t *testing.T) {
	ts := startServer(t)
	now := time.Now().UTC()
	future, err := ts.events.CreateEvent(withKey(ts.admin), createReq("later", now.Add(time.Hour), now.Add(2*time.Hour), ""))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, path string
		want               int
		allow              string
	}{
		{"unknown path", "GET", "/nope", 404, ""},
		{"malformed id", "GET", "/events/NOT-A-UUID", 400, ""},
		{"uppercase id", "GET", "/events/" + strings.ToUpper(newID()), 400, ""},
		{"unknown id", "GET", "/events/" + newID(), 404, ""},
		{"event not started yet", "GET", "/events/" + future.GetEvent().GetId(), 404, ""},
		{"POST /events", "POST", "/events", 405, "GET, HEAD"},
		{"DELETE /events/{id}", "DELETE", "/events/" + newID(), 405, "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, body := ts.do(t, tt.method, tt.path, ts.user)
			if code != tt.want {
				t.Fatalf("%s %s = %d %s; want %d", tt.method, tt.path, code, body, tt.want)
			}
			if hdr.Get("Allow") != tt.allow {
				t.Errorf("Allow = %q; want %q", hdr.Get("Allow"), tt.allow)
			}
			var e struct {
				Error struct {
					Code    int
					Message string
				}
			}
			if hdr.Get("Content-Type") != "application/json" || json.Unmarshal(body, &e) != nil || e.Error.Code != code || e.Error.Message == "" {
				t.Errorf("body = %s (%s); want the JSON error shape", body, hdr.Get("Content-Type"))
			}
			if hdr.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("missing X-Content-Type-Options: nosniff")
			}
		})
	}
}

func TestReadinessReportsTheDatabaseAndDrains(t *testing.T) {
	st := newTestStore(t)
	hs := health.NewServer()
	rd := newReadiness(st, hs, newLogger("text", io.Discard))
	h := handleReadyz(rd)
	check := func(want int, wantHealth healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		rd.probe(context.Background())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		if rec.Code != want {
			t.Fatalf("GET /readyz = %d %s; want %d", rec.Code, rec.Body, want)
		}
		got, err := hs.Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || got.GetStatus() != wantHealth {
			t.Fatalf("health = %v, %v; want %v", got.GetStatus(), err, wantHealth)
		}
	}
	check(200, healthpb.HealthCheckResponse_SERVING)
	// Without its database the instance still serves players from memory: ready, with the
	// database's state in the body, and the admin API not serving.
	st.Close()
	check(200, healthpb.HealthCheckResponse_SERVING)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if !strings.Contains(rec.Body.String(), `"reads":"the database does not answer reads`) {
		t.Fatalf("/readyz without a database: %s; want the reads failure reported", rec.Body)
	}
	if got, _ := hs.Check(context.Background(), &healthpb.HealthCheckRequest{Service: eventService}); got.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("EventService health without a database: %v; want NOT_SERVING", got.GetStatus())
	}
	// Shutting down, it is not ready any more.
	rd.drain()
	check(503, healthpb.HealthCheckResponse_NOT_SERVING)
}

func TestShutdownReturnsCleanly(t *testing.T) {
	ts := startServer(t)
	if code, _, _ := ts.get(t, "/healthz", ""); code != 200 {
		t.Fatal(code)
	}
	if err := ts.stop(); err != nil {
		t.Fatalf("run after cancel = %v; want nil", err)
	}
	if _, err := http.Get("http://" + ts.addr + "/healthz"); err == nil {
		t.Fatal("server still accepts connections after shutdown")
	}
	if !strings.Contains(ts.logs.String(), `"msg":"stopped"`) {
		t.Error("no 'stopped' log line")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-log-format", "xml"},
		{"-tls-cert", "cert.pem"},
		{"extra"},
		{"-nosuchflag"},
		{"-shared-cache-max-age", "31s"},
		{"-shared-cache-max-age", "1500ms"},
		{"-shared-cache-max-age", "-1s"},
	} {
		if _, err := parseConfig(args, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
			t.Errorf("parseConfig(%q) = nil error", args)
		}
	}
	env := map[string]string{"LIVEOPS_ADDR": "127.0.0.1:9999", "LIVEOPS_DB": "x.db", "LIVEOPS_LOG_FORMAT": "json", "LIVEOPS_SHARED_CACHE_MAX_AGE": "5s"}
	cfg, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err != nil || cfg.addr != "127.0.0.1:9999" || cfg.db != "x.db" || cfg.logFormat != "json" || cfg.sharedCacheMaxAge != 5*time.Second {
		t.Fatalf("env fallback: %+v, %v", cfg, err)
	}
	cfg, _ = parseConfig([]string{"-addr", ":1"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if cfg.addr != ":1" {
		t.Fatalf("a flag must win over the environment: addr = %q", cfg.addr)
	}
	cfg, _ = parseConfig(nil, func(string) string { return "" }, io.Discard, io.Discard)
	if cfg.addr != ":8080" || cfg.db != "liveops.db" || cfg.logFormat != "text" || cfg.sharedCacheMaxAge != 0 {
		t.Fatalf("defaults = %+v", cfg)
	}
}

func TestShutdownCutsLongStreamsAfterGrace(t *testing.T) {
	ts := startServer(t, "-shutdown-timeout", "200ms")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch, err := healthpb.NewHealthClient(ts.conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch reply = %v, %v; want SERVING", resp, err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- ts.stop() }()
	// The watcher hears NOT_SERVING before its stream is cut.
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch during shutdown = %v, %v; want NOT_SERVING", resp, err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("run = %v; want nil after the grace period", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after the grace period")
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pool := writeSelfSignedCert(t, certFile, keyFile)
	ts := startServer(t, "-tls-cert", certFile, "-tls-key", keyFile)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	req, _ := http.NewRequest("GET", "https://"+ts.addr+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+ts.user)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("HTTPS GET /events = %d over %s; want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}

	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(pool, "")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := eventspb.NewEventServiceClient(conn).ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{}); err != nil {
		t.Fatalf("ListEvents over TLS: %v", err)
	}
}

// writeSelfSignedCert writes a certificate for 127.0.0.1 and its key, and returns a pool
// that trusts it.
func writeSelfSignedCert(t *testing.T, certFile, keyFile string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "liveops test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func TestSharedCacheMaxAge(t *testing.T) {
	type answer struct{ path, key, cacheControl string }
	// answers reads the routes players call, and ones that fail, on a server started with
	// args, with one event active for a long while and one that ends in 3 seconds.
	answers := func(t *testing.T, args ...string) []answer {
		ts := startServer(t, args...)
		admin := withKey(ts.admin)
		now := time.Now().UTC()
		long, err := ts.events.CreateEvent(admin, createReq("long", now.Add(-time.Hour), now.Add(time.Hour), ""))
		if err != nil {
			t.Fatal(err)
		}
		var header metadata.MD
		short, err := ts.events.CreateEvent(admin, createReq("short", now.Add(-time.Hour), now.Add(3*time.Second), ""), grpc.Header(&header))
		if err != nil {
			t.Fatal(err)
		}
		// An admin's answer is never cacheable.
		if cc := header.Get("cache-control"); len(cc) > 0 {
			t.Errorf("gRPC CreateEvent sent Cache-Control %q; want none", cc)
		}
		var got []answer
		for _, a := range []answer{
			{path: "/events/" + long.GetEvent().GetId(), key: ts.user},
			{path: "/events/" + short.GetEvent().GetId(), key: ts.user},
			{path: "/events", key: ts.user}, // holds short, so it changes in 3 s too
			{path: "/events", key: ""},
			{path: "/events", key: ts.admin},
			{path: "/events/" + newID(), key: ts.user},
			{path: "/events?stauts=active", key: ts.user},
		} {
			code, hdr, _ := ts.get(t, a.path, a.key)
			if vary := hdr.Get("Vary"); code == 200 && vary != "Authorization, Accept-Encoding" {
				t.Errorf("GET %s: Vary %q; want Authorization, Accept-Encoding", a.path, vary)
			}
			a.cacheControl = fmt.Sprintf("%d %s", code, hdr.Get("Cache-Control"))
			got = append(got, a)
		}
		return got
	}
	check := func(t *testing.T, got []answer, want ...string) {
		t.Helper()
		for i, a := range got {
			// The answers with short in them change in 3 s or less, depending on when
			// they were read; s-maxage must not run past that.
			if w := want[i]; strings.Contains(w, "≤3") {
				ok := false
				for n := range 4 {
					ok = ok || a.cacheControl == strings.ReplaceAll(w, "≤3", strconv.Itoa(n))
				}
				if !ok {
					t.Errorf("GET %s (key %.8s): %q; want %q", a.path, a.key, a.cacheControl, w)
				}
			} else if a.cacheControl != w {
				t.Errorf("GET %s (key %.8s): %q; want %q", a.path, a.key, a.cacheControl, w)
			}
		}
	}
	// Refusals are never cacheable.
	refusals := []string{"401 no-store", "403 no-store", "404 no-store", "400 no-store"}
	t.Run("off", func(t *testing.T) {
		check(t, answers(t), append([]string{"200 max-age=30", "200 max-age=≤3", "200 max-age=≤3"}, refusals...)...)
	})
	t.Run("5s", func(t *testing.T) {
		check(t, answers(t, "-shared-cache-max-age", "5s"), append([]string{
			"200 public, max-age=5, s-maxage=5",
			"200 public, max-age=≤3, s-maxage=≤3",
			"200 public, max-age=≤3, s-maxage=≤3",
		}, refusals...)...)
	})
}
