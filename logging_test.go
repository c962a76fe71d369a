package main

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestAccessLogLines(t *testing.T) {
	end := time.Date(2026, 3, 1, 12, 0, 5, 123456789, time.UTC)
	nasty := "/events/\"x\" level=ERROR\nmsg=forged\x00\xff"
	t.Run("json", func(t *testing.T) {
		var out bytes.Buffer
		l := newLogger("json", &out)
		l.access(end, "HTTP/1.1", "GET", nasty, "404", 1500*time.Microsecond, "abc123")
		l.out.Flush()
		var rec map[string]any
		if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
			t.Fatalf("not one JSON object: %v\n%s", err, out.String())
		}
		want := map[string]any{"time": "2026-03-01T12:00:05.123Z", "level": "INFO", "msg": "request", "proto": "HTTP/1.1",
			"method": "GET", "path": "/events/\"x\" level=ERROR\nmsg=forged\x00\ufffd", "status": "404", "duration_us": 1500.0, "key_id": "abc123"}
		for k, v := range want {
			if rec[k] != v {
				t.Errorf("%s = %#v; want %#v", k, rec[k], v)
			}
		}
	})
	t.Run("text", func(t *testing.T) {
		var out bytes.Buffer
		l := newLogger("text", &out)
		l.access(end, "HTTP/1.1", "GET", nasty, "404", 1500*time.Microsecond, "")
		l.out.Flush()
		line := out.String()
		// The path is one quoted value, so it cannot add fields or lines of its own.
		if strings.Count(line, "\n") != 1 || !strings.Contains(line, " path="+strconv.Quote(nasty)+" ") {
			t.Fatalf("a client-chosen path is not quoted as one value: %q", line)
		}
		if !strings.HasPrefix(line, "time=2026-03-01T12:00:05.123Z level=INFO msg=request proto=HTTP/1.1 method=GET path=\"") ||
			!strings.HasSuffix(line, " status=404 duration_us=1500 key_id=\"\"\n") {
			t.Fatalf("line = %q", line)
		}
	})
}

func TestAccessLogIsBatchedAndOrdered(t *testing.T) {
	var out bytes.Buffer
	l := newLogger("text", &out)
	l.access(time.Now(), "HTTP/1.1", "GET", "/events", "200", time.Millisecond, "k1")
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
		l.access(time.Now(), "HTTP/1.1", "GET", "/events", "200", time.Millisecond, "k1")
	}
}
