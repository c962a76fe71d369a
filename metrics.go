package main

import (
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"
)

// This file holds the Prometheus metrics: the request families recorded by the access log,
// and the registry that gathers them with the families each part of the service keeps for
// itself (the store's, the read model's, the guard's). Every label value a request can
// record under is made once, when the service starts: recording is an atomic add and a
// histogram observation, with no label look-up.

// latencyBuckets suit a service that answers most requests from memory in well under a
// millisecond, and its writes in a few: the default buckets start at 5 ms.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// statusClasses are the values of the status_class label, indexed by status/100; index 0
// holds whatever falls outside 1xx-5xx.
var statusClasses = [6]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// routeMetrics are one HTTP route's children, one per status class.
type routeMetrics struct {
	pattern   string
	requests  [len(statusClasses)]prometheus.Counter
	durations [len(statusClasses)]prometheus.Observer
}

func (m *routeMetrics) observe(status int, took time.Duration) {
	class := status / 100
	if class < 1 || class > 5 {
		class = 0
	}
	m.requests[class].Inc()
	m.durations[class].Observe(took.Seconds())
}

// rpcMetrics are one gRPC method's children: a counter per code, a histogram for all.
type rpcMetrics struct {
	calls     [codes.Unauthenticated + 1]prometheus.Counter
	durations prometheus.Observer
}

func (m *rpcMetrics) observe(code codes.Code, took time.Duration) {
	if code > codes.Unauthenticated {
		code = codes.Unknown
	}
	m.calls[code].Inc()
	m.durations.Observe(took.Seconds())
}

// otherRoute and otherMethod label what matched no route (refused before routing, say)
// and calls to methods liveops does not serve, so that clients cannot mint label values.
const (
	otherRoute  = "other"
	otherMethod = "other"
)

// requestMetrics are the per-request families of both protocols.
type requestMetrics struct {
	routes  map[string]*routeMetrics // by ServeMux pattern
	methods map[string]*rpcMetrics   // by full method name, /package.Service/Method
	// shedHTTP and shedGRPC count requests refused because too many were in flight.
	shedHTTP, shedGRPC prometheus.Counter
}

func newRequestMetrics(reg prometheus.Registerer, patterns, methods []string) *requestMetrics {
	httpRequests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "liveops_http_requests_total",
		Help: "HTTP requests answered, by ServeMux route pattern and status class.",
	}, []string{"route", "status_class"})
	httpDurations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "liveops_http_request_duration_seconds",
		Help:    "Time from reading an HTTP request's headers to the end of its answer, by route pattern and status class.",
		Buckets: latencyBuckets,
	}, []string{"route", "status_class"})
	grpcCalls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "liveops_grpc_requests_total",
		Help: "gRPC calls finished, by full method name and status code.",
	}, []string{"method", "code"})
	grpcDurations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "liveops_grpc_request_duration_seconds",
		Help:    "Time from a gRPC call's headers to its status, by full method name.",
		Buckets: latencyBuckets,
	}, []string{"method"})
	shed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "liveops_requests_shed_total",
		Help: "Requests refused because -max-in-flight requests were already being served, by protocol.",
	}, []string{"protocol"})
	reg.MustRegister(httpRequests, httpDurations, grpcCalls, grpcDurations, shed)

	m := &requestMetrics{routes: map[string]*routeMetrics{}, methods: map[string]*rpcMetrics{},
		shedHTTP: shed.WithLabelValues("http"), shedGRPC: shed.WithLabelValues("grpc")}
	for _, p := range append(patterns, otherRoute) {
		rm := &routeMetrics{pattern: p}
		for i, class := range statusClasses {
			rm.requests[i] = httpRequests.WithLabelValues(p, class)
			rm.durations[i] = httpDurations.WithLabelValues(p, class)
		}
		m.routes[p] = rm
	}
	for _, name := range append(methods, otherMethod) {
		mm := &rpcMetrics{durations: grpcDurations.WithLabelValues(name)}
		for c := range mm.calls {
			mm.calls[c] = grpcCalls.WithLabelValues(name, codes.Code(c).String())
		}
		m.methods[name] = mm
	}
	return m
}

// name returns the route's ServeMux pattern, or "" for none.
func (m *routeMetrics) name() string {
	if m == nil {
		return ""
	}
	return m.pattern
}

