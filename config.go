package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// config is everything the server reads from its flags and environment.
type config struct {
	addr      string
	db        string
	logFormat string
	tlsCert   string
	tlsKey    string
	// bootstrapKeysFile receives the keys a first start creates; empty for stdout.
	bootstrapKeysFile string
	reloadInterval    time.Duration
	shutdownTimeout   time.Duration
	busyTimeout       time.Duration
	allowTimeTravel   bool
	// sharedCacheMaxAge, when not 0, lets shared caches (a proxy in front, a CDN) keep
	// players' answers for up to this long: see serveCached.
	sharedCacheMaxAge time.Duration
	// pgNotify turns on PostgreSQL's change feed (LISTEN/NOTIFY); polling remains.
	pgNotify    bool
	corsOrigins []string // origins whose pages may read the player routes; none turns CORS off
	// metricsAddr, when set, is a second listener serving GET /metrics without a key.
	metricsAddr string
	// defaultLocale is the locale of events' own title and description.
	defaultLocale string
	// countryHeader names the request header a trusted front puts the client's country
	// in; "" trusts none.
	countryHeader string
	limits        limits
	tracing       tracingConfig // from the OpenTelemetry variables, OTEL_*
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
	grpcStreamMaxAge  time.Duration
	maxInFlight       int
	authFailLimit     int
	authFailWindow    time.Duration
	authBlock         time.Duration
}

