package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
)

// run is the whole program: main only calls it. It runs a subcommand, or parses the
// server's flags, opens the store and the listener and serves until ctx is cancelled.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 1 {
		switch args[1] {
		case "keys":
			return runKeys(ctx, args[2:], getenv, stdout, stderr)
		case "backup":
			return runBackup(ctx, args[2:], getenv, stdout, stderr)
		case "export":
			return runExport(ctx, args[2:], getenv, stdout, stderr)
		case "import":
			return runImport(ctx, args[2:], getenv, stdout, stderr)
		case "version":
			return runVersion(args[2:], stdout, stderr)
		}
	}
	cfg, err := parseConfig(args[1:], getenv, stdout, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg.logFormat, stderr)
	defer log.out.Flush()

	// The port first: a start that cannot have it leaves no database file behind.
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	st, err := openStore(ctx, cfg.db, time.Now, fmt.Sprintf("busy_timeout(%d)", cfg.busyTimeout.Milliseconds()))
	if err != nil {
		ln.Close()
		return err
	}
	defer st.Close()
	// Only now that the port is ours: a start that fails must not use up the keys.
	if err := bootstrapKeys(ctx, st, cfg.bootstrapKeysFile, stdout); err != nil {
		ln.Close()
		return err
	}
	return serve(ctx, cfg, st, time.Now, log, ln)
}

