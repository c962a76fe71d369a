package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// scrape reads addr's /metrics with key, in the text format Prometheus asks for, and
// parses it with the reference parser. Any parse error fails the test.
func scrape(t *testing.T, addr, key string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(metricsText(t, addr, key)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// metricsText reads addr's /metrics with key, in the text format, and returns it unparsed:
// what promtool check metrics reads.
func metricsText(t *testing.T, addr, key string) []byte {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	// What Prometheus 2.x sends when it does not negotiate OpenMetrics.
	req.Header.Set("Accept", "text/plain;version=0.0.4;q=0.9,*/*;q=0.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("Content-Type %q, want the text format 0.0.4", ct)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// sample returns the value of the counter, gauge or histogram count in fams named name with
// exactly the labels given (name=value pairs), or NaN when there is none.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f, ok := fams[name]
	if !ok {
		return math.NaN()
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return math.NaN()
}

func TestMetricsNeedAMetricsKey(t *testing.T) {
	ts := startServer(t)
	key := createServerKey(t, ts, roleMetrics)
	for _, tc := range []struct {
		name, key string
		want      int
	}{
		{"no key", "", 401},
		{"player key", ts.user, 403},
		{"admin key", ts.admin, 403},
		{"metrics key", key, 200},
	} {
		if code, _, body := ts.get(t, "/metrics", tc.key); code != tc.want {
			t.Errorf("%s: GET /metrics = %d %s, want %d", tc.name, code, body, tc.want)
		}
	}
	// And a metrics key reads nothing else.
	if code, _, _ := ts.get(t, "/events", key); code != 403 {
		t.Errorf("GET /events with a metrics key = %d, want 403", code)
	}
	if _, err := ts.events.ListEvents(withKey(key), nil); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListEvents with a metrics key: %v, want PERMISSION_DENIED", err)
	}
}

// createServerKey makes a key of role r in ts's database, which ts learns of on first use.
func createServerKey(t *testing.T, ts *testServer, r role) string {
	t.Helper()
	st, err := openStore(context.Background(), ts.db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	key, err := createTestKey(t, st, r)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// exposedFamilies are the families liveops promises, with their types. The dashboard and
// alert rules may use only what /metrics exposes (TestDashboardAndAlertsUseExposedMetrics).
var exposedFamilies = map[string]dto.MetricType{
	"liveops_http_requests_total":               dto.MetricType_COUNTER,
	"liveops_http_request_duration_seconds":     dto.MetricType_HISTOGRAM,
	"liveops_grpc_requests_total":               dto.MetricType_COUNTER,
	"liveops_grpc_request_duration_seconds":     dto.MetricType_HISTOGRAM,
	"liveops_requests_in_flight":                dto.MetricType_GAUGE,
	"liveops_requests_shed_total":               dto.MetricType_COUNTER,
	"liveops_auth_failures_total":               dto.MetricType_COUNTER,
	"liveops_auth_throttled_total":              dto.MetricType_COUNTER,
	"liveops_api_keys":                          dto.MetricType_GAUGE,
	"liveops_snapshot_generation":               dto.MetricType_GAUGE,
	"liveops_snapshot_age_seconds":              dto.MetricType_GAUGE,
	"liveops_snapshot_staleness_seconds":        dto.MetricType_GAUGE,
	"liveops_snapshot_rebuild_duration_seconds": dto.MetricType_HISTOGRAM,
	"liveops_events":                            dto.MetricType_GAUGE,
	"liveops_change_propagation_seconds":        dto.MetricType_HISTOGRAM,
	"liveops_db_transaction_duration_seconds":   dto.MetricType_HISTOGRAM,
	"liveops_db_errors_total":                   dto.MetricType_COUNTER,
	"liveops_database_up":                       dto.MetricType_GAUGE,
	"liveops_build_info":                        dto.MetricType_GAUGE,
	"go_sql_open_connections":                   dto.MetricType_GAUGE,
	"go_sql_wait_duration_seconds_total":        dto.MetricType_COUNTER,
	"go_goroutines":                             dto.MetricType_GAUGE,
	"go_memstats_heap_alloc_bytes":              dto.MetricType_GAUGE,
	"go_gc_duration_seconds":                    dto.MetricType_SUMMARY,
	"process_resident_memory_bytes":             dto.MetricType_GAUGE,
	"process_open_fds":                          dto.MetricType_GAUGE,
	"process_cpu_seconds_total":                 dto.MetricType_COUNTER,
}

func TestMetricsExposition(t *testing.T) {
	ts := startServer(t)
	key := createServerKey(t, ts, roleMetrics)
	fams := scrape(t, ts.addr, key)

	for name, typ := range exposedFamilies {
		f, ok := fams[name]
		if !ok {
			t.Errorf("/metrics has no %s", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s is a %v, want a %v", name, f.GetType(), typ)
		}
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no help text", name)
		}
		if f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, m := range f.GetMetric() {
				checkHistogram(t, name, m.GetHistogram())
			}
		}
		// Labels are route patterns, method names, codes and classes: never an id, a key or
		// a raw path.
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if strings.Contains(lp.GetValue(), keyPrefix) {
					t.Errorf("%s has a label that looks like a key: %s", name, lp.GetValue())
				}
			}
		}
	}
	if v := sample(fams, "liveops_build_info"); v != 1 {
		t.Errorf("liveops_build_info = %v, want 1", v)
	}
	for _, check := range []string{"reads", "writes"} {
		if v := sample(fams, "liveops_database_up", "check", check); v != 1 {
			t.Errorf(`liveops_database_up{check=%q} = %v, want 1`, check, v)
		}
	}
	if v := sample(fams, "liveops_api_keys", "role", "metrics", "state", "active"); v != 1 {
		t.Errorf(`liveops_api_keys{role="metrics",state="active"} = %v, want 1`, v)
	}
}

// checkHistogram fails the test unless h is well formed: bucket bounds rising, cumulative
// counts not falling, and the last bucket no larger than the count (the +Inf bucket, which
// the parser folds into the count).
func checkHistogram(t *testing.T, name string, h *dto.Histogram) {
	t.Helper()
	prevBound, prevCount := math.Inf(-1), uint64(0)
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() <= prevBound {
			t.Errorf("%s: bucket bounds not rising at %v", name, b.GetUpperBound())
		}
		if b.GetCumulativeCount() < prevCount {
			t.Errorf("%s: cumulative count falls at le=%v", name, b.GetUpperBound())
		}
		prevBound, prevCount = b.GetUpperBound(), b.GetCumulativeCount()
	}
	if len(h.GetBucket()) == 0 {
		t.Errorf("%s has no buckets", name)
	}
	if prevCount > h.GetSampleCount() {
		t.Errorf("%s: the last bucket holds %d, more than the count %d", name, prevCount, h.GetSampleCount())
	}
	if h.GetSampleCount() == 0 && h.GetSampleSum() != 0 {
		t.Errorf("%s: a sum of %v over no samples", name, h.GetSampleSum())
	}
}

func TestMetricsCountWhatHappens(t *testing.T) {
	ts := startServer(t)
	key := createServerKey(t, ts, roleMetrics)
	before := scrape(t, ts.addr, key)

	// A player read, a refused one, an admin write, a refused call and an unknown route.
	ts.get(t, "/events", ts.user)
	ts.get(t, "/events", "")
	ts.get(t, "/no/such/route", "")
	now := time.Now()
	if _, err := ts.events.CreateEvent(withKey(ts.admin), createReq("Festival", now.Add(-time.Hour), now.Add(time.Hour), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.events.ListEvents(withKey("lo_admin_nope"), nil); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ListEvents with a bad key: %v", err)
	}

	type moved struct {
		name   string
		labels []string
		by     float64
	}
	want := []moved{
		{"liveops_http_requests_total", []string{"route", "GET /events", "status_class", "2xx"}, 1},
		{"liveops_http_requests_total", []string{"route", "GET /events", "status_class", "4xx"}, 1},
		{"liveops_http_requests_total", []string{"route", "/", "status_class", "4xx"}, 1},
		{"liveops_http_request_duration_seconds", []string{"route", "GET /events", "status_class", "2xx"}, 1},
		{"liveops_grpc_requests_total", []string{"method", "/liveops.v1.EventService/CreateEvent", "code", "OK"}, 1},
		{"liveops_grpc_requests_total", []string{"method", "/liveops.v1.EventService/ListEvents", "code", "Unauthenticated"}, 1},
		{"liveops_grpc_request_duration_seconds", []string{"method", "/liveops.v1.EventService/CreateEvent"}, 1},
		{"liveops_auth_failures_total", []string{"reason", "missing"}, 1},
		{"liveops_auth_failures_total", []string{"reason", "invalid"}, 1},
		{"liveops_db_transaction_duration_seconds", []string{"op", "create event"}, 1},
		{"liveops_snapshot_rebuild_duration_seconds", []string{"how", "write"}, 1},
		{"liveops_snapshot_generation", nil, 1},
		{"liveops_events", []string{"status", "active"}, 1},
	}
	// Requests are counted once answered, just after the client has its answer: poll.
	var after map[string]*dto.MetricFamily
	check := func() []string {
		var wrong []string
		for _, w := range want {
			was, now := sample(before, w.name, w.labels...), sample(after, w.name, w.labels...)
			if math.IsNaN(was) {
				was = 0
			}
			if now-was != w.by {
				wrong = append(wrong, w.name+" "+strings.Join(w.labels, " ")+": moved by "+jsonNumber(now-was))
			}
		}
		return wrong
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after = scrape(t, ts.addr, key)
		wrong := check()
		if len(wrong) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not move as the requests did:\n%s", strings.Join(wrong, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func jsonNumber(v float64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestMetricsAddrServesWithoutAKey(t *testing.T) {
	ts := startServer(t, "-metrics-addr", "127.0.0.1:0")
	var addr string
	for _, line := range strings.Split(ts.logs.String(), "\n") {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving metrics without a key" {
			addr = rec.Addr
		}
	}
	if addr == "" {
		t.Fatalf("no metrics listener in the log:\n%s", ts.logs)
	}
	if fams := scrape(t, addr, ""); sample(fams, "liveops_build_info") != 1 {
		t.Errorf("the metrics listener does not serve liveops_build_info")
	}
	// It serves /metrics and nothing else.
	resp, err := http.Get("http://" + addr + "/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET /events on the metrics listener = %d, want 404", resp.StatusCode)
	}
}

// BenchmarkObserveRequest is what counting a request adds to it: a counter and a histogram
// child chosen without a label look-up.
func BenchmarkObserveRequest(b *testing.B) {
	reqs := newRequestMetrics(prometheus.NewRegistry(), []string{"GET /events"}, []string{"/liveops.v1.EventService/ListEvents"})
	route := reqs.route("GET /events")
	b.Run("http", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				reqs.observeHTTP(route, 200, 150*time.Microsecond)
			}
		})
	})
	b.Run("grpc", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				reqs.observeRPC("/liveops.v1.EventService/ListEvents", codes.OK, 150*time.Microsecond)
			}
		})
	})
	// What the issue warns against: resolving the labels on every request.
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "x", Buckets: latencyBuckets}, []string{"route", "status_class"})
	b.Run("label-lookup-per-request", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				vec.WithLabelValues("GET /events", "2xx").Observe(150e-6)
			}
		})
	})
}

func TestSnapshotStalenessStaysLowWhileNothingChanges(t *testing.T) {
	c := newClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	ts := startClockedServer(t, c, "-reload-interval", "10ms")
	key := createServerKey(t, ts, roleMetrics)
	// Hours with no writes: the snapshot is as old as that, but it is not stale, because
	// every poll finds that the database holds nothing it lacks. (The first hour may see
	// the poll that notices the key just made; the second has nothing to notice.)
	for hours := 1; hours <= 2; hours++ {
		c.set(c.now().Add(time.Hour))
		waitFor(t, func() bool {
			fams := scrape(t, ts.addr, key)
			return sample(fams, "liveops_snapshot_age_seconds") >= float64(hours*3600) &&
				sample(fams, "liveops_snapshot_staleness_seconds") < 1
		})
	}
}
