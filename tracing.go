package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.38.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// This file holds tracing. Every request belongs to a W3C trace: the caller's, from its
// traceparent header (gRPC metadata is HTTP/2 headers, so both protocols read it the same
// way), or a new one. Its id goes in the access log, in internal errors and in the audit
// log. When an OTLP endpoint is set, liveops also exports spans through the OpenTelemetry
// SDK: one server span per request or call, with children for database transactions and
// snapshot updates. Without one, no span is made: a request pays only for reading its
// traceparent, or drawing a new id.

// tracingConfig is what the standard OpenTelemetry variables ask for.
type tracingConfig struct {
	endpoint    string // the OTLP traces URL; empty when no spans are exported
	protocol    string // grpc or http/protobuf
	sampler     sdktrace.Sampler
	serviceName string
	batchDelay  time.Duration // how long spans wait to be sent in a batch; 0 for the SDK's 5 s
}

// parseTracingConfig reads the OpenTelemetry variables liveops honours through getenv, as
// every other setting is read, and refuses a value it cannot use, naming the variable,
// rather than start without the traces that were asked for.
func parseTracingConfig(getenv func(string) string) (tracingConfig, error) {
	c := tracingConfig{serviceName: envOr(getenv, "OTEL_SERVICE_NAME", "liveops")}
	switch v := getenv("OTEL_SDK_DISABLED"); strings.ToLower(v) {
	case "true":
		return c, nil
	case "", "false":
	default:
		return c, fmt.Errorf("OTEL_SDK_DISABLED: want true or false, got %q", v)
	}
	endpoint := getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	if endpoint == "" {
		return c, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return c, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: want a URL such as http://localhost:4318, got %q", endpoint)
	}
	switch c.protocol = envOr(getenv, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"); c.protocol {
	case "grpc":
	case "http/protobuf":
		// The variable names the collector's base URL; each signal has its own path below it.
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
	default:
		return c, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: want grpc or http/protobuf, got %q", c.protocol)
	}
	c.endpoint = u.String()
	if c.sampler, err = parseSampler(getenv("OTEL_TRACES_SAMPLER"), getenv("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		return c, err
	}
	if v := getenv("OTEL_BSP_SCHEDULE_DELAY"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return c, fmt.Errorf("OTEL_BSP_SCHEDULE_DELAY: want a positive number of milliseconds, got %q", v)
		}
		c.batchDelay = time.Duration(ms) * time.Millisecond
	}
	return c, nil
}

// parseSampler returns the sampler OTEL_TRACES_SAMPLER names, with the ratio
// OTEL_TRACES_SAMPLER_ARG gives the ratio-based ones (1.0 when unset).
func parseSampler(name, arg string) (sdktrace.Sampler, error) {
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || !(r >= 0 && r <= 1) { // NaN is neither
			return 0, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: want a ratio from 0 to 1, got %q", arg)
		}
		return r, nil
	}
	switch name {
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio":
		r, err := ratio()
		return sdktrace.TraceIDRatioBased(r), err
	case "parentbased_always_on", "":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "parentbased_traceidratio":
		r, err := ratio()
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), err
	}
	return nil, fmt.Errorf("OTEL_TRACES_SAMPLER: want always_on, always_off, traceidratio, parentbased_always_on, "+
		"parentbased_always_off or parentbased_traceidratio, got %q", name)
}

// newTracerProvider returns the SDK's tracer provider exporting to c.endpoint, or nil when
// no endpoint is set. Spans leave in batches from a queue that drops when it is full, so a
// collector that is slow or down never holds up a request: its spans are lost instead.
func newTracerProvider(ctx context.Context, c tracingConfig, log *logger) (*sdktrace.TracerProvider, error) {
	if c.endpoint == "" {
		return nil, nil
	}
	var exp sdktrace.SpanExporter
	var err error
	if c.protocol == "grpc" {
		exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(c.endpoint))
	} else {
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(c.endpoint))
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	var batch []sdktrace.BatchSpanProcessorOption
	if c.batchDelay > 0 {
		batch = append(batch, sdktrace.WithBatchTimeout(c.batchDelay))
	}
	log.Info("exporting traces", "endpoint", redactURL(c.endpoint), "protocol", c.protocol, "sampler", c.sampler.Description())
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(reportingExporter{exp, log}, batch...),
		sdktrace.WithSampler(c.sampler),
		sdktrace.WithResource(resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(c.serviceName))),
	), nil
}

