package main

import (
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
)

// logOutput is where every log line goes. Access-log lines, one per request, are buffered
// and written in batches (every flush interval, or sooner when 64 KiB pile up), because a
// write system call per request would cost more than serving a cached GET /events. Every
// other line (errors, admin writes, start and stop) goes out at once, along with whatever
// is buffered before it, so lines stay in order.
type logOutput struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

const logBufferSize = 64 << 10

func newLogOutput(w io.Writer) *logOutput {
	return &logOutput{w: w, buf: make([]byte, 0, logBufferSize)}
}

// Write writes a line and everything buffered before it. slog calls it once a line.
func (o *logOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	if err := o.flushLocked(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeBuffered appends a line to the buffer, writing the buffer out when it is full.
func (o *logOutput) writeBuffered(line []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, line...)
	if len(o.buf) >= logBufferSize {
		o.flushLocked()
	}
}

// Flush writes out whatever is buffered.
func (o *logOutput) Flush() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.flushLocked()
}

func (o *logOutput) flushLocked() error {
	if len(o.buf) == 0 {
		return nil
	}
	_, err := o.w.Write(o.buf)
	o.buf = o.buf[:0]
	return err
}

// logger bundles the application's slog.Logger with the access log, which formats its
// fixed-shape lines itself, in the same text or JSON form as slog, without slog's per-call
// cost (see BenchmarkAccessLog).
type logger struct {
	*slog.Logger
	out  *logOutput
	json bool
	// second holds the current second's date and time and zone offset, formatted: the
	// parts of every access-log time that change only once a second.
	second atomic.Pointer[formattedSecond]
}

type formattedSecond struct {
	unix           int64
	prefix, suffix []byte // 2006-01-02T15:04:05 and Z07:00
}

// appendTime appends t as slog writes times, local, 2006-01-02T15:04:05.000Z07:00,
// formatting the date, time and zone only once a second (see BenchmarkAccessLog).
func (l *logger) appendTime(b []byte, t time.Time) []byte {
	sec := l.second.Load()
	if sec == nil || sec.unix != t.Unix() {
		sec = &formattedSecond{unix: t.Unix(), prefix: t.AppendFormat(nil, "2006-01-02T15:04:05"), suffix: t.AppendFormat(nil, "Z07:00")}
		l.second.Store(sec)
	}
	b = append(b, sec.prefix...)
	ms := t.Nanosecond() / int(time.Millisecond)
	b = append(b, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	return append(b, sec.suffix...)
}

func newLogger(format string, w io.Writer) *logger {
	out := newLogOutput(w)
	l := &logger{out: out, json: format == "json"}
	if l.json {
		l.Logger = slog.New(slog.NewJSONHandler(out, nil))
	} else {
		l.Logger = slog.New(slog.NewTextHandler(out, nil))
	}
	return l
}

// requestInfo travels in a request's context from its start: the key that called, once
// checked, and why the request was refused or failed. The access log, which wraps
// everything, reads it when the request is done.
//
// A gRPC handler can outlive the HTTP handler that started it (grpc-go returns from
// ServeHTTP when the client cancels), so the fields are guarded.
type requestInfo struct {
	mu     sync.Mutex
	caller *keyEntry
	reason string

	// trace is the request's trace id (see startServerSpan), set before any handler runs
	// and never changed, so it needs no lock.
	trace trace.TraceID
	// route is the addRoutes route that answered an HTTP request, for its metrics and its
	// span: set on the request's own goroutine before the access log reads it; nil until a
	// route does.
	route *routeMetrics
}

func (info *requestInfo) setCaller(k *keyEntry) {
	info.mu.Lock()
	info.caller = k
	info.mu.Unlock()
}

func (info *requestInfo) setReason(reason string) {
	info.mu.Lock()
	info.reason = reason
	info.mu.Unlock()
}

type infoKey struct{}

// withRequestInfo returns ctx carrying a new, empty requestInfo.
func withRequestInfo(ctx context.Context) (context.Context, *requestInfo) {
	info := new(requestInfo)
	return context.WithValue(ctx, infoKey{}, info), info
}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(infoKey{}).(*requestInfo)
	return info
}

