package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"liveops/eventspb"
)

// soak reports whether the long forms of the durability tests should run
// (LIVEOPS_SOAK=1 go test -run 'Kill|SIGTERM' ./...).
// integrityCheck runs PRAGMA integrity_check and returns its verdict: "ok" when the file
// is sound.
func integrityCheck(t testing.TB, st *store, ctx context.Context) (string, error) {
	t.Helper()
	rows, err := st.db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return "", err
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n"), rows.Err()
}

func soak() bool { return os.Getenv("LIVEOPS_SOAK") != "" }

func TestConcurrentReadModifyWriteWithETags(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ts := startServerWith(t, dsn)
		admin := withKey(ts.admin)
		created, err := ts.events.CreateEvent(admin, createReq("counter", t0, t0.Add(time.Hour), `{"n":0}`))
		if err != nil {
			t.Fatal(err)
		}
		id := created.GetEvent().GetId()

		var successes, aborted atomic.Int64
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				for range 4 {
					got, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: id})
					if err != nil {
						t.Error(err)
						return
					}
					var n int
					fmt.Sscanf(got.GetEvent().GetRewards(), `{"n":%d}`, &n)
					_, err = ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{
						Id: id, Etag: got.GetEvent().GetEtag(),
						Rewards:    fmt.Sprintf(`{"n":%d}`, n+1),
						UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"rewards"}},
					})
					switch status.Code(err) {
					case codes.OK:
						successes.Add(1)
					case codes.Aborted:
						aborted.Add(1)
					default:
						t.Errorf("UpdateEvent: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		final, err := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`{"n":%d}`, successes.Load())
		if final.GetEvent().GetRewards() != want {
			t.Fatalf("final rewards %s after %d successful and %d aborted updates; want %s (a lost update)",
				final.GetEvent().GetRewards(), successes.Load(), aborted.Load(), want)
		}
		if final.GetEvent().GetTitle() != "counter" {
			t.Fatalf("a masked update changed the title to %q", final.GetEvent().GetTitle())
		}
		t.Logf("%d successful, %d aborted", successes.Load(), aborted.Load())
	})
}

func TestETagsAndMasksOverGRPC(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ts := startServerWith(t, dsn)
		admin := withKey(ts.admin)
		created, err := ts.events.CreateEvent(admin, createReq("masked", t0, t0.Add(time.Hour), `{"a":1}`))
		if err != nil {
			t.Fatal(err)
		}
		ev := created.GetEvent()
		if ev.GetEtag() == "" {
			t.Fatal("a created event has no etag")
		}

		upd, err := ts.events.UpdateEvent(admin, &eventspb.UpdateEventRequest{
			Id: ev.GetId(), Title: "renamed", Etag: ev.GetEtag(),
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}},
		})
		if err != nil {
			t.Fatalf("masked update: %v", err)
		}
		u := upd.GetEvent()
		if u.GetTitle() != "renamed" || u.GetDescription() != ev.GetDescription() || u.GetRewards() != ev.GetRewards() ||
			!u.GetStartTime().AsTime().Equal(ev.GetStartTime().AsTime()) || u.GetEtag() == ev.GetEtag() {
			t.Fatalf("after a title-only update: %v (was %v)", u, ev)
		}

		tests := []struct {
			name string
			req  *eventspb.UpdateEventRequest
			want codes.Code
		}{
			{"stale etag", &eventspb.UpdateEventRequest{Id: ev.GetId(), Title: "x", Etag: ev.GetEtag(),
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}}, codes.Aborted},
			{"unknown mask path", &eventspb.UpdateEventRequest{Id: ev.GetId(), Title: "x",
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title", "created_at"}}}, codes.InvalidArgument},
			{"masked field made invalid", &eventspb.UpdateEventRequest{Id: ev.GetId(), EndTime: ev.GetStartTime(),
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"end_time"}}}, codes.InvalidArgument},
			{"unknown id with etag", &eventspb.UpdateEventRequest{Id: newID(), Title: "x", Etag: u.GetEtag(),
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}}}, codes.NotFound},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := ts.events.UpdateEvent(admin, tt.req)
				if status.Code(err) != tt.want {
					t.Fatalf("UpdateEvent = %v; want %v", err, tt.want)
				}
				got, _ := ts.events.GetEvent(admin, &eventspb.GetEventRequest{Id: ev.GetId()})
				if got.GetEvent().GetEtag() != u.GetEtag() {
					t.Fatalf("a refused update changed the event: %v", got.GetEvent())
				}
			})
		}

		if _, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: ev.GetId(), Etag: ev.GetEtag()}); status.Code(err) != codes.Aborted {
			t.Fatalf("delete with a stale etag: %v; want ABORTED", err)
		}
		if _, err := ts.events.DeleteEvent(admin, &eventspb.DeleteEventRequest{Id: ev.GetId(), Etag: u.GetEtag()}); err != nil {
			t.Fatalf("delete with the current etag: %v", err)
		}

		// Players see the event's version as a number, not as an etag: in HTTP, ETag names a
		// whole response, and a "v1" sent in If-None-Match would never match it.
		now := time.Now().UTC()
		live, _ := ts.events.CreateEvent(admin, createReq("live", now.Add(-time.Hour), now.Add(time.Hour), ""))
		_, hdr, body := ts.get(t, "/events/"+live.GetEvent().GetId(), ts.user)
		if !strings.Contains(string(body), `"version":1`) || strings.Contains(string(body), `"etag"`) || hdr.Get("Etag") == `"v1"` {
			t.Fatalf("HTTP event JSON = %s (ETag %s); want version 1 and no etag field", body, hdr.Get("Etag"))
		}
	})
}

