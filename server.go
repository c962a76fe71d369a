package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
)

// config is everything the server reads from its flags and environment.
type config struct {
	addr            string
	db              string
	logFormat       string
	tlsCert         string
	tlsKey          string
	reloadInterval  time.Duration
	shutdownTimeout time.Duration
	busyTimeout     time.Duration
	allowTimeTravel bool
	limits          limits
}

// limits bound what one client can make the server hold or do.
type limits struct {
	readHeaderTimeout time.Duration
	readTimeout       time.Duration
	writeTimeout      time.Duration
	idleTimeout       time.Duration
	maxHeaderBytes    int
	http2MaxStreams   int
	grpcMaxRecvBytes  int
	authFailLimit     int
	authFailWindow    time.Duration
	authBlock         time.Duration
}

// parseConfig reads flags, each falling back to an environment variable, then a default.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("liveops", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: liveops [flags]                    serve HTTP and gRPC on one port\n"+
			"       liveops keys create|list|revoke   manage API keys (liveops keys -h)\n"+
			"       liveops backup [-db FILE] OUT.db  copy the database while it is in use\n"+
			"       liveops export [-db FILE]         print every event as JSON\n"+
			"       liveops import [-db FILE] [-dry-run] EVENTS.json   create or update events from a file\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.addr, "addr", envOr(getenv, "LIVEOPS_ADDR", ":8080"), "listen address (env LIVEOPS_ADDR)")
	dbFlag(fs, &cfg.db, getenv)
	fs.StringVar(&cfg.logFormat, "log-format", envOr(getenv, "LIVEOPS_LOG_FORMAT", "text"), "log format: text or json (env LIVEOPS_LOG_FORMAT)")
	fs.StringVar(&cfg.tlsCert, "tls-cert", getenv("LIVEOPS_TLS_CERT"), "TLS certificate file; with -tls-key serves HTTPS and HTTP/2 over TLS (env LIVEOPS_TLS_CERT)")
	fs.StringVar(&cfg.tlsKey, "tls-key", getenv("LIVEOPS_TLS_KEY"), "TLS private key file (env LIVEOPS_TLS_KEY)")
	fs.DurationVar(&cfg.reloadInterval, "reload-interval", time.Second, "how often to look for key and event changes made by other processes")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight requests may run after SIGINT/SIGTERM")
	fs.BoolVar(&cfg.allowTimeTravel, "allow-time-travel", getenv("LIVEOPS_ALLOW_TIME_TRAVEL") == "true",
		"let players' GET /events?at=TIME answer as of another instant, for staging builds (env LIVEOPS_ALLOW_TIME_TRAVEL=true)")
	fs.DurationVar(&cfg.busyTimeout, "busy-timeout", 5*time.Second, "how long a write waits for another writer's lock before failing with UNAVAILABLE")
	l := &cfg.limits
	fs.DurationVar(&l.readHeaderTimeout, "read-header-timeout", 5*time.Second, "time a client has to send request headers")
	fs.DurationVar(&l.readTimeout, "read-timeout", 30*time.Second, "time a client has to send a whole request")
	fs.DurationVar(&l.writeTimeout, "write-timeout", 30*time.Second, "time a response (or a gRPC stream) may take")
	fs.DurationVar(&l.idleTimeout, "idle-timeout", 2*time.Minute, "how long an idle keep-alive connection stays open")
	fs.IntVar(&l.maxHeaderBytes, "max-header-bytes", 16<<10, "largest request header block accepted")
	fs.IntVar(&l.http2MaxStreams, "http2-max-streams", 250, "concurrent HTTP/2 streams (gRPC calls) per connection")
	fs.IntVar(&l.grpcMaxRecvBytes, "grpc-max-recv-bytes", 1<<20, "largest gRPC request message accepted")
	fs.IntVar(&l.authFailLimit, "auth-fail-limit", 30, "failed authentications an address may make per -auth-fail-window before it is refused")
	fs.DurationVar(&l.authFailWindow, "auth-fail-window", time.Minute, "window over which failed authentications are counted")
	fs.DurationVar(&l.authBlock, "auth-block", 5*time.Minute, "how long an address over -auth-fail-limit is refused")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q (see liveops -h)", fs.Arg(0))
	}
	if cfg.logFormat != "text" && cfg.logFormat != "json" {
		return config{}, fmt.Errorf("-log-format must be text or json, got %q", cfg.logFormat)
	}
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") {
		return config{}, errors.New("-tls-cert and -tls-key go together: give both or neither")
	}
	for name, d := range map[string]time.Duration{
		"reload-interval": cfg.reloadInterval, "shutdown-timeout": cfg.shutdownTimeout, "busy-timeout": cfg.busyTimeout,
		"read-header-timeout": l.readHeaderTimeout, "idle-timeout": l.idleTimeout,
		"auth-fail-window": l.authFailWindow, "auth-block": l.authBlock,
	} {
		if d <= 0 {
			return config{}, fmt.Errorf("-%s must be positive, got %v", name, d)
		}
	}
	if l.readTimeout < 0 || l.writeTimeout < 0 {
		return config{}, errors.New("-read-timeout and -write-timeout must not be negative (0 turns them off)")
	}
	for name, n := range map[string]int{
		"max-header-bytes": l.maxHeaderBytes, "http2-max-streams": l.http2MaxStreams,
		"grpc-max-recv-bytes": l.grpcMaxRecvBytes, "auth-fail-limit": l.authFailLimit,
	} {
		if n <= 0 {
			return config{}, fmt.Errorf("-%s must be positive, got %d", name, n)
		}
	}
	return cfg, nil
}

