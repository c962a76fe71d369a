package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"liveops/eventspb"
)

func TestEveryRouteAndRPCHasARole(t *testing.T) {
	st := newTestStore(t)
	cfg, err := parseConfig(nil, func(string) string { return "" }, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := newService(context.Background(), cfg, st, time.Now, newLogger("text", io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	// addRoutes panics on a route routeRoles does not list; the other way round, every
	// entry of routeRoles must be a route the mux really serves.
	mux := http.NewServeMux()
	addRoutes(mux, &guard{}, st, svc.events, svc.ready, newAnswerCache(1, 1), nil, svc.metrics, targeting{}, false, 0, cors{})
	for pattern := range routeRoles {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok {
			method, path = "DELETE", pattern
		}
		path = strings.ReplaceAll(path, "{id}", newID())
		if path == "/" {
			path = "/no/such/path"
		}
		if _, got := mux.Handler(httptest.NewRequest(method, path, nil)); got != pattern {
			t.Errorf("routeRoles names %q, but %s %s is served by %q", pattern, method, path, got)
		}
	}

	methods := map[string]bool{}
	for name, info := range svc.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			method := "/" + name + "/" + m.Name
			methods[method] = true
			if _, ok := rpcRoles[method]; !ok {
				t.Errorf("RPC %s has no entry in rpcRoles", method)
			}
		}
	}
	for name := range rpcRoles {
		if !methods[name] {
			t.Errorf("rpcRoles names %s, which no registered service has", name)
		}
	}
}

func TestFailureLimiter(t *testing.T) {
	clock := t0
	l := newFailureLimiter(3, time.Minute, 5*time.Minute, func() time.Time { return clock })
	for i := range 3 {
		l.fail("10.0.0.1")
		if d := l.blockedFor("10.0.0.1"); d != 0 {
			t.Fatalf("blocked after %d failures; the limit is 3", i+1)
		}
	}
	l.fail("10.0.0.1")
	if d := l.blockedFor("10.0.0.1"); d != 5*time.Minute {
		t.Fatalf("after 4 failures blockedFor = %v; want 5m", d)
	}
	if d := l.blockedFor("10.0.0.2"); d != 0 {
		t.Fatalf("another address is blocked too (%v)", d)
	}
	clock = clock.Add(5 * time.Minute)
	if d := l.blockedFor("10.0.0.1"); d != 0 {
		t.Fatalf("still blocked after the block ended (%v)", d)
	}

	// Failures spread over windows never add up to a block.
	for range 10 {
		l.fail("10.0.0.3")
		l.fail("10.0.0.3")
		clock = clock.Add(time.Minute)
	}
	if d := l.blockedFor("10.0.0.3"); d != 0 {
		t.Fatalf("2 failures a minute led to a block (%v)", d)
	}

	// IPv6 addresses count per /64: a host rotating through its prefix gains nothing.
	l.fail("2001:db8:1:2::1")
	l.fail("2001:db8:1:2::2")
	l.fail("2001:db8:1:2:ffff::3")
	l.fail("2001:db8:1:2::4")
	if d := l.blockedFor("2001:db8:1:2::99"); d == 0 {
		t.Fatal("four failures from one /64 did not block it")
	}
	if d := l.blockedFor("2001:db8:1:3::1"); d != 0 {
		t.Fatal("a neighbouring /64 is blocked too")
	}

	// Once failures stop, the table empties and the fast path is back.
	clock = clock.Add(10 * time.Minute)
	l.blockedFor("10.0.0.9")
	if n := l.tracked.Load(); n != 0 {
		t.Fatalf("%d addresses still tracked long after their failures", n)
	}
}

func TestFailureLimiterStaysBounded(t *testing.T) {
	clock := t0
	l := newFailureLimiter(0, time.Minute, time.Hour, func() time.Time { return clock })
	for i := range maxTrackedAddrs {
		l.fail(fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255)) // limit 0: each one blocked
	}
	// The table is full of blocked addresses: a new one is not tracked.
	for i := range 50 {
		l.fail(fmt.Sprintf("192.168.0.%d", i))
	}
	if n := l.tracked.Load(); n > maxTrackedAddrs {
		t.Fatalf("%d addresses tracked; the bound is %d", n, maxTrackedAddrs)
	}
	// Once blocks run out, new addresses evict old ones.
	clock = clock.Add(2 * time.Hour)
	l.mu.Lock()
	l.lastSweep = clock // keep the periodic sweep out of this part
	l.mu.Unlock()
	l.fail("172.16.0.1")
	if d := l.blockedFor("172.16.0.1"); d == 0 {
		t.Fatal("a new address in a full table of expired blocks was not tracked")
	}
}

