package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcgzip "google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// Tests of liveops under broken and hostile clients, against the real server on
// 127.0.0.1:0, with a client that speaks raw HTTP/2 frames where a polite client would not
// do what an attacker does.

// h2conn is a raw HTTP/2 client connection.
type h2conn struct {
	t      testing.TB
	conn   net.Conn
	fr     *http2.Framer
	mu     sync.Mutex // guards writes to fr
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	nextID uint32
}

// dialH2 opens an h2c connection with prior knowledge, announcing initialWindow as the
// client's receive window for every stream.
func dialH2(t testing.TB, addr string, initialWindow uint32) *h2conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	c := &h2conn{t: t, conn: conn, fr: http2.NewFramer(conn, bufio.NewReader(conn)), nextID: 1}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.encBuf)
	if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: initialWindow}); err != nil {
		t.Fatal(err)
	}
	return c
}

// open sends a HEADERS frame for a new stream and returns its id; a write error fails the test.
func (c *h2conn) open(method, path string, endStream bool, headers ...string) uint32 {
	id, err := c.tryOpen(method, path, endStream, headers...)
	if err != nil {
		c.t.Errorf("write headers: %v", err)
	}
	return id
}

// tryOpen is open, returning the write error.
func (c *h2conn) tryOpen(method, path string, endStream bool, headers ...string) (uint32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.encBuf.Reset()
	fields := append([]string{":method", method, ":scheme", "http", ":authority", "liveops", ":path", path}, headers...)
	for i := 0; i < len(fields); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	id := c.nextID
	c.nextID += 2
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.encBuf.Bytes(),
		EndStream: endStream, EndHeaders: true})
	return id, err
}

func (c *h2conn) data(id uint32, b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fr.WriteData(id, false, b)
}

func (c *h2conn) reset(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
}

// readLoop reads frames until the connection ends, acknowledging SETTINGS and PING, and
// calls onHeaders for every response header block.
func (c *h2conn) readLoop(onHeaders func(id uint32, fields []hpack.HeaderField)) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.mu.Lock()
				c.fr.WriteSettingsAck()
				c.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.mu.Lock()
				c.fr.WritePing(true, f.Data)
				c.mu.Unlock()
			}
		case *http2.MetaHeadersFrame:
			if onHeaders != nil {
				onHeaders(f.StreamID, f.Fields)
			}
		}
	}
}

// heapInUse is the bytes of live heap objects, as the runtime counts them now.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// maxHeapDuring samples the heap every 10 ms until done is closed and returns the most it
// grew over before.
func maxHeapDuring(done <-chan struct{}) func() uint64 {
	runtime.GC()
	before := heapInUse()
	peak := before
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				peak = max(peak, heapInUse())
			}
		}
	}()
	return func() uint64 {
		<-finished
		if raceEnabled {
			return 0
		}
		return peak - before
	}
}