// route returns the children for a ServeMux pattern; nil for an unknown one.
func (m *requestMetrics) route(pattern string) *routeMetrics {
	if m == nil {
		return nil
	}
	return m.routes[pattern]
}

// observeHTTP records an HTTP request answered with status after took, under the route the
// mux matched (rm), or under "other" when none did.
func (m *requestMetrics) observeHTTP(rm *routeMetrics, status int, took time.Duration) {
	if m == nil {
		return
	}
	if rm == nil {
		rm = m.routes[otherRoute]
	}
	rm.observe(status, took)
}

// observeRPC records a gRPC call to method that ended with code after took.
func (m *requestMetrics) observeRPC(method string, code codes.Code, took time.Duration) {
	if m == nil {
		return
	}
	mm, ok := m.methods[method]
	if !ok {
		mm = m.methods[otherMethod]
	}
	mm.observe(code, took)
}

// newRegistry returns a registry with the runtime, process and build families, and every
// family the service's parts keep.
func newRegistry(parts ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(),
	)
	reg.MustRegister(parts...)
	return reg
}

// buildInfo is liveops_build_info: always 1, with the version and commit as labels, so a
// dashboard can tell which build each instance runs.
func buildInfo() prometheus.Collector {
	version, revision := buildVersion()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "liveops_build_info",
		Help:        "Always 1; its labels say which build this instance runs.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion()},
	})
	g.Set(1)
	return g
}

// buildVersion returns the module version and the VCS revision the binary was built from,
// as the Go toolchain recorded them; "(devel)" and "unknown" when it recorded none.
func buildVersion() (version, revision string) {
	version, revision = "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	return version, revision
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

// metricsHandler serves reg in the text format Prometheus asks for, or OpenMetrics to a
// scraper that prefers it.
func metricsHandler(reg *prometheus.Registry, log *logger) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorLog:          promLogger{log},
		// A scrape that cannot gather one family still gets the others.
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// promLogger passes promhttp's errors to the service's log.
type promLogger struct{ log *logger }

func (l promLogger) Println(v ...any) { l.log.Error("metrics", "err", fmt.Sprint(v...)) }

// storeMetrics are the database families: write transaction durations, the errors the
// store classifies, and database/sql's connection pool.
type storeMetrics struct {
	txDurations *prometheus.HistogramVec
	txTimers    sync.Map // transaction name -> prometheus.Observer, made on first use
	errors      *prometheus.CounterVec
	byKind      map[error]prometheus.Counter
	pool        prometheus.Collector
}

func newStoreMetrics(pool *sql.DB) *storeMetrics {
	m := &storeMetrics{
		txDurations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "liveops_db_transaction_duration_seconds",
			Help:    "Time from beginning a database write transaction to its commit or rollback, by what it does.",
			Buckets: latencyBuckets,
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "liveops_db_errors_total",
			Help: "Database calls that failed because the database was busy, unavailable, read-only or full.",
		}, []string{"kind"}),
		// go_sql_*: open, in use and idle connections, waits and their time, closes.
		pool: collectors.NewDBStatsCollector(pool, "liveops"),
	}
	m.byKind = map[error]prometheus.Counter{
		errBusy:        m.errors.WithLabelValues("busy"),
		errUnavailable: m.errors.WithLabelValues("unavailable"),
		errReadOnly:    m.errors.WithLabelValues("read_only"),
		errFull:        m.errors.WithLabelValues("full"),
	}
	return m
}

// observeTx records a transaction named name that took took. The names are a handful of
// constants in the store's code, so each child is made once.
func (m *storeMetrics) observeTx(name string, took time.Duration) {
	o, ok := m.txTimers.Load(name)
	if !ok {
		o, _ = m.txTimers.LoadOrStore(name, m.txDurations.WithLabelValues(name))
	}
	o.(prometheus.Observer).Observe(took.Seconds())
}

// countError counts err if it is one of the conditions the store classifies.
func (m *storeMetrics) countError(err error) {
	for kind, c := range m.byKind {
		if errors.Is(err, kind) {
			c.Inc()
			return
		}
	}
}

func (m *storeMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.txDurations.Describe(ch)
	m.errors.Describe(ch)
	m.pool.Describe(ch)
}