// dbFlag registers the -db flag that the server and every subcommand share.
func dbFlag(fs *flag.FlagSet, p *string, getenv func(string) string) {
	fs.StringVar(p, "db", envOr(getenv, "LIVEOPS_DB", "liveops.db"), "SQLite database file, created if missing (env LIVEOPS_DB)")
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

// run is the whole program: main only calls it. It serves until ctx is cancelled, then shuts
// down in order: stop taking requests and let in-flight ones finish, stop gRPC, close the
// database.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 1 {
		switch args[1] {
		case "keys":
			return runKeys(ctx, args[2:], getenv, stdout, stderr)
		case "backup":
			return runBackup(ctx, args[2:], getenv, stderr)
		case "export":
			return runExport(ctx, args[2:], getenv, stdout, stderr)
		case "import":
			return runImport(ctx, args[2:], getenv, stdout, stderr)
		}
	}
	cfg, err := parseConfig(args[1:], getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg.logFormat, stderr)
	defer log.out.Flush()

	st, err := openStore(ctx, cfg.db, fmt.Sprintf("busy_timeout(%d)", cfg.busyTimeout.Milliseconds()))
	if err != nil {
		return err
	}
	defer st.Close()
	if err := bootstrapKeys(ctx, st, stderr); err != nil {
		return err
	}
	svc, err := newService(ctx, st, cfg, time.Now, log)
	if err != nil {
		return err
	}
	kr, rm, gs, hs := svc.keys, svc.events, svc.grpc, svc.health
	srv := newHTTPServer(svc.handler, cfg.limits, log)

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "db", cfg.db, "tls", cfg.tlsCert != "")

	// The watcher outlives ctx by a little: it stops only after the server has, so that its
	// final flush of key usage sees every request.
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		watchDatabase(watchCtx, st, kr, rm, log, cfg.reloadInterval, time.Minute)
	}()
	defer func() { stopWatch(); <-watchDone }()

	// Access-log lines are written in batches; this writes each batch out.
	go func() {
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
	}()

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

	log.Info("shutting down", "grace", cfg.shutdownTimeout)
	hs.Shutdown() // health answers NOT_SERVING to anyone still asking
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
	gs.Stop()
	log.Info("stopped")
	return nil
}

// service is the whole object graph behind the listener, built from explicit dependencies;
// now is the clock everything reads, so tests can move time.
type service struct {
	keys    *keyring
	events  *readModel
	grpc    *grpc.Server
	health  *health.Server
	handler http.Handler // both protocols, on one port
}

func newService(ctx context.Context, st *store, cfg config, now func() time.Time, log *logger) (*service, error) {
	kr, err := newKeyring(ctx, st, now)
	if err != nil {
		return nil, err
	}
	rm, err := newReadModel(ctx, st, now, log)
	if err != nil {
		return nil, err
	}
	lim := cfg.limits
	g := &guard{keys: kr, limiter: newFailureLimiter(lim.authFailLimit, lim.authFailWindow, lim.authBlock, now)}
	gs, hs := newGRPCServer(st, rm, g, lim.grpcMaxRecvBytes, now, log)
	return &service{keys: kr, events: rm, grpc: gs, health: hs,
		handler: newServer(st, rm, g, gs, cfg.allowTimeTravel, log)}, nil
}