func TestKeylessGRPCBodiesAreNotRead(t *testing.T) {
	ts := startServer(t)
	// Within the server's 1 MiB connection window, so that this client needs no flow control.
	const conns, streams = 2, 50
	// A gRPC frame header announcing a 1 MiB message, then 16 KiB of it, and never the rest:
	// grpc-go alone would wait for the whole message before anything checked the key.
	prefix := []byte{0, 0, 0x10, 0, 0}
	chunk := make([]byte, 16<<10)
	done := make(chan struct{})
	growth := maxHeapDuring(done)

	var mu sync.Mutex
	answered := map[string]int{} // grpc-status -> streams
	var wg sync.WaitGroup
	for range conns {
		c := dialH2(t, ts.addr, 1<<20)
		got := make(chan struct{}, streams)
		go c.readLoop(func(id uint32, fields []hpack.HeaderField) {
			for _, f := range fields {
				if f.Name == "grpc-status" {
					mu.Lock()
					answered[f.Value]++
					mu.Unlock()
					got <- struct{}{}
				}
			}
		})
		wg.Go(func() {
			for range streams {
				id := c.open("POST", "/liveops.v1.EventService/CreateEvent", false,
					"content-type", "application/grpc", "te", "trailers")
				c.data(id, prefix)
				c.data(id, chunk)
			}
			for range streams {
				select {
				case <-got:
				case <-time.After(10 * time.Second):
					t.Error("a keyless stream was never answered")
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	if answered["16"] != conns*streams {
		t.Fatalf("grpc-status of %d keyless streams: %v; want all 16 (UNAUTHENTICATED)", conns*streams, answered)
	}
	if g := growth(); g > 64<<20 {
		t.Fatalf("heap grew by %d MiB while keyless streams sent bodies", g>>20)
	}
}

// seedBigAnswer gives the server 20 active and 100 upcoming previewed events whose
// descriptions and rewards make GET /events?status=active,upcoming a few hundred KB.
func seedBigAnswer(t testing.TB, ts *testServer) {
	t.Helper()
	admin := withKey(ts.admin)
	now := time.Now().UTC()
	rewards := `{"items":[` + strings.Repeat(`{"id":"chest","qty":1,"tier":"legendary"},`, 50) + `{"id":"gem","qty":5}]}`
	for i := range 120 {
		start := now.Add(-time.Hour)
		if i >= 20 {
			start = now.Add(time.Duration(i) * time.Hour)
		}
		req := createReq(fmt.Sprintf("event %d", i), start, start.Add(2*time.Hour), rewards)
		req.Description = strings.Repeat("A long description of a festival. ", 28)
		req.PreviewTime = timestamppb.New(now.Add(-2 * time.Hour))
		if _, err := ts.events.CreateEvent(admin, req); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStalledReadersShareOneAnswer(t *testing.T) {
	ts := startServer(t)
	seedBigAnswer(t, ts)
	code, _, body := ts.get(t, "/events?status=active,upcoming", ts.user)
	if code != 200 || len(body) < 200<<10 {
		t.Fatalf("the big answer is %d bytes (%d); want a few hundred KB", len(body), code)
	}
	const conns, streams = 4, 200
	done := make(chan struct{})
	growth := maxHeapDuring(done)
	var answered sync.WaitGroup
	for range conns {
		// A receive window of 0: the server may send headers but not one byte of body.
		c := dialH2(t, ts.addr, 0)
		answered.Add(streams)
		go c.readLoop(func(uint32, []hpack.HeaderField) { answered.Done() })
		for range streams {
			c.open("GET", "/events?status=active,upcoming", true, "authorization", "Bearer "+ts.user)
		}
	}
	waitDone := make(chan struct{})
	go func() { answered.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(15 * time.Second):
		t.Fatal("not every stalled stream got its headers")
	}
	// While 800 answers sit unsent, the service answers others.
	if code, _, _ := ts.get(t, "/livez", ""); code != 200 {
		t.Fatalf("/livez during the stall: %d", code)
	}
	if code, _, _ := ts.get(t, "/events", ts.user); code != 200 {
		t.Fatalf("GET /events during the stall: %d", code)
	}
	close(done)
	// 800 copies of the answer would be hundreds of MB; shared, it is one.
	if g := growth(); g > 64<<20 {
		t.Fatalf("heap grew by %d MiB while 800 readers stalled", g>>20)
	}
}

func TestRapidResetKeepsTheServiceUp(t *testing.T) {
	ts := startServer(t)
	seedBigAnswer(t, ts)
	done := make(chan struct{})
	growth := maxHeapDuring(done)
	stop := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				// The server hangs up on a connection that resets too much; the attacker
				// dials again.
				c := dialH2(t, ts.addr, 1<<20)
				go c.readLoop(nil)
				for time.Now().Before(stop) {
					id, err := c.tryOpen("GET", "/events?status=active,upcoming", true, "authorization", "Bearer "+ts.user)
					if err != nil {
						break
					}
					c.reset(id)
				}
				c.conn.Close()
			}
		})
	}
	// Liveness and a cached read keep answering throughout.
	var probes, failed int
	for time.Now().Before(stop) {
		probes++
		if code, _, _ := ts.get(t, "/livez", ""); code != 200 {
			failed++
		}
		if code, _, _ := ts.get(t, "/events", ts.user); code != 200 {
			failed++
		}
	}
	wg.Wait()
	close(done)
	if failed > 0 {
		t.Fatalf("%d of %d probes failed during the rapid reset", failed, 2*probes)
	}
	// Generous: the in-process test client's own frames count too; the attack script
	// measures the server alone against its 150 MB target.
	if g := growth(); g > 128<<20 {
		t.Fatalf("heap grew by %d MiB during the rapid reset", g>>20)
	}
}

func TestTooManyRequestsInFlightAreRefused(t *testing.T) {
	ts := startServer(t, "-max-in-flight", "10")
	seedBigAnswer(t, ts)
	// Ten stalled readers take every slot.
	c := dialH2(t, ts.addr, 0)
	var headers sync.WaitGroup
	headers.Add(10)
	go c.readLoop(func(uint32, []hpack.HeaderField) { headers.Done() })
	for range 10 {
		c.open("GET", "/events?status=active,upcoming", true, "authorization", "Bearer "+ts.user)
	}
	headers.Wait()
	code, hdr, body := ts.get(t, "/events", ts.user)
	if code != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(string(body), "too many requests in flight") {
		t.Fatalf("GET /events with every slot taken: %d %s; want 503 with Retry-After", code, body)
	}
	if _, err := ts.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("ListEvents with every slot taken: %v; want UNAVAILABLE", err)
	}
	if code, _, _ := ts.get(t, "/livez", ""); code != 200 {
		t.Fatalf("/livez with every slot taken: %d; want 200", code)
	}
	// Once the readers go, the slots come back.
	c.conn.Close()
	waitFor(t, func() bool { code, _, _ := ts.get(t, "/events", ts.user); return code == 200 })
}

func TestDocumentedHeaderLimitIsTheRealOne(t *testing.T) {
	ts := startServer(t)
	for _, size := range []int{15 << 10, 20000, 30000} {
		req, _ := http.NewRequest("GET", "http://"+ts.addr+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+ts.user)
		req.Header.Set("X-Padding", strings.Repeat("x", size))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := 431
		if size < 16<<10-200 {
			want = 200
		}
		if resp.StatusCode != want || (want == 431 && !strings.Contains(string(body), `"code":431`)) {
			t.Errorf("a %d-byte header: %d %s; want %d (JSON)", size, resp.StatusCode, body, want)
		}
	}
	// One range check for every spelling of a time: year 1 as seconds is refused like
	// year 1 in RFC 3339.
	_, err := ts.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{At: &timestamppb.Timestamp{Seconds: -62135596800}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "between 2000 and 2200") {
		t.Fatalf("ListEvents(at = year 1): %v; want INVALID_ARGUMENT naming the range", err)
	}
}

// grpcFrame frames a message as gRPC does: a compressed flag, a length and the bytes.
func grpcFrame(compressed bool, msg []byte) []byte {
	out := make([]byte, 5, 5+len(msg))
	if compressed {
		out[0] = 1
	}
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// h2cClient is a net/http client that speaks HTTP/2 without TLS, as gRPC clients do.
func h2cClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}, Timeout: 10 * time.Second}
}