func TestIdempotentCreateOverGRPC(t *testing.T) {
	forEachEngine(t, func(t *testing.T, dsn string) {
		ts := startServerWith(t, dsn)
		admin := withKey(ts.admin)
		req := createReq("once", t0, t0.Add(time.Hour), `{"gems": 5}`)
		req.RequestId = newID()
		first, err := ts.events.CreateEvent(admin, req)
		if err != nil {
			t.Fatal(err)
		}
		// The same request, as a client retrying after a lost reply would send it; the rewards
		// differ only in spacing, which is the same body.
		retry := createReq("once", t0, t0.Add(time.Hour), `{"gems":5}`)
		retry.RequestId = req.RequestId
		second, err := ts.events.CreateEvent(admin, retry)
		if err != nil || second.GetEvent().GetId() != first.GetEvent().GetId() {
			t.Fatalf("retry = %v, %v; want the first event (%s)", second, err, first.GetEvent().GetId())
		}
		other := createReq("other", t0, t0.Add(time.Hour), "")
		other.RequestId = req.RequestId
		if _, err := ts.events.CreateEvent(admin, other); status.Code(err) != codes.AlreadyExists {
			t.Fatalf("reused request_id with another body: %v; want ALREADY_EXISTS", err)
		}
		bad := createReq("bad", t0, t0.Add(time.Hour), "")
		bad.RequestId = "not-a-uuid"
		if _, err := ts.events.CreateEvent(admin, bad); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("malformed request_id: %v; want INVALID_ARGUMENT", err)
		}
		list, _ := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{})
		if n := len(list.GetEvents()); n != 1 {
			t.Fatalf("%d events stored; want 1", n)
		}
		if n := strings.Count(ts.logs.String(), `"msg":"admin write","action":"create"`); n != 1 {
			t.Fatalf("%d create log lines; want 1 (a retry writes nothing)", n)
		}
	})
}

func TestLockedDatabase(t *testing.T) {
	ts := startServer(t, "-busy-timeout", "200ms")
	admin := withKey(ts.admin)
	if _, err := ts.events.CreateEvent(admin, createReq("before", t0, t0.Add(time.Hour), "")); err != nil {
		t.Fatal(err)
	}

	// Another process holds the write lock.
	other, err := openStore(context.Background(), ts.db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	tx, err := other.db.BeginTx(context.Background(), nil) // BEGIN IMMEDIATE
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`UPDATE events SET title = title`); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	_, err = ts.events.CreateEvent(admin, createReq("during", t0, t0.Add(time.Hour), ""))
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("the write waited %v; -busy-timeout 200ms did not apply", waited)
	}
	if status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), "locked") {
		t.Fatalf("write while locked: %v; want UNAVAILABLE without SQLite's words", err)
	}
	if list, err := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{}); err != nil || len(list.GetEvents()) != 1 {
		t.Fatalf("read while locked: %v, %v", list, err)
	}
	if code, _, _ := ts.get(t, "/events", ts.user); code != 200 {
		t.Fatalf("HTTP read while locked: %d", code)
	}

	tx.Rollback()
	if _, err := ts.events.CreateEvent(admin, createReq("after", t0, t0.Add(time.Hour), "")); err != nil {
		t.Fatalf("write after the lock was released: %v", err)
	}
}