// parseConfig reads flags, each falling back to an environment variable, then a default.
// With -h the usage goes to stdout, as asked for; after a mistake it goes to stderr.
func parseConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) (config, error) {
	var cfg config
	fs := newFlagSet("liveops", serverUsage, stderr)
	fs.StringVar(&cfg.addr, "addr", envOr(getenv, "LIVEOPS_ADDR", ":8080"), "listen address (env LIVEOPS_ADDR)")
	dbFlag(fs, &cfg.db, getenv)
	fs.StringVar(&cfg.logFormat, "log-format", envOr(getenv, "LIVEOPS_LOG_FORMAT", "text"), "log format: text or json (env LIVEOPS_LOG_FORMAT)")
	fs.StringVar(&cfg.tlsCert, "tls-cert", getenv("LIVEOPS_TLS_CERT"), "TLS certificate file; with -tls-key serves HTTPS and HTTP/2 over TLS (env LIVEOPS_TLS_CERT)")
	fs.StringVar(&cfg.tlsKey, "tls-key", getenv("LIVEOPS_TLS_KEY"), "TLS private key file (env LIVEOPS_TLS_KEY)")
	fs.StringVar(&cfg.bootstrapKeysFile, "bootstrap-keys-file", getenv("LIVEOPS_BOOTSTRAP_KEYS_FILE"),
		"when the first start creates keys, write them to this new file (mode 0600) instead of stdout (env LIVEOPS_BOOTSTRAP_KEYS_FILE)")
	fs.DurationVar(&cfg.reloadInterval, "reload-interval", time.Second, "how often to look for key and event changes made by other processes")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight requests may run after SIGINT/SIGTERM")
	fs.BoolVar(&cfg.allowTimeTravel, "allow-time-travel", getenv("LIVEOPS_ALLOW_TIME_TRAVEL") == "true",
		"let players' GET /events?at=TIME answer as of another instant, for staging builds (env LIVEOPS_ALLOW_TIME_TRAVEL=true)")
	corsOrigins := fs.String("cors-origins", getenv("LIVEOPS_CORS_ORIGINS"),
		"comma-separated origins whose pages may read the player routes from a browser, such as https://play.example.com (env LIVEOPS_CORS_ORIGINS)")
	sharedCacheMaxAge, err := envDuration(getenv, "LIVEOPS_SHARED_CACHE_MAX_AGE")
	if err != nil {
		return config{}, err
	}
	fs.DurationVar(&cfg.sharedCacheMaxAge, "shared-cache-max-age", sharedCacheMaxAge,
		"let shared caches (a proxy in front, a CDN) keep players' GET /events answers for up to this long, at most 30s: Cache-Control: public, s-maxage (env LIVEOPS_SHARED_CACHE_MAX_AGE; 0, the default, keeps them private)")
	fs.BoolVar(&cfg.pgNotify, "pg-notify", getenv("LIVEOPS_PG_NOTIFY") != "false",
		"on PostgreSQL, hear other instances' writes at once through LISTEN/NOTIFY; polling every -reload-interval remains (env LIVEOPS_PG_NOTIFY=false turns it off, as for CockroachDB)")
	fs.StringVar(&cfg.metricsAddr, "metrics-addr", getenv("LIVEOPS_METRICS_ADDR"),
		"also serve GET /metrics, without a key, on this address, such as 127.0.0.1:9464 or a private interface: for scrapers that cannot send a bearer key; never a public one (env LIVEOPS_METRICS_ADDR)")
	fs.StringVar(&cfg.defaultLocale, "default-locale", envOr(getenv, "LIVEOPS_DEFAULT_LOCALE", "en"),
		"the BCP 47 locale of events' own title and description; localizations add others (env LIVEOPS_DEFAULT_LOCALE)")
	fs.StringVar(&cfg.countryHeader, "country-header", getenv("LIVEOPS_COUNTRY_HEADER"),
		"a request header in which a trusted front (a CDN, a balancer) puts the client's ISO country code, such as CF-IPCountry; it wins over the client's country parameter. Off by default: set it only when every request comes through that front (env LIVEOPS_COUNTRY_HEADER)")
	fs.DurationVar(&cfg.busyTimeout, "busy-timeout", 5*time.Second, "how long a write waits for another writer's lock before failing with UNAVAILABLE")
	l := &cfg.limits
	fs.DurationVar(&l.readHeaderTimeout, "read-header-timeout", 5*time.Second, "time a client has to send request headers")
	fs.DurationVar(&l.readTimeout, "read-timeout", 30*time.Second, "time a client has to send a whole request (a gRPC call: its request message; streams are not cut)")
	fs.DurationVar(&l.writeTimeout, "write-timeout", 30*time.Second, "time a response may take, and a unary gRPC call's deadline (streams end at -grpc-stream-max-age instead)")
	fs.DurationVar(&l.idleTimeout, "idle-timeout", 2*time.Minute, "how long an idle keep-alive connection stays open")
	fs.IntVar(&l.maxHeaderBytes, "max-header-bytes", 16<<10, "largest request header block accepted; larger gets 431")
	fs.IntVar(&l.http2MaxStreams, "http2-max-streams", 250, "concurrent HTTP/2 streams (gRPC calls) per connection")
	fs.IntVar(&l.grpcMaxRecvBytes, "grpc-max-recv-bytes", 1<<20, "largest gRPC request message accepted, after decompression")
	fs.DurationVar(&l.grpcStreamMaxAge, "grpc-stream-max-age", 30*time.Minute, "how long a gRPC stream (a health Watch) may stay open before it is ended with UNAVAILABLE, to be reopened")
	fs.IntVar(&l.maxInFlight, "max-in-flight", 2048, "requests served at once, over all connections; more are refused with 503 / UNAVAILABLE")
	fs.IntVar(&l.authFailLimit, "auth-fail-limit", 30, "failed authentications an address may make per -auth-fail-window before it is refused")
	fs.DurationVar(&l.authFailWindow, "auth-fail-window", time.Minute, "window over which failed authentications are counted")
	fs.DurationVar(&l.authBlock, "auth-block", 5*time.Minute, "how long an address over -auth-fail-limit is refused")
	if err := parseFlags(fs, args, stdout); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unknown command or argument %q (see liveops -h)", fs.Arg(0))
	}
	if cfg.logFormat != "text" && cfg.logFormat != "json" {
		return config{}, fmt.Errorf("-log-format must be text or json, got %q", cfg.logFormat)
	}
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") {
		return config{}, errors.New("-tls-cert and -tls-key go together: give both or neither")
	}
	if cfg.corsOrigins, err = parseCORSOrigins(*corsOrigins); err != nil {
		return config{}, err
	}
	if cfg.defaultLocale, err = normalizeLocale(cfg.defaultLocale); err != nil {
		return config{}, fmt.Errorf("-default-locale: %v", err)
	}
	if cfg.countryHeader != "" {
		if !validHeaderName(cfg.countryHeader) {
			return config{}, fmt.Errorf("-country-header: %q is not a header name", cfg.countryHeader)
		}
		cfg.countryHeader = http.CanonicalHeaderKey(cfg.countryHeader)
	}
	if cfg.tracing, err = parseTracingConfig(getenv); err != nil {
		return config{}, err
	}
	for name, d := range map[string]time.Duration{
		"reload-interval": cfg.reloadInterval, "shutdown-timeout": cfg.shutdownTimeout, "busy-timeout": cfg.busyTimeout,
		"read-header-timeout": l.readHeaderTimeout, "idle-timeout": l.idleTimeout,
		"auth-fail-window": l.authFailWindow, "auth-block": l.authBlock, "grpc-stream-max-age": l.grpcStreamMaxAge,
	} {
		if d <= 0 {
			return config{}, fmt.Errorf("-%s must be positive, got %v", name, d)
		}
	}
	if d := cfg.sharedCacheMaxAge; d < 0 || d > maxCacheAge || d%time.Second != 0 {
		return config{}, fmt.Errorf("-shared-cache-max-age must be whole seconds from 0 (off) to %v, got %v", maxCacheAge, d)
	}
	if l.readTimeout < 0 || l.writeTimeout < 0 {
		return config{}, errors.New("-read-timeout and -write-timeout must not be negative (0 turns them off)")
	}
	for name, n := range map[string]int{
		"max-header-bytes": l.maxHeaderBytes, "http2-max-streams": l.http2MaxStreams,
		"grpc-max-recv-bytes": l.grpcMaxRecvBytes, "auth-fail-limit": l.authFailLimit, "max-in-flight": l.maxInFlight,
	} {
		if n <= 0 {
			return config{}, fmt.Errorf("-%s must be positive, got %d", name, n)
		}
	}
	return cfg, nil
}

