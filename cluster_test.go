package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
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
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"liveops/eventspb"
)

// TestCluster runs what deploy/haproxy.cfg and scripts/cluster.sh set up: three real
// liveops binaries on one PostgreSQL schema behind a real HAProxy started from
// deploy/haproxy.cfg, and checks what several instances promise.
//
// Its last part stops and starts the PostgreSQL server every PostgreSQL test uses, so
// nothing may run beside it: TestCluster does not call t.Parallel, nor does any other test
// in this package; one that does must not be added while this part is here.
func TestCluster(t *testing.T) {
	haproxy := lookPathOrSkip(t, "haproxy", "apt-get install -y haproxy")
	dsn := testDSN(t, "postgres")
	bin := buildBinary(t)

	// The keys first, as an operator would make them: the instances then find keys and
	// print none.
	user, _ := keysCreate(t, bin, dsn, "http_user")
	admin, _ := keysCreate(t, bin, dsn, "grpc_admin")
	const maxAge = 2 * time.Second
	var live []*process
	for range 3 {
		live = append(live, startProcess(t, "-db", dsn, "-shared-cache-max-age", maxAge.String()))
	}
	front := startHAProxy(t, haproxy, live)
	t.Logf("HAProxy on %s in front of %s, %s, %s", front, live[0].addr, live[1].addr, live[2].addr)

	frontRPC := dialEvents(t, front)
	adminCtx := withKey(admin)
	now := time.Now().UTC()
	create := func(c eventspb.EventServiceClient, title string) (*eventspb.Event, error) {
		resp, err := c.CreateEvent(adminCtx, createReq(title, now.Add(-time.Hour), now.Add(24*time.Hour), `{"count": 0}`))
		return resp.GetEvent(), err
	}

	t.Run("balancer carries HTTP/1.1, h2c and gRPC", func(t *testing.T) {
		for _, c := range []*http.Client{http1Client(), h2cClient()} {
			if code, body := getStatus(t, c, front, "/events", user); code != 200 || !json.Valid(body) {
				t.Fatalf("GET /events through HAProxy: %d %s", code, body)
			}
			if code, _ := getStatus(t, c, front, "/readyz", ""); code != 200 {
				t.Fatalf("GET /readyz through HAProxy: %d", code)
			}
		}
		var ids []string
		for i := range 6 {
			ev, err := create(frontRPC, fmt.Sprintf("balanced %d", i))
			if err != nil {
				t.Fatalf("CreateEvent through HAProxy: %v", err)
			}
			ids = append(ids, ev.GetId())
		}
		// The calls were spread: every instance wrote some.
		for i, p := range live {
			if !strings.Contains(p.output(), `"msg":"admin write"`) {
				t.Errorf("instance %d took none of 6 CreateEvent calls sent through HAProxy", i)
			}
		}
		_, err := frontRPC.CreateEvent(adminCtx, &eventspb.CreateEventRequest{Title: ""})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("invalid CreateEvent through HAProxy: %v; want INVALID_ARGUMENT", err)
		}
		if code, _ := getStatus(t, http1Client(), front, "/events/"+ids[0], user); code != 200 {
			t.Errorf("GET /events/{id} through HAProxy: %d", code)
		}
	})

	t.Run("a write shows on every instance within 1s", func(t *testing.T) {
		ev, err := create(dialEvents(t, live[0].addr), "propagated")
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range live {
			within(t, time.Second, fmt.Sprintf("the event on instance %d", i), func() bool {
				code, _ := getStatus(t, http1Client(), p.addr, "/events/"+ev.GetId(), user)
				return code == 200
			})
		}
	})

	t.Run("a key revoked in the database is refused everywhere within 1s", func(t *testing.T) {
		key, id := keysCreate(t, bin, dsn, "http_user")
		for i, p := range live {
			within(t, time.Second, fmt.Sprintf("the new key accepted by instance %d", i), func() bool {
				code, _ := getStatus(t, http1Client(), p.addr, "/events", key)
				return code == 200
			})
		}
		runBinary(t, bin, "keys", "revoke", "-db", dsn, id)
		for i, p := range live {
			within(t, time.Second, fmt.Sprintf("the revoked key refused by instance %d", i), func() bool {
				code, _ := getStatus(t, http1Client(), p.addr, "/events", key)
				return code == 401
			})
		}
	})

	t.Run("concurrent etag updates across instances lose nothing", func(t *testing.T) {
		ev, err := create(frontRPC, "counter")
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range live {
			within(t, time.Second, fmt.Sprintf("the counter on instance %d", i), func() bool {
				code, _ := getStatus(t, http1Client(), p.addr, "/events/"+ev.GetId(), user)
				return code == 200
			})
		}
		const writers, each = 6, 10
		var successes atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, writers)
		for w := range writers {
			c := dialEvents(t, live[w%len(live)].addr)
			wg.Go(func() {
				for done, tries := 0, 0; done < each; tries++ {
					if tries > 50*each {
						errc <- fmt.Errorf("writer %d: %d increments after %d tries", w, done, tries)
						return
					}
					got, err := c.GetEvent(adminCtx, &eventspb.GetEventRequest{Id: ev.GetId()})
					if err != nil {
						errc <- err
						return
					}
					var r struct{ Count int }
					json.Unmarshal([]byte(got.GetEvent().GetRewards()), &r)
					_, err = c.UpdateEvent(adminCtx, &eventspb.UpdateEventRequest{
						Id: ev.GetId(), Etag: got.GetEvent().GetEtag(), Rewards: fmt.Sprintf(`{"count": %d}`, r.Count+1),
						UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"rewards"}},
					})
					switch status.Code(err) {
					case codes.OK:
						successes.Add(1)
						done++
					case codes.Aborted: // another writer came first: read again
					default:
						errc <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Fatal(err)
		}
		if n := successes.Load(); n != writers*each {
			t.Fatalf("%d acknowledged updates; want %d", n, writers*each)
		}
		// Every instance comes to the count of acknowledged updates, each within a
		// reload interval of the last one: none was lost, none applied twice.
		for i, p := range live {
			c := dialEvents(t, p.addr)
			within(t, time.Second, fmt.Sprintf("count %d on instance %d", writers*each, i), func() bool {
				got, err := c.GetEvent(adminCtx, &eventspb.GetEventRequest{Id: ev.GetId()})
				if err != nil {
					t.Fatal(err)
				}
				var r struct{ Count int }
				json.Unmarshal([]byte(got.GetEvent().GetRewards()), &r)
				return r.Count == writers*each
			})
		}
	})

	t.Run("an admin's edit shows through the cache within max-age", func(t *testing.T) {
		ev, err := create(frontRPC, "before")
		if err != nil {
			t.Fatal(err)
		}
		path := "/events/" + ev.GetId()
		within(t, time.Second, "the event through HAProxy", func() bool {
			code, _ := getStatus(t, http1Client(), front, path, user)
			return code == 200
		})
		// A second read is answered by HAProxy's cache: it says so with Age.
		resp := get(t, http1Client(), front, path, user)
		resp.Body.Close()
		if resp.Header.Get("Age") == "" || !strings.Contains(resp.Header.Get("Cache-Control"), "s-maxage") {
			t.Errorf("second read through HAProxy: Age %q, Cache-Control %q; want an answer from its cache",
				resp.Header.Get("Age"), resp.Header.Get("Cache-Control"))
		}
		if _, err := frontRPC.UpdateEvent(adminCtx, &eventspb.UpdateEventRequest{
			Id: ev.GetId(), Title: "after", UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"title"}},
		}); err != nil {
			t.Fatal(err)
		}
		// The cached answer lives at most max-age; the instance that answers next may
		// need up to a reload interval (1s) to hear of the edit.
		within(t, maxAge+time.Second, "the edit through HAProxy", func() bool {
			_, body := getStatus(t, http1Client(), front, path, user)
			return strings.Contains(string(body), `"title":"after"`)
		})
	})

	t.Run("kill -9 of an instance mid-burst loses no acknowledged write", func(t *testing.T) {
		var mu sync.Mutex
		var acked []string
		var attempts atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					attempts.Add(1)
					if ev, err := create(frontRPC, fmt.Sprintf("burst %d.%d", w, i)); err == nil {
						mu.Lock()
						acked = append(acked, ev.GetId())
						mu.Unlock()
					}
				}
			})
		}
		ackedSoFar := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
		within(t, 10*time.Second, "20 acknowledged creates before the kill", func() bool { return ackedSoFar() >= 20 })
		victim := live[2]
		if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-victim.exited
		// Long enough for HAProxy's checks (every 1s, 2 failures) to mark it down:
		// before that, a call sent its way fails to connect and is sent to another.
		killed, before := time.Now(), ackedSoFar()
		within(t, 10*time.Second, "the burst going on for 3s after the kill", func() bool {
			return time.Since(killed) > 3*time.Second && ackedSoFar() >= before+20
		})
		close(stop)
		wg.Wait()
		t.Logf("%d of %d creates acknowledged", len(acked), attempts.Load())

		for _, p := range live[:2] {
			for _, id := range acked {
				// An instance may still be catching up on the last few.
				within(t, time.Second, "acknowledged event "+id+" on "+p.addr, func() bool {
					code, _ := getStatus(t, http1Client(), p.addr, "/events/"+id, user)
					return code == 200
				})
			}
		}
		// HAProxy routes around the dead instance: every call and read succeeds.
		for i := range 20 {
			if _, err := create(frontRPC, fmt.Sprintf("after the kill %d", i)); err != nil {
				t.Fatalf("CreateEvent through HAProxy after the kill: %v", err)
			}
			if code, _ := getStatus(t, http1Client(), front, "/events?status=upcoming", user); code != 200 {
				t.Fatalf("GET /events through HAProxy after the kill: %d", code)
			}
		}
	})

	// This part stops the PostgreSQL server every PostgreSQL test shares (see above).
	t.Run("PostgreSQL restarted: reads go on, writes are UNAVAILABLE, then work again", func(t *testing.T) {
		version := postgresVersionOrSkip(t)
		reads := startReader(t, front, user)
		pgCtl(t, version, "stop")
		stopped := true
		t.Cleanup(func() {
			if stopped {
				pgCtl(t, version, "start")
			}
		})
		// While it is down every write fails with UNAVAILABLE, the code that says retry.
		for i := range 10 {
			_, err := create(frontRPC, fmt.Sprintf("during the outage %d", i))
			if status.Code(err) != codes.Unavailable {
				t.Errorf("CreateEvent with PostgreSQL down: %v; want UNAVAILABLE", err)
			}
		}
		// /readyz stays 200 on every instance, which still serves players, and says
		// within a probe interval (1s) that the database is away.
		for _, p := range live[:2] {
			within(t, 2*time.Second, "/readyz on "+p.addr+" reporting the database away", func() bool {
				code, body := getStatus(t, http1Client(), p.addr, "/readyz", "")
				if code != 200 {
					t.Fatalf("/readyz on %s with PostgreSQL down: %d %s; want 200", p.addr, code, body)
				}
				return strings.Contains(string(body), "the database does not answer")
			})
		}
		pgCtl(t, version, "start")
		stopped = false
		// Writes work again without restarting liveops.
		var ev *eventspb.Event
		within(t, 15*time.Second, "a write after PostgreSQL is back", func() bool {
			e, err := create(frontRPC, "after the outage")
			if err != nil && status.Code(err) != codes.Unavailable {
				t.Fatalf("CreateEvent after the outage: %v; want OK or UNAVAILABLE", err)
			}
			ev = e
			return err == nil
		})
		for _, p := range live[:2] {
			within(t, 5*time.Second, "the write after the outage on "+p.addr, func() bool {
				code, _ := getStatus(t, http1Client(), p.addr, "/events/"+ev.GetId(), user)
				return code == 200
			})
		}
		n, failed := reads()
		if n == 0 || len(failed) > 0 {
			t.Fatalf("reads through HAProxy during the outage: %d of %d failed: %v", len(failed), n, failed)
		}
		t.Logf("%d reads through HAProxy during the outage, none failed", n)
	})
}