// rawGRPC posts one framed message and returns the HTTP status, grpc-status,
// grpc-message and the response headers.
func rawGRPC(t *testing.T, addr, method, contentType, key string, headers map[string]string, body []byte) (int, string, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+method, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("TE", "trailers")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	get := func(name string) string {
		if v := resp.Trailer.Get(name); v != "" {
			return v
		}
		return resp.Header.Get(name)
	}
	return resp.StatusCode, get("Grpc-Status"), get("Grpc-Message"), resp.Header
}

func TestOtherLanguagesClients(t *testing.T) {
	ts := startServer(t)
	listReq, _ := proto.Marshal(&eventspb.ListEventsRequest{})
	list := "/liveops.v1.EventService/ListEvents"

	t.Run("gzip is accepted and advertised", func(t *testing.T) {
		_, err := ts.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{}, grpc.UseCompressor(grpcgzip.Name))
		if err != nil {
			t.Fatalf("a gzip-compressed call: %v", err)
		}
		_, code, _, hdr := rawGRPC(t, ts.addr, list, "application/grpc", ts.admin, nil, grpcFrame(false, listReq))
		if code != "0" || !strings.Contains(hdr.Get("Grpc-Accept-Encoding"), "gzip") {
			t.Fatalf("grpc-status %s, grpc-accept-encoding %q; want OK and gzip advertised", code, hdr.Get("Grpc-Accept-Encoding"))
		}
	})
	t.Run("a gzip bomb is refused", func(t *testing.T) {
		var zipped bytes.Buffer
		zw := gzip.NewWriter(&zipped)
		// A valid ListEventsRequest padded with an unknown field of 4 MiB of zeros.
		zw.Write(append([]byte{0x7a, 0x80, 0x80, 0x80, 0x02}, make([]byte, 4<<20)...))
		zw.Close()
		_, code, msg, _ := rawGRPC(t, ts.addr, list, "application/grpc", ts.admin, map[string]string{"Grpc-Encoding": "gzip"},
			grpcFrame(true, zipped.Bytes()))
		if code != "8" {
			t.Fatalf("a %d-byte gzip inflating to 4 MiB: grpc-status %s %q; want 8 (RESOURCE_EXHAUSTED)", zipped.Len(), code, msg)
		}
	})
	t.Run("without a key, any body is UNAUTHENTICATED", func(t *testing.T) {
		for name, body := range map[string][]byte{
			"oversized":   grpcFrame(false, make([]byte, 2<<20)),
			"undecodable": grpcFrame(false, []byte{0xff, 0xff, 0xff}),
			"compressed":  grpcFrame(true, []byte("not gzip")),
		} {
			_, code, msg, _ := rawGRPC(t, ts.addr, list, "application/grpc", "", map[string]string{"Grpc-Encoding": "gzip"}, body)
			if code != "16" || !strings.Contains(msg, "missing API key") {
				t.Errorf("%s body without a key: grpc-status %s %q; want 16 (UNAUTHENTICATED)", name, code, msg)
			}
		}
	})
	t.Run("a codec liveops does not serve is refused", func(t *testing.T) {
		_, code, msg, hdr := rawGRPC(t, ts.addr, list, "application/grpc+json", ts.admin, nil, grpcFrame(false, []byte(`{}`)))
		if code != "12" || !strings.Contains(msg, "application/grpc+json is not served") || strings.Contains(hdr.Get("Content-Type"), "json") {
			t.Fatalf("application/grpc+json: grpc-status %s %q (%s); want 12 (UNIMPLEMENTED) saying so", code, msg, hdr.Get("Content-Type"))
		}
	})
	t.Run("gRPC-Web is told it is not served", func(t *testing.T) {
		status, _, _, _ := rawGRPC(t, ts.addr, list, "application/grpc-web+proto", ts.admin, nil, grpcFrame(false, listReq))
		req, _ := http.NewRequest("POST", "http://"+ts.addr+list, bytes.NewReader(grpcFrame(false, listReq)))
		req.Header.Set("Content-Type", "application/grpc-web-text")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if status != 415 || resp.StatusCode != 415 || !strings.Contains(string(body), "gRPC-Web is not served") {
			t.Fatalf("gRPC-Web: %d and %d %s; want 415 saying gRPC-Web is not served", status, resp.StatusCode, body)
		}
	})
	t.Run("per-service health", func(t *testing.T) {
		for _, service := range []string{"", "liveops.v1.EventService"} {
			got, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
			if err != nil || got.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("Health.Check(%q) = %v, %v; want SERVING", service, got.GetStatus(), err)
			}
		}
	})
	t.Run("every answered call is logged", func(t *testing.T) {
		md := metadata.Pairs("authorization", "Bearer lo_admin_nope")
		ts.events.ListEvents(metadata.NewOutgoingContext(context.Background(), md), &eventspb.ListEventsRequest{})
		rawGRPC(t, ts.addr, list, "application/grpc", "", nil, grpcFrame(false, make([]byte, 2<<20)))
		if err := ts.stop(); err != nil {
			t.Fatal(err)
		}
		logs := ts.logs.String()
		if strings.Count(logs, `"path":"/liveops.v1.EventService/ListEvents","code":"Unauthenticated"`) < 2 ||
			!strings.Contains(logs, `"error":"invalid API key"`) || !strings.Contains(logs, `"error":"missing API key`) {
			t.Fatalf("refused calls not logged with their reason:\n%s", logs)
		}
	})
}

