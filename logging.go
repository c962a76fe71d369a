package main

import (
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
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
// cost.
type logger struct {
	*slog.Logger
	out  *logOutput
	json bool
	// second caches the formatted date and time of the current second, the part of every
	// access-log timestamp that rarely changes.
	second atomic.Pointer[formattedSecond]
}

type formattedSecond struct {
	unix   int64
	prefix []byte // 2006-01-02T15:04:05
}

// appendTime appends t in UTC as slog does, 2006-01-02T15:04:05.000Z, formatting the
// date and time only once a second.
func (l *logger) appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	sec := l.second.Load()
	if sec == nil || sec.unix != t.Unix() {
		sec = &formattedSecond{unix: t.Unix(), prefix: t.AppendFormat(nil, "2006-01-02T15:04:05")}
		l.second.Store(sec)
	}
	b = append(b, sec.prefix...)
	ms := t.Nanosecond() / int(time.Millisecond)
	return append(b, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
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

// accessLinePool holds line buffers, so that logging a request allocates nothing.
var accessLinePool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// access logs one request that ended at end: protocol, method (an HTTP method, or "POST"
// for gRPC), path or RPC name, status (an HTTP status or a gRPC code), how long it took, and
// the id of the key that authenticated it (never the key). path is redacted of anything
// that looks like a key.
func (l *logger) access(end time.Time, proto, method, path, status string, took time.Duration, keyID string) {
	bp := accessLinePool.Get().(*[]byte)
	b := (*bp)[:0]
	if l.json {
		b = append(b, `{"time":"`...)
		b = l.appendTime(b, end)
		b = append(b, `","level":"INFO","msg":"request","proto":`...)
		b = appendJSONString(b, proto)
		b = append(b, `,"method":`...)
		b = appendJSONString(b, method)
		b = append(b, `,"path":`...)
		b = appendJSONString(b, redactKeys(path))
		b = append(b, `,"status":`...)
		b = appendJSONString(b, status)
		b = append(b, `,"duration_us":`...)
		b = strconv.AppendInt(b, took.Microseconds(), 10)
		b = append(b, `,"key_id":`...)
		b = appendJSONString(b, keyID)
		b = append(b, "}\n"...)
	} else {
		b = append(b, "time="...)
		b = l.appendTime(b, end)
		b = append(b, " level=INFO msg=request proto="...)
		b = appendTextValue(b, proto)
		b = append(b, " method="...)
		b = appendTextValue(b, method)
		b = append(b, " path="...)
		b = appendTextValue(b, redactKeys(path))
		b = append(b, " status="...)
		b = appendTextValue(b, status)
		b = append(b, " duration_us="...)
		b = strconv.AppendInt(b, took.Microseconds(), 10)
		b = append(b, " key_id="...)
		b = appendTextValue(b, keyID)
		b = append(b, '\n')
	}
	l.out.writeBuffered(b)
	*bp = b
	accessLinePool.Put(bp)
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

// httpStatusText holds the status codes as strings, so that logging one allocates nothing.
var httpStatusText = func() map[int]string {
	m := map[int]string{}
	for code := 100; code < 600; code++ {
		m[code] = strconv.Itoa(code)
	}
	return m
}()

func statusString(code int) string {
	if s, ok := httpStatusText[code]; ok {
		return s
	}
	return strconv.Itoa(code)
}