// lookPathOrSkip finds a program the test needs, skipping without it, or failing under CI.
func lookPathOrSkip(t *testing.T, name, install string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed; under CI this test must run (%s)", name, install)
		}
		t.Skipf("%s is not installed (%s); skipping", name, install)
	}
	return path
}

// keysCreate runs `liveops keys create` and returns the key and its id.
func keysCreate(t *testing.T, bin, dsn, role string) (key, id string) {
	t.Helper()
	stdout, stderr := runBinary(t, bin, "keys", "create", "-role", role, "-name", "cluster-test", "-db", dsn)
	m := regexp.MustCompile(`key ([0-9a-f]{12})`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("keys create said %q; want the key id", stderr)
	}
	return strings.TrimSpace(stdout), m[1]
}

func runBinary(t *testing.T, bin string, args ...string) (stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("liveops %s: %v\n%s", args[0], err, errOut.String())
	}
	return out.String(), errOut.String()
}

// haproxyConfig fills in deploy/haproxy.cfg's server list: every "# @servers@" line
// becomes one server line per address. scripts/cluster.sh does the same.
func haproxyConfig(template string, addrs []string) string {
	var servers strings.Builder
	for i, a := range addrs {
		fmt.Fprintf(&servers, "    server live%d %s\n", i+1, a)
	}
	return regexp.MustCompile(`(?m)^[ \t]*# @servers@[ \t]*\n`).ReplaceAllLiteralString(template, servers.String())
}