func TestStreamsEndCleanly(t *testing.T) {
	// A stream outlives -write-timeout, and ends at -grpc-stream-max-age with UNAVAILABLE.
	ts := startServer(t, "-write-timeout", "300ms", "-grpc-stream-max-age", "1s")
	start := time.Now()
	watch, err := healthpb.NewHealthClient(ts.conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch answer: %v, %v", resp, err)
	}
	_, err = watch.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "maximum age") {
		t.Fatalf("Watch ended with %v; want UNAVAILABLE saying the stream reached its maximum age", err)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("Watch ended after %v, before its maximum age of 1s (the write timeout is 300ms)", d)
	}
}

func TestKeylessHealthCannotTakeKeyedSlots(t *testing.T) {
	ts := startServer(t, "-max-in-flight", "4")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// More keyless health streams than the whole bound, held open.
	for range 8 {
		w, err := healthpb.NewHealthClient(ts.conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if code, _, _ := ts.get(t, "/events", ts.user); code != 200 {
		t.Fatalf("GET /events beside 8 keyless health streams: %d; want 200", code)
	}
	if _, err := ts.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{}); err != nil {
		t.Fatalf("ListEvents beside 8 keyless health streams: %v", err)
	}
}

func TestAUnaryCallMustSendItsRequestInTime(t *testing.T) {
	ts := startServer(t, "-max-in-flight", "1", "-read-timeout", "2s")
	// A keyed call that sends its headers and never its message holds the only slot...
	c := dialH2(t, ts.addr, 1<<20)
	go c.readLoop(nil)
	c.open("POST", "/liveops.v1.EventService/ListEvents", false,
		"content-type", "application/grpc", "te", "trailers", "authorization", "Bearer "+ts.admin)
	waitFor(t, func() bool { code, _, _ := ts.get(t, "/events", ts.user); return code == 503 })
	// ...until -read-timeout cuts it, as it would an HTTP request.
	waitFor(t, func() bool { code, _, _ := ts.get(t, "/events", ts.user); return code == 200 })
}

func TestThrottledGuessesNeverReachTheDatabase(t *testing.T) {
	ts := startServer(t, "-auth-fail-limit", "2", "-auth-block", "1h")
	guess, _, _ := newKey(roleHTTPUser, "", time.Now(), 0) // well formed, with a good checksum
	for range 3 {
		ts.get(t, "/events", guess)
	}
	// With the keys table gone, a guess that reached the database would fail as an
	// internal error; a throttled one is refused from memory.
	other, err := openStore(context.Background(), ts.db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.db.Exec(`ALTER TABLE api_keys RENAME TO api_keys_gone`); err != nil {
		t.Fatal(err)
	}
	if code, _, body := ts.get(t, "/events", guess); code != 429 {
		t.Fatalf("a guess from a throttled address: %d %s; want 429 without a database look-up", code, body)
	}
}