func TestFailedAuthIsThrottled(t *testing.T) {
	ts := startServer(t, "-auth-fail-limit", "3", "-auth-block", "1h")
	unknown, _, _ := newKey(roleHTTPUser, "", time.Now(), 0)

	// Requests without any key are not guesses and do not count.
	for range 5 {
		if code, _, _ := ts.get(t, "/events", ""); code != 401 {
			t.Fatalf("no key: %d; want 401", code)
		}
	}
	for i := range 4 {
		if code, _, _ := ts.get(t, "/events", unknown); code != 401 {
			t.Fatalf("bad key %d: %d; want 401", i+1, code)
		}
	}
	// Now bad keys from this address are refused before they are looked at, on both
	// protocols...
	code, hdr, body := ts.get(t, "/events", unknown)
	if code != 429 || hdr.Get("Retry-After") == "" || !strings.Contains(string(body), "too many failed") {
		t.Fatalf("bad key after 4 failures: %d %q %s; want 429 with Retry-After", code, hdr.Get("Retry-After"), body)
	}
	_, err := ts.events.ListEvents(withKey("lo_admin_guess"), &eventspb.ListEventsRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("gRPC bad key after failures: %v; want RESOURCE_EXHAUSTED", err)
	}
	// A request with no key at all is told so, throttled or not.
	if code, _, body := ts.get(t, "/events", ""); code != 401 || !strings.Contains(string(body), "missing API key") {
		t.Fatalf("no key from a throttled address: %d %s; want 401", code, body)
	}
	// ...but players with valid keys behind the same address (a carrier NAT, an office
	// router) are never locked out by someone else's scan.
	if code, _, body := ts.get(t, "/events", ts.user); code != 200 {
		t.Fatalf("valid key from a throttled address: %d %s; want 200", code, body)
	}
	if _, err := ts.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{}); err != nil {
		t.Fatalf("valid admin key from a throttled address: %v", err)
	}
	// Public endpoints stay open.
	if code, _, _ := ts.get(t, "/healthz", ""); code != 200 {
		t.Fatalf("/healthz while throttled: %d", code)
	}
	if _, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health while throttled: %v", err)
	}
}

func TestGRPCFailedAuthIsThrottled(t *testing.T) {
	ts := startServer(t, "-auth-fail-limit", "2")
	for range 3 {
		_, err := ts.events.ListEvents(withKey(ts.user), &eventspb.ListEventsRequest{}) // wrong role: not a failure
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("wrong role: %v", err)
		}
	}
	for range 3 {
		_, err := ts.events.ListEvents(withKey("lo_admin_guess"), &eventspb.ListEventsRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("bad key: %v", err)
		}
	}
	_, err := ts.events.ListEvents(withKey("lo_admin_guess"), &eventspb.ListEventsRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("after 3 failures with a limit of 2: %v; want RESOURCE_EXHAUSTED", err)
	}
	// The refusal says when to come back, as HTTP's Retry-After does.
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Fatalf("RESOURCE_EXHAUSTED details = %v; want a RetryInfo with a delay", status.Convert(err).Details())
	}
	if _, err := ts.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{}); err != nil {
		t.Fatalf("a valid key from the throttled address: %v", err)
	}
}

func TestTwoKeysAreRefused(t *testing.T) {
	ts := startServer(t)
	req, _ := http.NewRequest("GET", "http://"+ts.addr+"/events", nil)
	req.Header.Add("Authorization", "Bearer "+ts.user)
	req.Header.Add("Authorization", "Bearer "+ts.user)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(string(body), "more than one") {
		t.Fatalf("two Authorization headers: %d %s; want 401", resp.StatusCode, body)
	}

	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+ts.admin, "authorization", "Bearer "+ts.admin)
	if _, err := ts.events.ListEvents(ctx, &eventspb.ListEventsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("two authorization metadata values: %v; want UNAUTHENTICATED", err)
	}
}

func TestKeyInQueryStringIsRefused(t *testing.T) {
	ts := startServer(t)
	for _, q := range []string{"key", "api_key", "apikey", "access_token", "token", "authorization"} {
		code, _, body := ts.get(t, "/events?"+q+"="+ts.user, "")
		if code != 400 || !strings.Contains(string(body), q+": unknown query parameter") {
			t.Errorf("key in ?%s=: %d %s; want 400 naming the parameter", q, code, body)
		}
		if strings.Contains(string(body), ts.user) {
			t.Errorf("the key sent in ?%s= came back in the answer", q)
		}
	}
}