// serve serves both protocols on ln until ctx is cancelled, then shuts down in order: stop
// taking requests and let in-flight ones finish, stop gRPC, write out the key usage and the
// log. now is the clock everything reads, the store's included, so that tests can move
// time; run and every test that starts a server come through here.
func serve(ctx context.Context, cfg config, st *store, now func() time.Time, log *logger, ln net.Listener) error {
	svc, err := newService(ctx, cfg, st, now, log)
	if err != nil {
		ln.Close()
		return err
	}
	srv := newHTTPServer(svc.handler, cfg.limits, log)
	var metricsSrv *http.Server
	if cfg.metricsAddr != "" {
		mln, err := net.Listen("tcp", cfg.metricsAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen for metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", svc.metrics)
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: cfg.limits.readHeaderTimeout,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go metricsSrv.Serve(mln)
		defer metricsSrv.Close()
		log.Info("serving metrics without a key", "addr", mln.Addr().String())
	}
	log.Info("listening", "addr", ln.Addr().String(), "db", redactDSN(cfg.db), "tls", cfg.tlsCert != "")

	// The watcher outlives ctx by a little: it stops only after the server has, so that its
	// final flush of key usage sees every request.
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	var background sync.WaitGroup
	nudge := make(chan struct{}, 1)
	if st.pg && cfg.pgNotify {
		background.Go(func() { listenForChanges(watchCtx, st, nudge, log, time.Second) })
	}
	background.Go(func() {
		watchDatabase(watchCtx, st, svc.keys, svc.events, log, cfg.reloadInterval, time.Minute, nudge)
	})
	background.Go(func() { svc.ready.run(watchCtx, cfg.reloadInterval) })
	// Access-log lines are written in batches; this writes each batch out.
	background.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-watchCtx.Done():
				return
			case <-tick.C:
				log.out.Flush()
			}
		}
	})
	defer func() { stopWatch(); background.Wait() }()

	serveErr := make(chan error, 1)
	go func() {
		if cfg.tlsCert != "" {
			serveErr <- srv.ServeTLS(ln, cfg.tlsCert, cfg.tlsKey)
		} else {
			serveErr <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	log.Info("shutting down", "grace", cfg.shutdownTimeout.String())
	svc.ready.drain()     // /readyz answers 503, so a balancer sends no more
	svc.health.Shutdown() // health answers NOT_SERVING to anyone still asking
	close(svc.shutdown)   // streams end with UNAVAILABLE, so their clients reconnect elsewhere
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
	defer cancel()
	// Shutdown waits for in-flight requests, gRPC calls included: on the ServeHTTP path they
	// are ordinary HTTP handlers. grpc's GracefulStop would abort them, so Stop comes after.
	if err := srv.Shutdown(sctx); err != nil {
		// Long-lived streams (a health Watch, say) never finish by themselves; once the
		// grace period is over they are cut, and the shutdown is still a normal one.
		log.Warn("grace period over, closing remaining connections", "err", err)
		srv.Close()
	}
	svc.grpc.Stop()
	if svc.traces != nil {
		// The last requests' spans go out now, unless the collector cannot take them in
		// time: a collector that is down must not hold up the stop.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(cfg.shutdownTimeout, traceFlushTimeout))
		if err := svc.traces.Shutdown(tctx); err != nil {
			log.Warn("flush spans", "err", err)
		}
		cancel()
	}
	log.Info("stopped")
	return nil
}

// service is the whole object graph behind the listener, built from explicit dependencies.
type service struct {
	keys    *keyring
	events  *readModel
	ready   *readiness
	grpc    *grpc.Server
	health  *health.Server
	handler http.Handler // both protocols, on one port
	metrics http.Handler // GET /metrics, without the key check: for -metrics-addr
	// shutdown is closed when the server starts shutting down, ending gRPC streams.
	shutdown chan struct{}
	// traces exports spans; nil when no OTLP endpoint is set (see newTracerProvider).
	traces *sdktrace.TracerProvider
}

// traceFlushTimeout bounds how long a stop waits for the last spans to be exported.
const traceFlushTimeout = 5 * time.Second

func newService(ctx context.Context, cfg config, st *store, now func() time.Time, log *logger) (*service, error) {
	kr, err := newKeyring(ctx, st, now)
	if err != nil {
		return nil, err
	}
	rm, err := newReadModel(ctx, st, now, log)
	if err != nil {
		return nil, err
	}
	lim := cfg.limits
	auth := newAuthMetrics(kr)
	g := &guard{keys: kr, limiter: newFailureLimiter(lim.authFailLimit, lim.authFailWindow, lim.authBlock, now), stats: auth}
	shutdown := make(chan struct{})
	gs, hs := newGRPCServer(st, rm, lim, cfg.defaultLocale, shutdown, log)
	ready := newReadiness(st, hs, log)
	inflight := &inFlight{max: int64(lim.maxInFlight)}

	reg := newRegistry(st.stats, rm.stats, auth, inFlightGauge(inflight), databaseUp(ready))
	reqs := newRequestMetrics(reg, slices.Collect(maps.Keys(routeRoles)), slices.Collect(maps.Keys(rpcRoles)))
	metrics := metricsHandler(reg, log)
	mux := http.NewServeMux()
	addRoutes(mux, g, st, rm, ready, newAnswerCache(maxCachedAnswers, maxCachedAnswerBytes), reqs, metrics,
		targeting{defaultLocale: cfg.defaultLocale, countryHeader: cfg.countryHeader,
			selections: newSelectionCache(maxCachedSelections, maxCachedSelectionBytes),
			contexts:   newContextIndex(maxCachedContexts)}, cfg.allowTimeTravel, cfg.sharedCacheMaxAge, cors{cfg.corsOrigins})
	// Last, once nothing else can fail: the provider runs an exporter until shut down.
	tp, err := newTracerProvider(ctx, cfg.tracing, log)
	if err != nil {
		return nil, err
	}
	var tr trace.Tracer // nil: no spans, only trace ids
	if tp != nil {
		tr = tp.Tracer(tracerName)
	}
	return &service{keys: kr, events: rm, ready: ready, grpc: gs, health: hs, shutdown: shutdown, traces: tp, metrics: metrics,
		handler: newHandler(mux, grpcGate(gs, g, inflight, reqs, lim.maxHeaderBytes, log, tr), inflight, reqs, lim, log, tr)}, nil
}

// The answer cache's bounds: enough for every variant a game's clients ask in one second,
// and small beside the snapshot itself.
const (
	maxCachedAnswers     = 256
	maxCachedAnswerBytes = 32 << 20
)

// The bounds of the targeted players' answers, one per selection of events (see
// selectionCache): a selection is typically 10 KB, and a game with a few audiences,
// rollouts and locales has hundreds to a few thousand of them.
const (
	maxCachedSelections     = 4096
	maxCachedSelectionBytes = 64 << 20
	// Requests asking the same as one before (the same query string and headers) find
	// their selection in an index of this many, a few hundred bytes each.
	maxCachedContexts = 32768
)

// watchDatabase keeps the in-memory keys and events current until ctx ends. Every poll it
// asks SQLite whether any connection, in this process or another, committed a change; if
// so it reloads the keys (a handful of rows) and lets the read model reload the events if
// their generation moved. This is how `liveops keys revoke` run elsewhere takes effect
// within a poll. Every flushEvery it writes key usage to the database, and once more on the
// way out.
//
// A send on nudge (PostgreSQL's change feed) makes it look at once rather than at the
// next poll.
func watchDatabase(ctx context.Context, st *store, kr *keyring, rm *readModel, log *logger, poll, flushEvery time.Duration, nudge <-chan struct{}) {
	defer func() {
		// ctx is done; give the last flush its own short deadline.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := kr.flushUsage(fctx); err != nil {
			log.Error("flush key usage", "err", err)
		}
	}()

	// changed reports whether the database may hold changes this process has not seen.
	// SQLite says so for free: PRAGMA data_version moves whenever another connection
	// commits (it is per connection, so every poll must use this same one). PostgreSQL has
	// no such counter: there every poll reloads the keys, a handful of rows, and the read
	// model compares the events generation itself.
	changed := func() (bool, error) { return true, nil }
	if !st.pg {
		conn, err := st.db.Conn(ctx)
		if err != nil {
			log.Error("watch database: no connection", "err", err)
			return
		}
		defer conn.Close()
		last, err := dataVersion(ctx, conn)
		if err != nil {
			log.Error("watch database", "err", err)
		}
		changed = func() (bool, error) {
			v, err := dataVersion(ctx, conn)
			if err != nil || v == last {
				return false, err
			}
			last = v
			return true, nil
		}
	}
	// The keys and events were loaded before this first reading; a change committed in
	// between (a revoke during start-up, say) would otherwise wait for an unrelated one.
	if err := kr.reload(ctx); err != nil {
		log.Error("reload keys", "err", err)
	}
	if err := rm.refresh(ctx); err != nil {
		log.Error("reload events", "err", err)
	}

	pollTick := time.NewTicker(poll)
	defer pollTick.Stop()
	flushTick := time.NewTicker(flushEvery)
	defer flushTick.Stop()
	retry := false // a reload failed: try again at the next poll, change or not
	look := func() {
		ok, err := changed()
		if err != nil {
			log.Error("watch database", "err", err)
			return
		}
		if !ok && !retry {
			rm.current()
			return
		}
		retry = false
		if err := kr.reload(ctx); err != nil {
			log.Error("reload keys", "err", err)
			retry = true
		}
		if err := rm.refresh(ctx); err != nil {
			log.Error("reload events", "err", err)
			retry = true
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-flushTick.C:
			if err := kr.flushUsage(ctx); err != nil {
				log.Error("flush key usage", "err", err)
			}
		case <-nudge:
			retry = true // a change was committed: look, whatever changed() says
			look()
		case <-pollTick.C:
			look()
		}
	}
}