func TestDiskFull(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "full.db")
	// A page cap stands in for a full disk: SQLite reports SQLITE_FULL either way.
	st, err := openStore(ctx, path, time.Now, "max_page_count(64)")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.db.SetMaxOpenConns(1) // one connection, so raising the cap below reaches it
	rm, err := newReadModel(ctx, st, time.Now, newLogger("text", io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	srv := &eventServer{st: st, rm: rm, log: newLogger("text", io.Discard)}

	big := `["` + strings.Repeat("x", 60<<10) + `"]`
	var stored int
	for {
		_, err := srv.CreateEvent(ctx, createReq(fmt.Sprint("filler ", stored), t0, t0.Add(time.Hour), big))
		if err != nil {
			// The method returns a plain error; grpcStatus is what the interceptor sends.
			if st, _ := grpcStatus(context.Background(), err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "full") {
				t.Fatalf("write to a full database: %v; want RESOURCE_EXHAUSTED saying it is full", err)
			}
			break
		}
		if stored++; stored > 100 {
			t.Fatal("the page cap never filled")
		}
	}
	list, err := srv.ListEvents(ctx, &eventspb.ListEventsRequest{})
	list = roundTrip(t, list) // as a client receives it
	if err != nil || len(list.GetEvents()) != stored {
		t.Fatalf("read when full: %d events, %v; want %d", len(list.GetEvents()), err, stored)
	}
	if v, err := integrityCheck(t, st, ctx); err != nil || v != "ok" {
		t.Fatalf("integrity_check when full: %q, %v", v, err)
	}

	if _, err := st.db.ExecContext(ctx, `PRAGMA max_page_count = 100000`); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.CreateEvent(ctx, createReq("after", t0, t0.Add(time.Hour), big)); err != nil {
		t.Fatalf("write once space is back: %v", err)
	}
}

func TestUnusableDatabasePath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "plain-file")
	os.WriteFile(file, nil, 0o600)
	paths := map[string]string{
		"missing directory":    filepath.Join(dir, "nope", "liveops.db"),
		"parent is a file":     filepath.Join(file, "liveops.db"),
		"read-only directory":  "/proc/liveops.db", // not writable, even for root
		"path is a directory?": dir,
	}
	for name, path := range paths {
		t.Run(name, func(t *testing.T) {
			if name == "path is a directory?" {
				t.Skip("a directory as -db is SQLite's own error; covered by openStore's wrapping")
			}
			cmd := exec.Command(buildBinary(t), "-addr", "127.0.0.1:0", "-db", path)
			cmd.Env = []string{}
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit: %v; want status 1\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "liveops: database directory") {
				t.Fatalf("output %q; want one line naming the database directory", out)
			}
		})
	}
}

