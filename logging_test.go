package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestAccessLogLines(t *testing.T) {
	end := time.Date(2026, 3, 1, 12, 0, 5, 123456789, time.UTC)
	nasty := "/events/\"x\" level=ERROR\nmsg=forged\x00\xff"
	tid, _, _, _ := callerTrace(http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}})
	entry := func() *accessEntry {
		return &accessEntry{end: end, took: 1500 * time.Microsecond, proto: "HTTP/1.1", method: "GET", path: nasty, status: 404,
			keyID: "abc123", keyName: "game client", reason: "no event with id x", traceID: tid}
	}
	t.Run("json", func(t *testing.T) {
		var out bytes.Buffer
		l := newLogger("json", &out)
		l.access(entry())
		l.out.Flush()
		var rec map[string]any
		if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
			t.Fatalf("not one JSON object: %v\n%s", err, out.String())
		}
		want := map[string]any{"time": "2026-03-01T12:00:05.123Z", "level": "INFO", "msg": "request", "proto": "HTTP/1.1",
			"method": "GET", "path": "/events/\"x\" level=ERROR\nmsg=forged\x00\ufffd", "status": 404.0, "duration_ms": 1.5,
			"key_id": "abc123", "key_name": "game client", "error": "no event with id x",
			"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
		for k, v := range want {
			if rec[k] != v {
				t.Errorf("%s = %#v; want %#v", k, rec[k], v)
			}
		}
	})
	t.Run("text", func(t *testing.T) {
		var out bytes.Buffer
		l := newLogger("text", &out)
		e := entry()
		e.keyID, e.keyName, e.reason = "", "", ""
		l.access(e)
		l.out.Flush()
		line := out.String()
		// The path is one quoted value, so it cannot add fields or lines of its own.
		if strings.Count(line, "\n") != 1 || !strings.Contains(line, " path="+strconv.Quote(nasty)+" ") {
			t.Fatalf("a client-chosen path is not quoted as one value: %q", line)
		}
		if !strings.HasPrefix(line, "time=2026-03-01T12:00:05.123Z level=INFO msg=request proto=HTTP/1.1 method=GET path=\"") ||
			!strings.HasSuffix(line, " status=404 duration_ms=1.500 trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n") {
			t.Fatalf("line = %q", line)
		}
	})
	t.Run("grpc failure", func(t *testing.T) {
		var out bytes.Buffer
		l := newLogger("json", &out)
		l.access(&accessEntry{end: end, proto: "grpc", path: "/liveops.v1.EventService/GetEvent", code: "Internal", failed: true,
			reason: "get event: disk I/O error"})
		l.out.Flush()
		var rec map[string]any
		if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["level"] != "ERROR" || rec["code"] != "Internal" || rec["error"] != "get event: disk I/O error" || rec["method"] != nil {
			t.Fatalf("line = %s; want level ERROR, the code and the cause, and no HTTP method", out.String())
		}
		if rec["trace_id"] != nil {
			t.Fatalf("line = %s; an entry without a trace must not claim one", out.String())
		}
	})
}

func TestAccessLogIsBatchedAndOrdered(t *testing.T) {
	var out bytes.Buffer
	l := newLogger("text", &out)
	line := &accessEntry{end: time.Now(), proto: "HTTP/1.1", method: "GET", path: "/events", status: 200, took: time.Millisecond}
	l.access(line)
	if out.Len() != 0 {
		t.Fatalf("an access line was written at once: %q", out.String())
	}
	// Any other line goes out at once, after what was buffered before it.
	l.Info("admin write")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "path=/events") || !strings.Contains(lines[1], "admin write") {
		t.Fatalf("lines = %q; want the access line, then the admin write", lines)
	}
	// A full buffer is written without waiting for the flush.
	out.Reset()
	for out.Len() == 0 {
		l.access(line)
	}
}