// newHTTPServer returns the server for both protocols, with the transport limits applied.
// The HTTP/2 limits live here, on http.Server.HTTP2: on the ServeHTTP path gRPC's own
// MaxConcurrentStreams option is never consulted.
func newHTTPServer(h http.Handler, lim limits, log *logger) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.readHeaderTimeout,
		ReadTimeout:       lim.readTimeout,
		WriteTimeout:      lim.writeTimeout,
		IdleTimeout:       lim.idleTimeout,
		// limitRequests enforces maxHeaderBytes with a JSON 431; net/http's own cap, which
		// answers in plain text, only stops blocks too big to read at all.
		MaxHeaderBytes: 2 * lim.maxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: lim.http2MaxStreams,
			// A peer that stops answering pings is gone; free its streams.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
		Protocols: new(http.Protocols),
		ErrorLog:  slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true) // h2c: what grpcurl -plaintext and grpc-go speak
	srv.Protocols.SetHTTP2(true)            // over TLS, when -tls-cert is given
	return srv
}

// newHandler returns the one handler that serves both protocols on one port: HTTP/2
// requests with a gRPC content type go to grpcGate and on to the gRPC server, everything
// else to the mux. It bounds, for both, the header block and the requests in flight.
func newHandler(mux http.Handler, grpcGate http.Handler, inflight *inFlight, reqs *requestMetrics, lim limits, log *logger, tr trace.Tracer) http.Handler {
	httpHandler := logRequests(log, reqs, tr, securityHeaders(limitRequests(lim.maxHeaderBytes, inflight, reqs, mux)))
	refuse := func(status int, msg string) http.Handler {
		return logRequests(log, reqs, tr, securityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeError(w, r, &httpError{status, msg})
		})))
	}
	grpcOverHTTP1 := refuse(http.StatusBadRequest, "gRPC needs HTTP/2: use h2c (HTTP/2 without TLS, prior knowledge) or TLS")
	grpcWeb := refuse(http.StatusUnsupportedMediaType,
		"gRPC-Web is not served: use gRPC over HTTP/2 (h2c or TLS), or put a gRPC-Web proxy such as Envoy in front")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		switch {
		case isGRPC(ct) && r.ProtoMajor == 2:
			grpcGate.ServeHTTP(w, r)
		case isGRPC(ct):
			grpcOverHTTP1.ServeHTTP(w, r)
		case strings.HasPrefix(ct, "application/grpc-web"):
			grpcWeb.ServeHTTP(w, r)
		default:
			httpHandler.ServeHTTP(w, r)
		}
	})
}