func TestConcurrentWritersNeverSeeLocked(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	var wg sync.WaitGroup
	errs := make(chan error, 50*5)
	for w := range 50 {
		wg.Go(func() {
			for i := range 5 {
				if _, err := ts.events.CreateEvent(admin, createReq(fmt.Sprintf("w%d-%d", w, i), t0, t0.Add(time.Hour), "")); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent create: %v", err)
	}
	list, _ := ts.events.ListEvents(admin, &eventspb.ListEventsRequest{PageSize: 1000})
	if n := len(list.GetEvents()); n != 250 {
		t.Fatalf("%d events stored; want 250", n)
	}
}

func TestBackupWhileServing(t *testing.T) {
	ts := startServer(t)
	admin := withKey(ts.admin)
	for i := range 20 {
		if _, err := ts.events.CreateEvent(admin, createReq(fmt.Sprint("event ", i), t0, t0.Add(time.Hour), "")); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "backup.db")
	var stderr strings.Builder
	args := []string{"liveops", "backup", "-db", ts.db, out}
	if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, &stderr); err != nil {
		t.Fatalf("backup: %v (%s)", err, stderr.String())
	}
	if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
		t.Fatal("a second backup over the first succeeded; want a refusal")
	}

	st, err := openStore(context.Background(), out, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := integrityCheck(t, st, context.Background()); err != nil || v != "ok" {
		t.Fatalf("integrity_check of the copy: %q, %v", v, err)
	}
	st.Close()
	copied := startServerOn(t, out, ts.user, ts.admin)
	list, err := copied.events.ListEvents(withKey(ts.admin), &eventspb.ListEventsRequest{})
	if err != nil || len(list.GetEvents()) != 20 {
		t.Fatalf("server on the copy: %d events, %v; want 20", len(list.GetEvents()), err)
	}
}

// roundTrip encodes and decodes m, as sending it over gRPC does.
func roundTrip[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := m.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// dialGRPC connects a new client to addr.
func dialGRPC(t *testing.T, addr string) (*grpc.ClientConn, eventspb.EventServiceClient) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return conn, eventspb.NewEventServiceClient(conn)
}

// binaryWithKeys prepares a database holding one key of each role, for tests of the binary.
func binaryWithKeys(t *testing.T) (db, user, admin string) {
	t.Helper()
	db = filepath.Join(t.TempDir(), "liveops.db")
	st, err := openStore(context.Background(), db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if user, err = createTestKey(t, st, roleHTTPUser); err != nil {
		t.Fatal(err)
	}
	if admin, err = createTestKey(t, st, roleGRPCAdmin); err != nil {
		t.Fatal(err)
	}
	return db, user, admin
}

func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	rounds := 3
	if soak() {
		rounds = 20
	}
	db, _, admin := binaryWithKeys(t)
	var acked []string
	for round := range rounds {
		p := startProcess(t, "-db", db)
		conn, client := dialGRPC(t, p.addr)

		// Writers create as fast as they can and record an id only once it is acknowledged;
		// the server is killed after a random number of acknowledgements.
		killAfter := 20 + rand.IntN(200)
		var mu sync.Mutex
		var n atomic.Int64
		killed := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					resp, err := client.CreateEvent(withKey(admin), createReq(fmt.Sprintf("r%d w%d #%d", round, w, i), t0, t0.Add(time.Hour), ""))
					if err != nil {
						return // the server is gone
					}
					mu.Lock()
					acked = append(acked, resp.GetEvent().GetId())
					mu.Unlock()
					if n.Add(1) == int64(killAfter) {
						close(killed)
						p.cmd.Process.Signal(syscall.SIGKILL)
					}
				}
			})
		}
		select {
		case <-killed:
		case err := <-p.exited:
			select {
			case <-killed: // killed, and the exit was noticed first
				p.exited <- err
			default:
				t.Fatalf("round %d: the server exited before it was killed: %v\n%s", round, err, p.output())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: only %d creates acknowledged in 30s", round, n.Load())
		}
		wg.Wait()
		<-p.exited
		conn.Close()
		if _, err := os.Stat(db + "-wal"); err != nil {
			t.Logf("round %d: no -wal file after SIGKILL (%v)", round, err)
		}

		// Reopening replays the WAL; every acknowledged event must be there.
		st, err := openStore(context.Background(), db, time.Now)
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		if v, err := integrityCheck(t, st, context.Background()); err != nil || v != "ok" {
			t.Fatalf("round %d: integrity_check = %q, %v", round, v, err)
		}
		events, _, err := st.Events(context.Background())
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, e := range events {
			have[e.ID] = true
		}
		for _, id := range acked {
			if !have[id] {
				t.Fatalf("round %d: acknowledged event %s is missing after SIGKILL", round, id)
			}
		}
	}
	t.Logf("%d rounds, %d acknowledged creates, all present", rounds, len(acked))
}

