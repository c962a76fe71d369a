package main

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/http"

	"go.opentelemetry.io/otel/trace"
)

// This file holds tracing. Every request belongs to a W3C trace: the caller's, from its
// traceparent header (gRPC metadata is HTTP/2 headers, so both protocols read it the same
// way), or a new one. Its id goes in the access log and in internal errors.

// traceIDFrom returns the id of the trace a request with context ctx belongs to, as 32 hex
// digits. It is empty outside a request (an import from the command line).
func traceIDFrom(ctx context.Context) string {
	if info := infoFrom(ctx); info != nil && info.trace.IsValid() {
		return info.trace.String()
	}
	return ""
}

// internalMessage is all a caller is told of an unexpected error: that it happened, and
// the trace id to quote, which leads to the cause in the access log.
func internalMessage(ctx context.Context) string {
	if id := traceIDFrom(ctx); id != "" {
		return "internal error (trace " + id + ")"
	}
	return "internal error"
}

// callerTrace returns the trace context the caller sent in h: its traceparent header, when
// there is exactly one and it is well formed. Parsing it by hand costs no allocation, where
// OpenTelemetry's propagator costs four on every request, traced or not
// (BenchmarkTraceparent).
func callerTrace(h http.Header) (tid trace.TraceID, sid trace.SpanID, flags trace.TraceFlags, ok bool) {
	v := h["Traceparent"]
	if len(v) != 1 {
		return tid, sid, 0, false
	}
	// version "-" trace-id "-" parent-id "-" trace-flags, in lowercase hex; a later version
	// may add fields after a dash, which are ignored.
	s := v[0]
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' || s[:2] == "ff" ||
		(s[:2] == "00" && len(s) != 55) || (len(s) > 55 && s[55] != '-') {
		return tid, sid, 0, false
	}
	var version, f [1]byte
	if !unhex(version[:], s[:2]) || !unhex(tid[:], s[3:35]) || !unhex(sid[:], s[36:52]) || !unhex(f[:], s[53:55]) ||
		!tid.IsValid() || !sid.IsValid() {
		return tid, sid, 0, false
	}
	return tid, sid, trace.TraceFlags(f[0]) & trace.FlagsSampled, true
}

// unhex decodes lowercase hex s into dst, which is half as long.
func unhex(dst []byte, s string) bool {
	digit := func(c byte) (byte, bool) {
		switch {
		case '0' <= c && c <= '9':
			return c - '0', true
		case 'a' <= c && c <= 'f':
			return c - 'a' + 10, true
		}
		return 0, false
	}
	for i := range dst {
		hi, ok1 := digit(s[2*i])
		lo, ok2 := digit(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

// newTraceID returns a random trace id, for a request that came without one.
func newTraceID() trace.TraceID {
	var tid trace.TraceID
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid
}

// startTrace puts the request whose headers are h in its trace, noting the trace id in info.
func startTrace(h http.Header, info *requestInfo) {
	tid, _, _, ok := callerTrace(h)
	if !ok {
		tid = newTraceID()
	}
	info.trace = tid
}