// startHAProxy runs HAProxy from deploy/haproxy.cfg in front of the instances and returns
// its address once it answers.
func startHAProxy(t *testing.T, haproxy string, instances []*process) string {
	t.Helper()
	template, err := os.ReadFile("deploy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, p := range instances {
		addrs = append(addrs, p.addr)
	}
	cfg := t.TempDir() + "/haproxy.cfg"
	if err := os.WriteFile(cfg, []byte(haproxyConfig(string(template), addrs)), 0o644); err != nil {
		t.Fatal(err)
	}
	// HAProxy cannot be told to pick a port and say which: take a free one and give it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(haproxy, "-db", "-f", cfg)
	cmd.Env = []string{"LIVEOPS_FRONT_ADDR=" + front}
	hp := startTool(t, "haproxy", cmd)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get("http://" + front + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return front
			}
		}
		hp.failIfExited(t)
		time.Sleep(20 * time.Millisecond)
		if time.Now().After(deadline) {
			t.Fatalf("haproxy did not answer on %s within 10s\n%s", front, hp.output())
		}
	}
}

func dialEvents(t *testing.T, addr string) eventspb.EventServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return eventspb.NewEventServiceClient(conn)
}

// http1Client is what curl is: HTTP/1.1, a new connection each time.
func http1Client() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

