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
	"time"

	"google.golang.org/grpc"
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
}

// parseConfig reads flags, each falling back to an environment variable, then a default.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("liveops", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: liveops [flags]            serve HTTP and gRPC on one port\n"+
			"       liveops keys create|list|revoke   manage API keys (liveops keys -h)\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.addr, "addr", envOr(getenv, "LIVEOPS_ADDR", ":8080"), "listen address (env LIVEOPS_ADDR)")
	dbFlag(fs, &cfg.db, getenv)
	fs.StringVar(&cfg.logFormat, "log-format", envOr(getenv, "LIVEOPS_LOG_FORMAT", "text"), "log format: text or json (env LIVEOPS_LOG_FORMAT)")
	fs.StringVar(&cfg.tlsCert, "tls-cert", getenv("LIVEOPS_TLS_CERT"), "TLS certificate file; with -tls-key serves HTTPS and HTTP/2 over TLS (env LIVEOPS_TLS_CERT)")
	fs.StringVar(&cfg.tlsKey, "tls-key", getenv("LIVEOPS_TLS_KEY"), "TLS private key file (env LIVEOPS_TLS_KEY)")
	fs.DurationVar(&cfg.reloadInterval, "reload-interval", time.Second, "how often to look for key changes made by other processes")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight requests may run after SIGINT/SIGTERM")
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
	if cfg.reloadInterval <= 0 || cfg.shutdownTimeout <= 0 {
		return config{}, errors.New("-reload-interval and -shutdown-timeout must be positive")
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

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// run is the whole program: main only calls it. It serves until ctx is cancelled, then shuts
// down in order: stop taking requests and let in-flight ones finish, stop gRPC, close the
// database.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 1 && args[1] == "keys" {
		return runKeys(ctx, args[2:], getenv, stdout, stderr)
	}
	cfg, err := parseConfig(args[1:], getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg.logFormat, stderr)

	st, err := openStore(ctx, cfg.db)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := bootstrapKeys(ctx, st, stderr); err != nil {
		return err
	}
	kr, err := newKeyring(ctx, st, time.Now)
	if err != nil {
		return err
	}
	gs, hs := newGRPCServer(st, kr, time.Now, log)
	srv := &http.Server{
		Handler:           newServer(st, kr, gs, time.Now, log),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		Protocols:         new(http.Protocols),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true) // h2c: what grpcurl -plaintext and grpc-go speak
	srv.Protocols.SetHTTP2(true)            // over TLS, when -tls-cert is given

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
		kr.watch(watchCtx, log, cfg.reloadInterval, time.Minute)
	}()
	defer func() { stopWatch(); <-watchDone }()

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

// newServer builds the one handler that serves both protocols on one port: HTTP/2 requests
// with a gRPC content type go to the gRPC server, everything else to the HTTP routes.
func newServer(st *store, kr *keyring, gs *grpc.Server, now func() time.Time, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, st, kr, now, log)
	httpHandler := logRequests(log, securityHeaders(mux))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		httpHandler.ServeHTTP(w, r)
	})
}

// addRoutes lists the whole HTTP API. Each route is wrapped in the role routeRoles gives it.
func addRoutes(mux *http.ServeMux, st *store, kr *keyring, now func() time.Time, log *slog.Logger) {
	handle := func(pattern string, h http.Handler) {
		need, ok := routeRoles[pattern]
		if !ok {
			panic("route " + pattern + " has no entry in routeRoles")
		}
		mux.Handle(pattern, kr.requireRole(need, h))
	}
	handle("GET /healthz", handleHealthz(st, log))
	handle("GET /events", handleEvents(st, now, log))
	handle("GET /events/{id}", handleEvent(st, now, log))

	// The ServeMux answers 404 and 405 in plain text; these give them the JSON error shape.
	handle("/healthz", handleMethodNotAllowed("GET, HEAD"))
	handle("/events", handleMethodNotAllowed("GET, HEAD"))
	handle("/events/{id}", handleMethodNotAllowed("GET, HEAD"))
	handle("/", handleNotFound())
}

// securityHeaders sets headers every HTTP response carries.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
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

// logRequests writes one log line per HTTP request.
func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &responseRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		log.Info("request", "proto", r.Proto, "method", r.Method, "path", r.URL.Path,
			"status", rec.status, "duration", time.Since(start), "key_id", rec.keyID)
	})
}