func (m *storeMetrics) Collect(ch chan<- prometheus.Metric) {
	m.txDurations.Collect(ch)
	m.errors.Collect(ch)
	m.pool.Collect(ch)
}

// readModelMetrics are the snapshot's families. The gauges are worked out when scraped,
// from the snapshot as it stands.
type readModelMetrics struct {
	rm       *readModel
	rebuilds map[string]prometheus.Observer // by how: load, catch_up, write
	rebuildV *prometheus.HistogramVec
	lag      prometheus.Histogram
	// rebuiltAt and checkedAt are when the snapshot was last replaced and last known to
	// match the database, in Unix nanoseconds by the read model's clock.
	rebuiltAt, checkedAt atomic.Int64

	generation, age, staleness, events *prometheus.Desc
}

func newReadModelMetrics(rm *readModel) *readModelMetrics {
	m := &readModelMetrics{
		rm: rm,
		rebuildV: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "liveops_snapshot_rebuild_duration_seconds",
			Help: "Time to make a new snapshot: by loading every event (load), applying the changes " +
				"other instances made (catch_up), or applying this instance's own write (write).",
			Buckets: latencyBuckets,
		}, []string{"how"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "liveops_change_propagation_seconds",
			Help: "Time from an event write (by the writing instance's clock) to its being applied " +
				"to this instance's snapshot, for writes this instance caught up on.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60},
		}),
		generation: prometheus.NewDesc("liveops_snapshot_generation",
			"The events generation the snapshot holds: it grows with every event write.", nil, nil),
		age: prometheus.NewDesc("liveops_snapshot_age_seconds",
			"Seconds since the snapshot was last replaced (by a write, a catch-up or a load).", nil, nil),
		staleness: prometheus.NewDesc("liveops_snapshot_staleness_seconds",
			"Seconds since the snapshot was last known to match the database: it grows while the database cannot be read.", nil, nil),
		events: prometheus.NewDesc("liveops_events",
			"Events in the snapshot, by status now: upcoming, active, ended, or draft.", []string{"status"}, nil),
	}
	m.rebuilds = map[string]prometheus.Observer{}
	for _, how := range []string{"load", "catch_up", "write"} {
		m.rebuilds[how] = m.rebuildV.WithLabelValues(how)
	}
	return m
}

// rebuilt records a new snapshot, made in took, that matches the database as of now.
func (m *readModelMetrics) rebuilt(how string, took time.Duration, now time.Time) {
	m.rebuilds[how].Observe(took.Seconds())
	m.rebuiltAt.Store(now.UnixNano())
	m.checkedAt.Store(now.UnixNano())
}

// checked records that the snapshot was found to match the database at now.
func (m *readModelMetrics) checked(now time.Time) { m.checkedAt.Store(now.UnixNano()) }

// propagated records changes applied at now.
func (m *readModelMetrics) propagated(changes []change, now time.Time) {
	for _, c := range changes {
		m.lag.Observe(max(now.Sub(c.at), 0).Seconds())
	}
}

func (m *readModelMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.rebuildV.Describe(ch)
	m.lag.Describe(ch)
	ch <- m.generation
	ch <- m.age
	ch <- m.staleness
	ch <- m.events
}

func (m *readModelMetrics) Collect(ch chan<- prometheus.Metric) {
	m.rebuildV.Collect(ch)
	m.lag.Collect(ch)
	snap, now := m.rm.snapshot(), m.rm.now()
	since := func(nanos int64) float64 { return max(now.Sub(time.Unix(0, nanos)), 0).Seconds() }
	ch <- prometheus.MustNewConstMetric(m.generation, prometheus.GaugeValue, float64(snap.gen))
	ch <- prometheus.MustNewConstMetric(m.age, prometheus.GaugeValue, since(m.rebuiltAt.Load()))
	ch <- prometheus.MustNewConstMetric(m.staleness, prometheus.GaugeValue, since(m.checkedAt.Load()))
	counts := map[string]int{"upcoming": 0, "active": 0, "ended": 0, "draft": 0}
	for e := range snap.ordered.all() {
		if e.State == stateDraft {
			counts["draft"]++
		} else {
			counts[statusNames[e.viewAt(now).status]]++
		}
	}
	for status, n := range counts {
		ch <- prometheus.MustNewConstMetric(m.events, prometheus.GaugeValue, float64(n), status)
	}
}