func TestSIGTERMWaitsForAnInFlightWrite(t *testing.T) {
	db, _, admin := binaryWithKeys(t)
	p := startProcess(t, "-db", db, "-busy-timeout", "20s", "-shutdown-timeout", "20s")
	sent := make(chan struct{})
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(&onSend{method: "/liveops.v1.EventService/CreateEvent", sent: sent}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := eventspb.NewEventServiceClient(conn)

	// Another process holds the write lock, so the create below stays in flight.
	other, err := openStore(context.Background(), db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	tx, err := other.db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`UPDATE meta SET value = value`); err != nil {
		t.Fatal(err)
	}
	type result struct {
		resp *eventspb.CreateEventResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := client.CreateEvent(withKey(admin), createReq("in flight", t0, t0.Add(time.Hour), ""))
		done <- result{resp, err}
	}()
	// Once the create is on the wire, a call sent after it on the same connection is
	// answered only after the server has read the create and started its handler.
	<-sent
	if _, err := client.GetEvent(withKey(admin), &eventspb.GetEventRequest{Id: newID()}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetEvent: %v", err)
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	// New connections are refused while the in-flight create still runs.
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case r := <-done:
		t.Fatalf("the create finished before the lock was released: %v", r.err)
	default:
	}
	tx.Rollback()

	r := <-done
	if r.err != nil {
		t.Fatalf("in-flight create during shutdown: %v; want it to complete", r.err)
	}
	if err := <-p.exited; err != nil {
		t.Fatalf("exit: %v; want 0\n%s", err, p.output())
	}
	st, err := openStore(context.Background(), db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := getEvent(context.Background(), st.db, r.resp.GetEvent().GetId()); err != nil {
		t.Fatalf("the acknowledged in-flight create is not stored: %v", err)
	}
}

// onSend is a client stats handler that closes sent once a request message of method has
// been written to the connection.
type onSend struct {
	method string
	sent   chan struct{}
	once   sync.Once
}

type methodKey struct{}

func (h *onSend) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}
func (h *onSend) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutPayload); ok && ctx.Value(methodKey{}) == h.method {
		h.once.Do(func() { close(h.sent) })
	}
}
func (h *onSend) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (h *onSend) HandleConn(context.Context, stats.ConnStats)                       {}