// dbFlag registers the -db flag that the server and every subcommand share.
func dbFlag(fs *flag.FlagSet, p *string, getenv func(string) string) {
	fs.StringVar(p, "db", envOr(getenv, "LIVEOPS_DB", "liveops.db"), "SQLite database file, created if missing, or a postgres:// URL (env LIVEOPS_DB)")
	// The help shows the default; a URL from the environment may hold a password.
	fs.Lookup("db").DefValue = redactDSN(*p)
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

// envDuration reads a duration from the environment variable name: 0 when it is unset.
func envDuration(getenv func(string) string, name string) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: want a duration such as 5s, got %q", name, v)
	}
	return d, nil
}

// serverUsage heads the server's -h.
const serverUsage = `usage: liveops [flags]                     serve HTTP and gRPC on one port
       liveops keys create|list|revoke    manage API keys (liveops keys -h)
       liveops backup [-db FILE] OUT.db   copy the database while it is in use
       liveops export [-db FILE]          print every event as JSON
       liveops import [-db FILE] [-dry-run] EVENTS.json
                                          create or update events from a file
       liveops version                    print the version and exit

flags:
`

// newFlagSet returns a flag set that prints usage, then its flags, to stderr after a
// mistake (parseFlags sends them to stdout when -h asks for them).
func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args with fs, sending the usage to stdout when -h or -help asked for
// it: help that was asked for is output, not an error report.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" || a == "--h" {
			fs.SetOutput(stdout)
			fs.Usage()
			return flag.ErrHelp
		}
	}
	// The flag package would print the error and the whole usage, and main prints the
	// error again: say it once, with where to look.
	out := fs.Output()
	fs.SetOutput(io.Discard)
	defer fs.SetOutput(out)
	if err := fs.Parse(args); err != nil {
		help := "liveops -h"
		if fs.Name() != "liveops" {
			help = "liveops " + fs.Name() + " -h"
		}
		return fmt.Errorf("%w (see %s)", err, help)
	}
	return nil
}

// daysDuration is a flag.Value for a duration that also takes whole days, such as 30d,
// the unit people give key lifetimes in.
type daysDuration struct{ d *time.Duration }

func (v daysDuration) String() string {
	if v.d == nil || *v.d == 0 {
		return "0"
	}
	if *v.d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", *v.d/(24*time.Hour))
	}
	return v.d.String()
}

func (v daysDuration) Set(s string) error {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*365 {
			return fmt.Errorf("want a whole number of days such as 30d, got %q", s)
		}
		*v.d = time.Duration(n) * 24 * time.Hour
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 30d or 12h, got %q", s)
	}
	*v.d = d
	return nil
}

// validHeaderName reports whether s is an HTTP header field name: one or more token
// characters (RFC 9110).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