func TestInvalidArgumentNamesTheField(t *testing.T) {
	ts := startServer(t)
	req := createReq("", t0, t0.Add(time.Hour), "")
	_, err := ts.events.CreateEvent(withKey(ts.admin), req)
	var violations []*errdetails.BadRequest_FieldViolation
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			violations = append(violations, br.GetFieldViolations()...)
		}
	}
	if status.Code(err) != codes.InvalidArgument || len(violations) != 1 || violations[0].GetField() != "title" {
		t.Fatalf("CreateEvent without title: %v, violations %v; want one BadRequest violation for title", err, violations)
	}
	if code, _, body := ts.get(t, "/events/nope", ts.user); code != 400 || !strings.Contains(string(body), "id:") {
		t.Fatalf("GET /events/nope = %d %s; want 400 naming id", code, body)
	}
}

func TestTransportLimits(t *testing.T) {
	ts := startServer(t,
		"-read-header-timeout", "200ms",
		"-max-header-bytes", "4096",
		"-http2-max-streams", "2",
		"-grpc-max-recv-bytes", "2048",
	)

	t.Run("slow headers are cut off", func(t *testing.T) {
		conn, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n") // and never the blank line
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("server kept a connection with unfinished headers open for 5s")
		}
	})

	t.Run("large headers are refused", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+ts.addr+"/healthz", nil)
		req.Header.Set("X-Padding", strings.Repeat("a", 8192))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("8 KiB header with a 4 KiB cap: %d; want 431", resp.StatusCode)
		}
	})

	t.Run("large gRPC messages are refused", func(t *testing.T) {
		req := createReq("big", t0, t0.Add(time.Hour), `["`+strings.Repeat("x", 4096)+`"]`)
		_, err := ts.events.CreateEvent(withKey(ts.admin), req)
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("4 KiB message with a 2 KiB cap: %v; want RESOURCE_EXHAUSTED", err)
		}
	})

	t.Run("HTTP/2 streams per connection are capped", func(t *testing.T) {
		// Two long-lived streams use up the connection's quota; a third call must wait.
		hc := healthpb.NewHealthClient(ts.conn)
		ctx, cancel := context.WithCancel(withKey(ts.admin))
		defer cancel()
		for range 2 {
			w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Recv(); err != nil {
				t.Fatal(err)
			}
		}
		short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancelShort()
		_, err := hc.Check(short, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("third concurrent stream: %v; want it held back (DEADLINE_EXCEEDED)", err)
		}
		cancel() // free the two streams
		if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("after the streams ended: %v", err)
		}
	})

	t.Run("GET with a body is refused", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+ts.addr+"/events", strings.NewReader(`{"x":1}`))
		req.Header.Set("Authorization", "Bearer "+ts.user)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "body") {
			t.Fatalf("GET with a body: %d %s; want 400", resp.StatusCode, body)
		}
	})

	t.Run("gRPC over HTTP/1.1 gets a JSON 400", func(t *testing.T) {
		resp, err := http.Post("http://"+ts.addr+"/liveops.v1.EventService/ListEvents", "application/grpc", strings.NewReader("\x00\x00\x00\x00\x00"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(body), "HTTP/2") {
			t.Fatalf("gRPC over HTTP/1.1: %d %s %s; want a JSON 400 saying HTTP/2", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	})

	t.Run("application/grpc+proto reaches gRPC", func(t *testing.T) {
		_, err := ts.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{}, grpc.CallContentSubtype("proto"))
		if err != nil {
			t.Fatalf("ListEvents as application/grpc+proto: %v", err)
		}
	})
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc":               true,
		"application/grpc+proto":         true,
		"application/grpc+json":          true,
		"application/grpc;charset=utf-8": true,
		"application/grpcx":              false,
		"application/grpc-web":           false,
		"application/json":               false,
		"":                               false,
	} {
		if got := isGRPC(ct); got != want {
			t.Errorf("isGRPC(%q) = %v; want %v", ct, got, want)
		}
	}
}

func TestSecurityHeaders(t *testing.T) {
	ts := startServer(t)
	for _, path := range []string{"/events", "/healthz", "/nope"} {
		_, hdr, _ := ts.get(t, path, ts.user)
		if hdr.Get("X-Content-Type-Options") != "nosniff" || hdr.Get("Cache-Control") == "" {
			t.Errorf("%s: X-Content-Type-Options %q, Cache-Control %q", path, hdr.Get("X-Content-Type-Options"), hdr.Get("Cache-Control"))
		}
	}
}