// redactURL hides a password in u, should one be there.
func redactURL(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return u
}

// reportingExporter logs a failed export in liveops's own log. Otherwise the SDK hands the
// error to OpenTelemetry's global handler, which prints it through the standard library's
// log, outside the -log-format chosen.
type reportingExporter struct {
	sdktrace.SpanExporter
	log *logger
}

func (e reportingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if err := e.SpanExporter.ExportSpans(ctx, spans); err != nil {
		e.log.Warn("export spans", "spans", len(spans), "err", err)
	}
	return nil
}

// tracerName is the instrumentation scope of liveops's spans.
const tracerName = "liveops"

// traceIDFrom returns the id of the trace a request with context ctx belongs to, as 32 hex
// digits: its span's, or the one requestInfo holds when no span is made. It is empty
// outside a request (an import from the command line).
func traceIDFrom(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc.TraceID().String()
	}
	if info := infoFrom(ctx); info != nil && info.trace.IsValid() {
		return info.trace.String()
	}
	return ""
}

// internalMessage is all a caller is told of an unexpected error: that it happened, and
// the trace id to quote, which leads to the cause in the access log and the trace.
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

// newTraceID returns a random trace id, for a request that came without one while no span
// is made (the SDK makes its own the same way).
func newTraceID() trace.TraceID {
	var tid trace.TraceID
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid
}

// serverSpan is how every server span starts. It is made once: options built for each
// span would cost an allocation apiece.
var serverSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}

// startServerSpan puts the request whose headers are h in its trace, noting the trace id in
// info. Without a tracer (tr nil, no endpoint set) that is all: ctx is returned as it is,
// with a nil span. Otherwise it starts a server span named name, the child of the caller's
// span if it sent one, with the caller's tracestate carried on.
//
// The span's attributes are all set when it ends, in one call: that costs one allocation,
// where setting them at the start costs four. Samplers could see them at the start, but
// the ones liveops offers look at trace ids only.
func startServerSpan(ctx context.Context, tr trace.Tracer, h http.Header, info *requestInfo, name string) (context.Context, trace.Span) {
	tid, sid, flags, ok := callerTrace(h)
	if tr == nil {
		if !ok {
			tid = newTraceID()
		}
		info.trace = tid
		return ctx, nil
	}
	if ok {
		cfg := trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: true}
		if ts := h["Tracestate"]; len(ts) > 0 {
			// A malformed tracestate is dropped; the traceparent still holds.
			cfg.TraceState, _ = trace.ParseTraceState(strings.Join(ts, ","))
		}
		ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(cfg))
	}
	ctx, span := tr.Start(ctx, name, serverSpan...)
	info.trace = span.SpanContext().TraceID()
	return ctx, span
}

// startHTTPSpan is startServerSpan for an HTTP request. The span is named after the method
// until the route is known (see endHTTPSpan).
func startHTTPSpan(ctx context.Context, tr trace.Tracer, r *http.Request, info *requestInfo) (context.Context, trace.Span) {
	_, name := httpMethod(r.Method)
	return startServerSpan(ctx, tr, r.Header, info, name)
}