// watchDatabase keeps the in-memory keys and events current until ctx ends. Every poll it
// asks SQLite whether any connection, in this process or another, committed a change; if
// so it reloads the keys (a handful of rows) and lets the read model reload the events if
// their generation moved. This is how `liveops keys revoke` run elsewhere takes effect
// within a poll. Every flushEvery it writes key usage to the database, and once more on the
// way out.
func watchDatabase(ctx context.Context, st *store, kr *keyring, rm *readModel, log *logger, poll, flushEvery time.Duration) {
	defer func() {
		// ctx is done; give the last flush its own short deadline.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := kr.flushUsage(fctx); err != nil {
			log.Error("flush key usage", "err", err)
		}
	}()

	// PRAGMA data_version is per connection, so every poll must use this same one.
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-flushTick.C:
			if err := kr.flushUsage(ctx); err != nil {
				log.Error("flush key usage", "err", err)
			}
		case <-pollTick.C:
			v, err := dataVersion(ctx, conn)
			if err != nil {
				log.Error("watch database", "err", err)
				continue
			}
			if v == last {
				continue
			}
			// Only a reload that worked moves last on; a failed one is tried again next poll.
			kerr, eerr := kr.reload(ctx), rm.refresh(ctx)
			if kerr != nil {
				log.Error("reload keys", "err", kerr)
			}
			if eerr != nil {
				log.Error("reload events", "err", eerr)
			}
			if kerr == nil && eerr == nil {
				last = v
			}
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
		MaxHeaderBytes:    lim.maxHeaderBytes,
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

// newServer builds the one handler that serves both protocols on one port: HTTP/2 requests
// with a gRPC content type go to the gRPC server, everything else to the HTTP routes.
func newServer(st *store, rm *readModel, g *guard, gs *grpc.Server, allowTimeTravel bool, log *logger) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, st, rm, g, allowTimeTravel, log)
	httpHandler := logRequests(log, securityHeaders(mux))
	grpcOverHTTP1 := logRequests(log, securityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusBadRequest, "gRPC needs HTTP/2: use h2c (HTTP/2 without TLS, prior knowledge) or TLS")
	})))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case !isGRPC(r.Header.Get("Content-Type")):
			httpHandler.ServeHTTP(w, r)
		case r.ProtoMajor == 2:
			gs.ServeHTTP(w, r)
		default:
			grpcOverHTTP1.ServeHTTP(w, r)
		}
	})
}

// isGRPC reports whether a Content-Type is gRPC's: application/grpc, or a subtype such as
// application/grpc+proto.
func isGRPC(contentType string) bool {
	rest, ok := strings.CutPrefix(contentType, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// addRoutes lists the whole HTTP API. Each route is wrapped in the role routeRoles gives it.
// It returns the patterns it registered.
func addRoutes(mux *http.ServeMux, st *store, rm *readModel, g *guard, allowTimeTravel bool, log *logger) []string {
	var patterns []string
	handle := func(pattern string, h http.Handler) {
		need, ok := routeRoles[pattern]
		if !ok {
			panic("route " + pattern + " has no entry in routeRoles")
		}
		h = g.requireRole(need, h)
		if strings.HasPrefix(pattern, "GET ") {
			h = refuseBody(h) // before authentication, so no GET body is ever read
		}
		mux.Handle(pattern, h)
		patterns = append(patterns, pattern)
	}
	handle("GET /healthz", handleHealthz(st, log))
	handle("GET /events", handleEvents(rm, allowTimeTravel))
	handle("GET /events/{id}", handleEvent(rm))

	// The ServeMux answers 404 and 405 in plain text; these give them the JSON error shape.
	handle("/healthz", handleMethodNotAllowed("GET, HEAD"))
	handle("/events", handleMethodNotAllowed("GET, HEAD"))
	handle("/events/{id}", handleMethodNotAllowed("GET, HEAD"))
	handle("/", handleNotFound())
	return patterns
}

// refuseBody answers 400 to a GET that carries a body. The body is never read, and the
// connection is closed so that the server does not drain it either.
func refuseBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusBadRequest, "request body not allowed on GET")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Header values set on every response, made once (see handlers.go).
var (
	hdrNoSniff = []string{"nosniff"}
	hdrNoStore = []string{"no-store"}
)

// securityHeaders sets the headers every HTTP response carries.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["X-Content-Type-Options"] = hdrNoSniff
		// Responses depend on the caller's key; no shared cache may keep one unless a
		// handler says otherwise.
		h["Cache-Control"] = hdrNoStore
		next.ServeHTTP(w, r)
	})
}

// responseRecorder remembers the status a handler wrote and the key id that authenticated
// the request, for the access log.
type responseRecorder struct {
	http.ResponseWriter
	status int
	keyID  string
}

func (rec *responseRecorder) WriteHeader(code int) {
	if rec.status == 0 {
		rec.status = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *responseRecorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (rec *responseRecorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// recorders are reused across requests: a request holds one only while it is served.
var recorders = sync.Pool{New: func() any { return new(responseRecorder) }}

// logRequests writes one access-log line per HTTP request.
func logRequests(log *logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := recorders.Get().(*responseRecorder)
		*rec = responseRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		end := time.Now()
		log.access(end, r.Proto, r.Method, r.URL.Path, statusString(rec.status), end.Sub(start), rec.keyID)
		*rec = responseRecorder{}
		recorders.Put(rec)
	})
}