// limitRequests refuses, before any route runs, a request whose header block is over
// maxHeaderBytes (431; net/http itself lets up to 4 KiB more through) and, but for the
// health probes, one that would take the requests in flight past their bound (503).
func limitRequests(maxHeaderBytes int, inflight *inFlight, reqs *requestMetrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := headerBytes(r); n > maxHeaderBytes {
			w.Header().Set("Connection", "close")
			writeError(w, r, &httpError{http.StatusRequestHeaderFieldsTooLarge,
				fmt.Sprintf("request header block is %d bytes; the limit is %d", n, maxHeaderBytes)})
			return
		}
		// The probes answer from memory: an orchestrator must hear them however busy
		// the instance is.
		if p := r.URL.Path; p != "/livez" && p != "/readyz" && p != "/healthz" {
			if !inflight.acquire() {
				reqs.shedHTTP.Inc()
				w.Header().Set("Retry-After", "1")
				writeError(w, r, &httpError{http.StatusServiceUnavailable, errTooBusy.Error()})
				return
			}
			defer inflight.release()
		}
		next.ServeHTTP(w, r)
	})
}

// headerBytes is the size of r's header block as it came over HTTP/1.1: the request line
// and each field as "Name: value\r\n". HTTP/2 sends less for the same fields, so one
// count and one limit hold for both.
func headerBytes(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2
	for name, values := range r.Header {
		for _, v := range values {
			n += len(name) + 2 + len(v) + 2
		}
	}
	return n + len(r.Host) + len("Host: \r\n")
}