// noteReason records in ctx why the request was refused or failed, for the access log.
func noteReason(ctx context.Context, reason string) {
	if info := infoFrom(ctx); info != nil {
		info.setReason(reason)
	}
}

// accessEntry is one access-log line: an HTTP request, or a gRPC call (proto "grpc", the
// full method name as path, and code instead of status).
type accessEntry struct {
	end     time.Time
	took    time.Duration
	proto   string
	method  string // HTTP only
	path    string
	status  int    // HTTP only
	code    string // gRPC only: the status code's name
	failed  bool   // a server-side failure (5xx, INTERNAL): logged at level ERROR
	keyID   string
	keyName string
	reason  string
	traceID trace.TraceID
}

// from fills in what info says: the caller's key and the reason for a refusal.
func (e *accessEntry) from(info *requestInfo) *accessEntry {
	info.mu.Lock()
	defer info.mu.Unlock()
	if info.caller != nil {
		e.keyID, e.keyName = info.caller.ID, info.caller.Name
	}
	e.reason, e.traceID = info.reason, info.trace
	return e
}

// access logs one request. Its time is local, with milliseconds, as slog writes times;
// the path is redacted of anything that looks like a key; the key is named by id and name,
// never by its text. The trace id leads from the line to the request's spans, and back
// from an error a user quotes or an audit entry.
func (l *logger) access(e *accessEntry) {
	level := "INFO"
	if e.failed {
		level = "ERROR"
	}
	b := make([]byte, 0, 384)
	field := func(name string) {
		if l.json {
			b = append(b, ',', '"')
			b = append(b, name...)
			b = append(b, '"', ':')
		} else {
			b = append(b, ' ')
			b = append(b, name...)
			b = append(b, '=')
		}
	}
	str := func(name, v string) {
		field(name)
		if l.json {
			b = appendJSONString(b, v)
		} else {
			b = appendTextValue(b, v)
		}
	}
	if l.json {
		b = append(b, `{"time":"`...)
		b = l.appendTime(b, e.end)
		b = append(b, `","level":"`...)
		b = append(b, level...)
		b = append(b, `","msg":"request"`...)
	} else {
		b = append(b, "time="...)
		b = l.appendTime(b, e.end)
		b = append(b, " level="...)
		b = append(b, level...)
		b = append(b, " msg=request"...)
	}
	str("proto", e.proto)
	if e.method != "" {
		str("method", e.method)
	}
	str("path", redactKeys(e.path))
	if e.code != "" {
		str("code", e.code)
	} else {
		field("status")
		b = strconv.AppendInt(b, int64(e.status), 10)
	}
	field("duration_ms")
	b = strconv.AppendFloat(b, float64(e.took.Microseconds())/1000, 'f', 3, 64)
	if e.traceID.IsValid() {
		// Hex digits need no quoting in either form.
		field("trace_id")
		if l.json {
			b = append(b, '"')
		}
		b = hex.AppendEncode(b, e.traceID[:])
		if l.json {
			b = append(b, '"')
		}
	}
	if e.keyID != "" {
		str("key_id", e.keyID)
		str("key_name", e.keyName)
	}
	if e.reason != "" {
		str("error", redactKeys(e.reason))
	}
	if l.json {
		b = append(b, '}')
	}
	l.out.writeBuffered(append(b, '\n'))
}

// appendTextValue appends s as slog's text handler would: bare when it is a plain token,
// quoted (with Go escapes) when it is empty or holds spaces, quotes, '=' or anything
// unprintable. Paths come from clients, so quoting is what stops log injection.
func appendTextValue(b []byte, s string) []byte {
	if s == "" {
		return append(b, `""`...)
	}
	for _, r := range s {
		if r == ' ' || r == '"' || r == '=' || r == '\\' || r < 0x21 || r == 0x7f || r == utf8.RuneError || !strconv.IsPrint(r) {
			return strconv.AppendQuote(b, s)
		}
	}
	return append(b, s...)
}

// appendJSONString appends s as a JSON string, escaping what JSON requires and any
// invalid UTF-8.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