// endHTTPSpan ends an HTTP request's span (if it has one) with its attributes and status,
// and names it after the route that answered: a pattern from addRoutes, such as
// "GET /events/{id}".
func endHTTPSpan(span trace.Span, r *http.Request, route string, status int) {
	if span == nil || !span.IsRecording() {
		return
	}
	method, name := httpMethod(r.Method)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	attrs := make([]attribute.KeyValue, 0, 6)
	attrs = append(attrs, semconv.HTTPRequestMethodKey.String(method), semconv.URLPath(r.URL.Path),
		semconv.URLScheme(scheme), semconv.ServerAddress(hostOf(r.Host)), semconv.HTTPResponseStatusCode(status))
	if route != "" {
		// A pattern may start with a method; the route is the path after it. A pattern
		// that starts with the request's own method is the span's name as it is.
		if m, path, ok := strings.Cut(route, " "); ok {
			if m != name {
				name += " " + path
			} else {
				name = route
			}
			route = path
		} else {
			name += " " + route
		}
		span.SetName(name)
		attrs = append(attrs, semconv.HTTPRoute(route))
	}
	span.SetAttributes(attrs...)
	if status >= 500 {
		span.SetStatus(otelcodes.Error, "")
	}
	span.End()
}

// hostOf returns the host of a Host header, without its port.
func hostOf(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.Contains(hostport[i:], "]") {
		hostport = hostport[:i]
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// httpMethod returns a request method as the semantic conventions record it, and the name
// its spans start with: a method outside HTTP's own is _OTHER, and its spans HTTP, so that
// a client cannot invent span names.
func httpMethod(m string) (attr, name string) {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH":
		return m, m
	}
	return "_OTHER", "HTTP"
}

// rpcName is how a gRPC method is named in its spans.
type rpcName struct{ span, service, method string }

// rpcNames returns the span names of gs's methods, by full path ("/liveops.v1.EventService/CreateEvent").
func rpcNames(gs *grpc.Server) map[string]rpcName {
	out := map[string]rpcName{}
	for service, info := range gs.GetServiceInfo() {
		for _, m := range info.Methods {
			out["/"+service+"/"+m.Name] = rpcName{service + "/" + m.Name, service, m.Name}
		}
	}
	return out
}

// unknownRPC names the spans of calls to methods liveops does not serve; their paths are
// the caller's invention.
var unknownRPC = rpcName{span: "unknown gRPC method", method: "_OTHER"}

// startRPCSpan is startServerSpan for a gRPC call to the method named n.
func startRPCSpan(ctx context.Context, tr trace.Tracer, r *http.Request, info *requestInfo, n rpcName) (context.Context, trace.Span) {
	return startServerSpan(ctx, tr, r.Header, info, n.span)
}

// endRPCSpan ends a gRPC call's span (if it has one) with its attributes and status code.
// The codes that mean the server failed mark the span as an error, as the semantic
// conventions list them.
func endRPCSpan(span trace.Span, n rpcName, code codes.Code) {
	if span == nil || !span.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, semconv.RPCSystemGRPC, semconv.RPCMethod(n.method), semconv.RPCGRPCStatusCodeKey.Int(int(code)))
	if n.service != "" {
		attrs = append(attrs, semconv.RPCService(n.service))
	}
	span.SetAttributes(attrs...)
	switch code {
	case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.DataLoss:
		span.SetStatus(otelcodes.Error, code.String())
	}
	span.End()
}

// childSpan starts a span named name under the span in ctx, and returns ctx holding it and
// what ends it, marking it failed when *errp holds an error (errp may be nil). When the span
// in ctx is not recording (no endpoint set, or not sampled) it starts nothing and costs
// nothing.
func childSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, func(errp *error)) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, endNothing
	}
	ctx, span := parent.TracerProvider().Tracer(tracerName).Start(ctx, name, trace.WithAttributes(attrs...))
	return ctx, func(errp *error) {
		if errp != nil && *errp != nil {
			span.SetStatus(otelcodes.Error, (*errp).Error())
		}
		span.End()
	}
}

func endNothing(*error) {}

// txSpan is childSpan for a database transaction: named after op, with the engine.
func txSpan(ctx context.Context, pg bool, op string) (context.Context, func(errp *error)) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, endNothing
	}
	system := semconv.DBSystemNameSQLite
	if pg {
		system = semconv.DBSystemNamePostgreSQL
	}
	return childSpan(ctx, "db transaction "+op, system, semconv.DBOperationName(op))
}