func TestSIGTERMUnderLoad(t *testing.T) {
	rounds := 1
	if soak() {
		rounds = 5
	}
	db, user, admin := binaryWithKeys(t)
	for round := range rounds {
		p := startProcess(t, "-db", db, "-shutdown-timeout", "5s")
		var mu sync.Mutex
		var acked []string
		var reads, writes atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		failures := make(chan string, 100)
		loaded := make(chan struct{}) // closed once both kinds of request have run a while
		var loadedOnce sync.Once
		count := func(n *atomic.Int64) {
			n.Add(1)
			if writes.Load() >= 50 && reads.Load() >= 50 {
				loadedOnce.Do(func() { close(loaded) })
			}
		}

		for range 4 { // gRPC writers, each on its own connection
			wg.Go(func() {
				conn, client := dialGRPC(t, p.addr)
				defer conn.Close()
				for i := 0; ; i++ {
					resp, err := client.CreateEvent(withKey(admin), createReq(fmt.Sprint("sigterm ", i), t0, t0.Add(time.Hour), ""))
					if err != nil {
						// After SIGTERM a call may be refused (UNAVAILABLE); nothing else.
						if c := status.Code(err); c != codes.Unavailable {
							failures <- "gRPC: " + err.Error()
						}
						return
					}
					count(&writes)
					mu.Lock()
					acked = append(acked, resp.GetEvent().GetId())
					mu.Unlock()
				}
			})
		}
		for range 4 { // HTTP readers
			wg.Go(func() {
				client := &http.Client{Transport: &http.Transport{}}
				defer client.CloseIdleConnections()
				for {
					req, _ := http.NewRequest("GET", "http://"+p.addr+"/events", nil)
					req.Header.Set("Authorization", "Bearer "+user)
					resp, err := client.Do(req)
					if err != nil {
						return // connection refused or closed: the server is stopping
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || !strings.HasSuffix(string(body), "}\n") {
						failures <- fmt.Sprintf("HTTP: %d %v, %d bytes", resp.StatusCode, err, len(body))
						return
					}
					count(&reads)
					select {
					case <-stop:
						return
					default:
					}
				}
			})
		}

		// Let load build up, then signal while requests are in flight.
		select {
		case <-loaded:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: load never built up (%d reads, %d writes)", round, reads.Load(), writes.Load())
		}
		sent := time.Now()
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			if err != nil {
				t.Fatalf("round %d: exit after SIGTERM: %v; want 0\n%s", round, err, p.output())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: still running 10s after SIGTERM", round)
		}
		if d := time.Since(sent); d > 5*time.Second+time.Second {
			t.Errorf("round %d: exit took %v; grace is 5s", round, d)
		}
		close(stop)
		wg.Wait()
		close(failures)
		for f := range failures {
			t.Errorf("round %d: %s", round, f)
		}
		if _, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
			t.Errorf("round %d: a new connection was accepted after exit", round)
		}

		st, err := openStore(context.Background(), db, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range acked {
			if _, err := getEvent(context.Background(), st.db, id); err != nil {
				t.Fatalf("round %d: acknowledged event %s: %v", round, id, err)
			}
		}
		st.Close()
		t.Logf("round %d: %d reads and %d writes before and during shutdown, all whole", round, reads.Load(), writes.Load())
	}
}

func TestReadOnlyDatabaseHealsByItself(t *testing.T) {
	// The fault is a database file that cannot be written. root writes through any file
	// mode, so as root the server runs as nobody.
	dir, err := os.MkdirTemp("", "liveops-ro")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
		os.Chmod(dir, 0o777)
	}
	db, keysFile := filepath.Join(dir, "liveops.db"), filepath.Join(dir, "keys.env")
	p := startProcessAs(t, cred, "-db", db, "-bootstrap-keys-file", keysFile, "-reload-interval", "100ms")
	keys, err := os.ReadFile(keysFile)
	if err != nil {
		t.Fatal(err)
	}
	admin := regexp.MustCompile(`LIVEOPS_ADMIN_KEY=(\S+)`).FindStringSubmatch(string(keys))[1]
	user := regexp.MustCompile(`LIVEOPS_USER_KEY=(\S+)`).FindStringSubmatch(string(keys))[1]
	ts := &testServer{addr: p.addr, admin: admin, user: user}
	ts.dial(t)
	now := time.Now().UTC()
	create := func() error {
		_, err := ts.events.CreateEvent(withKey(admin), createReq("e", now.Add(-time.Hour), now.Add(time.Hour), ""))
		return err
	}
	writes := func() string {
		_, _, body := ts.get(t, "/readyz", "")
		var r readyJSON
		json.Unmarshal(body, &r)
		return r.Writes
	}
	if err := create(); err != nil || writes() != "ok" {
		t.Fatalf("before the fault: create %v, writes %q", err, writes())
	}

	// In WAL mode the database is three files; writes need all of them.
	files := []string{db, db + "-wal", db + "-shm"}
	for _, f := range files {
		if err := os.Chmod(f, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return writes() != "ok" })
	if !strings.Contains(writes(), "cannot be written") {
		t.Errorf("/readyz writes = %q; want it to say the database cannot be written", writes())
	}
	err = create()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "cannot be written") {
		t.Fatalf("create during the fault: %v; want UNAVAILABLE saying the database cannot be written", err)
	}
	// Reads go on.
	if code, _, body := ts.get(t, "/events", user); code != 200 || !strings.Contains(string(body), `"title":"e"`) {
		t.Fatalf("GET /events during the fault: %d %s", code, body)
	}
	if code, _, _ := ts.get(t, "/readyz", ""); code != 200 {
		t.Fatalf("/readyz during a write fault: %d; want 200 (reads are served)", code)
	}
	health, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "liveops.v1.EventService"})
	if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("EventService health during the fault: %v, %v; want NOT_SERVING", health.GetStatus(), err)
	}

	for _, f := range files {
		if err := os.Chmod(f, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return writes() == "ok" })
	for i := range 20 {
		if err := create(); err != nil {
			t.Fatalf("create %d after the fault cleared: %v", i+1, err)
		}
	}
}