func get(t *testing.T, c *http.Client, addr, path, key string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	return resp
}

func getStatus(t *testing.T, c *http.Client, addr, path, key string) (int, []byte) {
	t.Helper()
	resp := get(t, c, addr, path, key)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// within polls cond until it holds, failing the test after d: for the promises of the
// form "within 1s", where the time is the thing tested.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startReader reads GET /events through addr every 10ms until the test ends or the
// returned function is called, which reports how many reads were made and the failures.
func startReader(t *testing.T, addr, key string) func() (int, []string) {
	ctx, cancel := context.WithCancel(context.Background())
	var n int
	var failed []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &http.Client{Timeout: 2 * time.Second}
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/events", nil)
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := c.Do(req)
			if ctx.Err() != nil {
				return
			}
			n++
			if err != nil {
				failed = append(failed, err.Error())
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed = append(failed, resp.Status)
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	stop := func() (int, []string) { cancel(); <-done; return n, failed }
	t.Cleanup(func() { stop() })
	return stop
}

// postgresVersionOrSkip returns the version of the local PostgreSQL cluster that
// pg_ctlcluster manages, skipping (or failing, under CI) where there is none.
func postgresVersionOrSkip(t *testing.T) string {
	t.Helper()
	lookPathOrSkip(t, "pg_ctlcluster", "the local PostgreSQL cluster, Debian's postgresql package")
	if os.Getenv("LIVEOPS_TEST_POSTGRES") != "" {
		t.Skip("LIVEOPS_TEST_POSTGRES is set: the PostgreSQL tested may not be the local cluster this part restarts")
	}
	entries, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(entries) != 1 {
		t.Fatalf("/etc/postgresql: %v, %d entries; want one version", err, len(entries))
	}
	return entries[0].Name()
}

// pgCtl stops or starts the local PostgreSQL cluster, and waits for it.
func pgCtl(t *testing.T, version, action string) {
	t.Helper()
	out, err := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_ctlcluster %s: %v\n%s", action, err, out)
	}
	if action != "start" {
		return
	}
	db, err := sql.Open("pgx", postgresTestURL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := db.PingContext(ctx)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("PostgreSQL not back within 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