// isGRPC reports whether a Content-Type is gRPC's: application/grpc, or a subtype such as
// application/grpc+proto.
func isGRPC(contentType string) bool {
	rest, ok := strings.CutPrefix(contentType, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// addRoutes lists the whole HTTP API: each route with the query parameters it takes. Each
// is wrapped in the role routeRoles gives it, and registering a route missing from
// routeRoles panics, so no route ships without a decision about who may call it. The
// routes for players' keys are the ones browser games call, so they follow the CORS
// policy c, errors included.
func addRoutes(mux *http.ServeMux, g *guard, st *store, rm *readModel, ready *readiness, answers *answerCache,
	reqs *requestMetrics, metrics http.Handler, tg targeting, allowTimeTravel bool, sharedMaxAge time.Duration, c cors) {
	handle := func(pattern string, params []string, h http.Handler) {
		need, ok := routeRoles[pattern]
		if !ok {
			panic("route " + pattern + " has no entry in routeRoles")
		}
		h = g.requireRole(need, h)
		if strings.HasPrefix(pattern, "GET ") {
			// Before authentication, so no GET body is ever read, nor a key checked for a
			// request that is refused anyway.
			h = refuseBody(onlyParams(params, h))
		}
		if need == roleHTTPUser {
			// Outermost, so that the refusals of the layers within (a bad key, a body, an
			// unknown parameter) can be read by the page too.
			h = c.share(h)
		}
		mux.Handle(pattern, noteRoute(reqs.route(pattern), h))
	}
	handle("GET /livez", nil, handleLivez())
	handle("GET /readyz", nil, handleReadyz(ready))
	handle("GET /healthz", nil, handleReadyz(ready)) // the name older probes use; the same as /readyz
	handle("GET /events", append([]string{"status", "label", "at"}, contextParams...), handleEvents(rm, answers, tg, allowTimeTravel, sharedMaxAge))
	handle("GET /events/{id}", append([]string{"at"}, contextParams...), handleEvent(rm, answers, tg, allowTimeTravel, sharedMaxAge))
	// Browsers ask these, without a key, before a GET from another origin that sends one.
	handle("OPTIONS /events", nil, c.preflight("GET, HEAD"))
	handle("OPTIONS /events/{id}", nil, c.preflight("GET, HEAD"))
	handle("GET /metrics", nil, metrics)

	// The ServeMux answers 404 and 405 in plain text; these give them the JSON error shape.
	handle("/livez", nil, handleMethodNotAllowed("GET, HEAD"))
	handle("/readyz", nil, handleMethodNotAllowed("GET, HEAD"))
	handle("/healthz", nil, handleMethodNotAllowed("GET, HEAD"))
	handle("/events", nil, handleMethodNotAllowed("GET, HEAD"))
	handle("/events/{id}", nil, handleMethodNotAllowed("GET, HEAD"))
	handle("/metrics", nil, handleMethodNotAllowed("GET, HEAD"))
	handle("/", nil, handleNotFound())
}

// noteRoute records in the request's info that route m answered it, for its metrics and
// span (see logRequests): the mux tells only the handler it picks (in r.Pattern), not the
// layers around it. The HTTP handlers run one after another in one goroutine, so the note
// needs no lock.
func noteRoute(m *routeMetrics, next http.Handler) http.Handler {
	if m == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if info := infoFrom(r.Context()); info != nil {
			info.route = m
		}
		next.ServeHTTP(w, r)
	})
}

// refuseBody answers 400 to a GET that carries a body. The body is never read, and the
// connection is closed so that the server does not drain it either.
func refuseBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
			writeError(w, r, &httpError{http.StatusBadRequest, "request body not allowed on GET"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// securityHeaders sets the headers every HTTP response carries.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := []string{"nosniff", "no-store"}
		h := w.Header()
		h["X-Content-Type-Options"] = v[0:1:1]
		// Responses depend on the caller's key; no shared cache may keep one unless a
		// handler says otherwise.
		h["Cache-Control"] = v[1:2:2]
		next.ServeHTTP(w, r)
	})
}

// statusRecorder remembers the status a handler wrote, and holds the request's info, for
// the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
	info   requestInfo
}

func (rec *statusRecorder) WriteHeader(code int) {
	if rec.status == 0 {
		rec.status = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *statusRecorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (rec *statusRecorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// recorders are reused across requests, sparing each request an allocation that the
// collector must then sweep (BenchmarkGetEvents/cached counts them).
var recorders = sync.Pool{New: func() any { return new(statusRecorder) }}

// logRequests writes one access-log line per HTTP request, with what the handlers noted in
// its context: the key that called and, for a refusal, why, and counts it. It puts the
// request in its trace first, and ends its span (if tr makes them) when the answer is
// written.
func logRequests(log *logger, reqs *requestMetrics, tr trace.Tracer, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := recorders.Get().(*statusRecorder)
		rec.ResponseWriter = w
		ctx, span := startHTTPSpan(context.WithValue(r.Context(), infoKey{}, &rec.info), tr, r, &rec.info)
		next.ServeHTTP(rec, r.WithContext(ctx))
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		endHTTPSpan(span, r, rec.info.route.name(), rec.status)
		e := &accessEntry{end: time.Now(), proto: r.Proto, method: r.Method, path: r.URL.Path,
			// A 503 is the server shedding load or draining, as meant: not a failure.
			status: rec.status, failed: rec.status >= 500 && rec.status != http.StatusServiceUnavailable}
		e.took = e.end.Sub(start)
		log.access(e.from(&rec.info))
		reqs.observeHTTP(rec.info.route, rec.status, e.took)
		// The request is over: nothing holds rec or its info any more.
		rec.ResponseWriter, rec.status, rec.info.caller, rec.info.reason, rec.info.route = nil, 0, nil, "", nil
		recorders.Put(rec)
	})
}