// authMetrics are the authentication families: refusals by reason, the failure limiter's
// refusals, and the keys the keyring holds, by role and state.
type authMetrics struct {
	failures  *prometheus.CounterVec
	byErr     map[error]prometheus.Counter
	throttled prometheus.Counter
	keys      *keyring
	keysDesc  *prometheus.Desc
}

func newAuthMetrics(kr *keyring) *authMetrics {
	m := &authMetrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "liveops_auth_failures_total",
			Help: "Requests refused for their key: missing, malformed (header), invalid (unknown or mistyped), revoked, expired, or wrong_role.",
		}, []string{"reason"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "liveops_auth_throttled_total",
			Help: "Requests refused by the failure limiter: their address sent too many bad keys.",
		}),
		keys: kr,
		keysDesc: prometheus.NewDesc("liveops_api_keys",
			"API keys, by role and state: active, revoked or expired.", []string{"role", "state"}, nil),
	}
	m.byErr = map[error]prometheus.Counter{
		errNoKey:      m.failures.WithLabelValues("missing"),
		errTwoKeys:    m.failures.WithLabelValues("malformed"),
		errBadScheme:  m.failures.WithLabelValues("malformed"),
		errInvalidKey: m.failures.WithLabelValues("invalid"),
		errRevokedKey: m.failures.WithLabelValues("revoked"),
		errExpiredKey: m.failures.WithLabelValues("expired"),
	}
	m.byErr[errWrongRole] = m.failures.WithLabelValues("wrong_role")
	m.byErr[errThrottled] = m.throttled
	return m
}

// errThrottled and errWrongRole stand, for authMetrics.refused, for a refusal by the
// failure limiter and for a key of the wrong role.
var (
	errThrottled = errors.New("throttled")
	errWrongRole = errors.New("wrong role")
)

// refused counts a key refused with err: one of the errors isKeyRefusal knows, or
// errThrottled or errWrongRole.
func (m *authMetrics) refused(err error) {
	if m == nil {
		return
	}
	if c, ok := m.byErr[err]; ok {
		c.Inc()
	}
}

func (m *authMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.failures.Describe(ch)
	m.throttled.Describe(ch)
	ch <- m.keysDesc
}

func (m *authMetrics) Collect(ch chan<- prometheus.Metric) {
	m.failures.Collect(ch)
	m.throttled.Collect(ch)
	now := m.keys.now()
	counts := map[[2]string]int{}
	for r := range roleTags {
		for _, state := range []string{"active", "revoked", "expired"} {
			counts[[2]string{string(r), state}] = 0
		}
	}
	for _, k := range *m.keys.keys.Load() {
		state := "active"
		switch {
		case !k.RevokedAt.IsZero():
			state = "revoked"
		case !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt):
			state = "expired"
		}
		counts[[2]string{string(k.Role), state}]++
	}
	for rs, n := range counts {
		ch <- prometheus.MustNewConstMetric(m.keysDesc, prometheus.GaugeValue, float64(n), rs[0], rs[1])
	}
}

// inFlightGauge is liveops_requests_in_flight, read from f when scraped.
func inFlightGauge(f *inFlight) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "liveops_requests_in_flight",
		Help: "Requests being served now, both protocols, health probes aside; -max-in-flight bounds it.",
	}, func() float64 { return float64(f.n.Load()) })
}

// databaseUp is liveops_database_up: the readiness probe's last verdict on whether the
// database answers reads and takes writes, read from rd when scraped.
func databaseUp(rd *readiness) prometheus.Collector {
	desc := prometheus.NewDesc("liveops_database_up",
		"1 when the last readiness probe (every -reload-interval) found the database answering reads (check=reads) or taking writes (check=writes), else 0.",
		[]string{"check"}, nil)
	return collectorFunc{desc, func(ch chan<- prometheus.Metric) {
		for check, reason := range map[string]*string{"reads": rd.reads.Load(), "writes": rd.writes.Load()} {
			up := 0.0
			if *reason == "" {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, up, check)
		}
	}}
}

// collectorFunc is a collector of one family, worked out by collect when scraped.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
