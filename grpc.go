package main

//go:generate protoc --go_out=. --go_opt=module=liveops --go-grpc_out=. --go-grpc_opt=module=liveops events.proto

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // accept gzip-compressed calls
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// newGRPCServer returns the gRPC server with the event service, health and reflection
// registered, and every call going through the one error mapping. Keys are checked before
// a call gets here, by grpcGate.
func newGRPCServer(st *store, rm *readModel, lim limits, defaultLocale string, shutdown <-chan struct{}, log *logger) (*grpc.Server, *health.Server) {
	gs := grpc.NewServer(
		grpc.ForceServerCodecV2(preEncodedCodec{encoding.GetCodecV2(protoenc.Name)}),
		// The limit holds for a message after decompression too, so a small gzip bomb
		// is refused like a large message.
		grpc.MaxRecvMsgSize(lim.grpcMaxRecvBytes),
		grpc.UnaryInterceptor(unaryInterceptor(lim.writeTimeout)),
		grpc.StreamInterceptor(streamInterceptor(lim.grpcStreamMaxAge, shutdown)),
		// grpcGate lets an unknown method through only with an admin key, so the API
		// cannot be enumerated without one.
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			return status.Error(codes.Unimplemented, "unknown service or method")
		}),
	)
	eventspb.RegisterEventServiceServer(gs, &eventServer{st: st, rm: rm, log: log, defaultLocale: defaultLocale})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs) // v1 and v1alpha
	return gs, hs
}

// preEncodedCodec is gRPC's proto codec, except that a message holding nothing but unknown
// fields is sent as those bytes, without a copy. The default ListEvents answer is such a
// message: encoded once and shared by every call, so a call costs no encoding and no copy
// of a response that can run to megabytes (BenchmarkListEvents measures what that saves).
// A message with only unknown fields encodes to exactly those bytes, so the wire format is
// unchanged.
type preEncodedCodec struct{ encoding.CodecV2 }

func (c preEncodedCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(proto.Message); ok {
		r := m.ProtoReflect()
		if raw := r.GetUnknown(); len(raw) > 0 && !hasKnownFields(r) {
			// SliceBuffer's Free does nothing, so gRPC never recycles the shared bytes.
			return mem.BufferSlice{mem.SliceBuffer(raw)}, nil
		}
	}
	return c.CodecV2.Marshal(v)
}

func hasKnownFields(m protoreflect.Message) bool {
	found := false
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool {
		found = true
		return false
	})
	return found
}

// eventServer implements liveops.v1.EventService. Its methods return plain errors; the
// interceptors turn them into statuses (see grpcStatus).
type eventServer struct {
	eventspb.UnimplementedEventServiceServer
	st  *store
	rm  *readModel
	log *logger
	// defaultLocale is the locale of events' own text, for PreviewPlayerView.
	defaultLocale string

	firstMu sync.Mutex // serialises rebuilding first
	first   atomic.Pointer[encodedPage]
}

func (s *eventServer) CreateEvent(ctx context.Context, req *eventspb.CreateEventRequest) (*eventspb.CreateEventResponse, error) {
	var errs fieldErrors
	if id := req.GetRequestId(); id != "" && !validID(id) {
		errs.add(&fieldError{"request_id", "must be a lowercase UUID"})
	}
	e, err := eventFromFields(eventFields{req.GetTitle(), req.GetDescription(), req.GetStartTime(), req.GetEndTime(),
		req.GetRewards(), req.GetPreviewTime(), req.GetRecurrence(), req.GetPriority(), req.GetLabels(), req.GetState(),
		req.GetAudience(), req.GetRolloutPercent(), req.GetTimeMode(), req.GetLocalizations()})
	errs.add(err)
	// Validation reports the rest; a field the request already got wrong is not reported
	// a second time.
	for _, fe := range fieldProblems(e.validate()) {
		if !slices.ContainsFunc(errs, func(p *fieldError) bool { return p.Field == fe.Field }) {
			errs = append(errs, fe)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if req.GetValidateOnly() {
		now := s.rm.now()
		e.CreatedAt, e.UpdatedAt, e.Version = now.UTC(), now.UTC(), 1
		return &eventspb.CreateEventResponse{Event: toProto(e, s.rm.viewOf(e, now), s.rm.zones), ServerTime: timestamppb.New(now)}, nil
	}
	e.ID = newID()
	got, gen, err := s.st.CreateEvent(ctx, e, req.GetRequestId())
	if err != nil {
		return nil, err
	}
	if gen != 0 { // 0: a retry, which wrote nothing
		s.rm.applied(ctx, gen, &got, "")
		s.logWrite(ctx, "create", got.ID)
	}
	now := s.rm.now()
	return &eventspb.CreateEventResponse{Event: toProto(got, s.rm.viewOf(got, now), s.rm.zones), ServerTime: timestamppb.New(now)}, nil
}

func (s *eventServer) GetEvent(ctx context.Context, req *eventspb.GetEventRequest) (*eventspb.GetEventResponse, error) {
	if err := checkID("id", req.GetId()); err != nil {
		return nil, err
	}
	e, ok := s.rm.snapshot().get(req.GetId())
	if !ok {
		return nil, s.st.WhyMissing(ctx, req.GetId())
	}
	now := s.rm.now()
	return &eventspb.GetEventResponse{Event: toProto(e.Event, e.viewAt(now), s.rm.zones), ServerTime: timestamppb.New(now)}, nil
}

// updatableFields are the update_mask paths UpdateEvent accepts, each with how to copy that
// field from the request onto the stored event.
var updatableFields = map[string]func(dst *Event, src Event){
	"title":           func(dst *Event, src Event) { dst.Title = src.Title },
	"description":     func(dst *Event, src Event) { dst.Description = src.Description },
	"start_time":      func(dst *Event, src Event) { dst.Start = src.Start },
	"end_time":        func(dst *Event, src Event) { dst.End = src.End },
	"rewards":         func(dst *Event, src Event) { dst.Rewards = src.Rewards },
	"preview_time":    func(dst *Event, src Event) { dst.Preview = src.Preview },
	"recurrence":      func(dst *Event, src Event) { dst.Recurrence = src.Recurrence },
	"priority":        func(dst *Event, src Event) { dst.Priority = src.Priority },
	"labels":          func(dst *Event, src Event) { dst.Labels = src.Labels },
	"state":           func(dst *Event, src Event) { dst.State = src.State },
	"audience":        func(dst *Event, src Event) { dst.Audience = src.Audience },
	"rollout_percent": func(dst *Event, src Event) { dst.RolloutPercent = src.RolloutPercent },
	"time_mode":       func(dst *Event, src Event) { dst.TimeMode = src.TimeMode },
	"localizations":   func(dst *Event, src Event) { dst.Localizations = src.Localizations },
}

func (s *eventServer) UpdateEvent(ctx context.Context, req *eventspb.UpdateEventRequest) (*eventspb.UpdateEventResponse, error) {
	if err := checkID("id", req.GetId()); err != nil {
		return nil, err
	}
	// No mask, an empty one or "*" replaces every field, but for state when the request
	// leaves it unspecified: an edit that does not mention the state must not publish a
	// draft, nor hide a live event.
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 1 && paths[0] == "*" || len(paths) == 0 {
		paths = slices.Sorted(maps.Keys(updatableFields))
	}
	if req.GetState() == eventspb.EventState_EVENT_STATE_UNSPECIFIED {
		paths = slices.DeleteFunc(slices.Clone(paths), func(p string) bool { return p == "state" })
	}
	for _, p := range paths {
		if updatableFields[p] == nil {
			return nil, &fieldError{"update_mask", fmt.Sprintf("unknown path %q; want one of %s",
				p, strings.Join(slices.Sorted(maps.Keys(updatableFields)), ", "))}
		}
	}
	in, err := eventFromFields(eventFields{req.GetTitle(), req.GetDescription(), req.GetStartTime(), req.GetEndTime(),
		req.GetRewards(), req.GetPreviewTime(), req.GetRecurrence(), req.GetPriority(), req.GetLabels(), req.GetState(),
		req.GetAudience(), req.GetRolloutPercent(), req.GetTimeMode(), req.GetLocalizations()})
	if err != nil {
		return nil, err
	}
	change := func(e *Event) error {
		for _, p := range paths {
			updatableFields[p](e, in)
		}
		return e.validate()
	}
	var got Event
	if req.GetValidateOnly() {
		cur, ok := s.rm.snapshot().get(req.GetId())
		if !ok {
			return nil, s.st.WhyMissing(ctx, req.GetId())
		}
		got, err = applyChange(cur.Event, req.GetEtag(), s.rm.now().UTC(), change)
	} else {
		var gen int64
		if got, gen, err = s.st.UpdateEvent(ctx, req.GetId(), req.GetEtag(), change); err == nil {
			s.rm.applied(ctx, gen, &got, "")
			s.logWrite(ctx, "update", got.ID)
		}
	}
	if err != nil {
		return nil, err
	}
	now := s.rm.now()
	return &eventspb.UpdateEventResponse{Event: toProto(got, s.rm.viewOf(got, now), s.rm.zones), ServerTime: timestamppb.New(now)}, nil
}

func (s *eventServer) DeleteEvent(ctx context.Context, req *eventspb.DeleteEventRequest) (*eventspb.DeleteEventResponse, error) {
	if err := checkID("id", req.GetId()); err != nil {
		return nil, err
	}
	gen, err := s.st.DeleteEvent(ctx, req.GetId(), req.GetEtag())
	if err != nil {
		return nil, err
	}
	s.rm.applied(ctx, gen, nil, req.GetId())
	s.logWrite(ctx, "delete", req.GetId())
	return &eventspb.DeleteEventResponse{Success: true}, nil
}

func (s *eventServer) ListEvents(ctx context.Context, req *eventspb.ListEventsRequest) (*eventspb.ListEventsResponse, error) {
	q, err := adminQueryFrom(req)
	if err != nil {
		return nil, err
	}
	now := s.rm.now()
	if q.isDefault() {
		return s.firstPage(now), nil
	}
	t := now
	if !q.at.IsZero() {
		t = q.at
	}
	events, next, _ := s.rm.snapshot().adminPage(t, q)
	return listResponse(t, events, next.token(), s.rm.zones), nil
}

// encodedPage is the default ListEvents answer (first page, no filters), encoded, for one
// snapshot generation, within one second, and while no status or next start in it changes.
type encodedPage struct {
	gen    int64
	second int64
	until  time.Time
	raw    []byte // a serialized ListEventsResponse
}

func (p *encodedPage) validAt(gen int64, now time.Time) bool {
	return p != nil && p.gen == gen && p.second == now.Unix() && now.Before(p.until)
}

// firstPage returns the default ListEvents answer at now. Its fields ride pre-encoded in
// the message's unknown-field bytes, which preEncodedCodec sends as they are: a call costs
// neither encoding nor a copy. In this process the message looks empty: it is for the wire.
func (s *eventServer) firstPage(now time.Time) *eventspb.ListEventsResponse {
	snap := s.rm.snapshot()
	p := s.first.Load()
	if !p.validAt(snap.gen, now) {
		s.firstMu.Lock()
		if p = s.first.Load(); !p.validAt(snap.gen, now) {
			events, next, until := snap.adminPage(now, adminQuery{pageSize: defaultPageSize, filter: defaultFilter})
			raw, err := proto.Marshal(listResponse(now, events, next.token(), s.rm.zones))
			if err != nil {
				panic(fmt.Sprintf("encode ListEventsResponse: %v", err)) // generated messages always encode
			}
			p = &encodedPage{gen: snap.gen, second: now.Unix(), until: until, raw: raw}
			s.first.Store(p)
		}
		s.firstMu.Unlock()
	}
	resp := &eventspb.ListEventsResponse{}
	resp.ProtoReflect().SetUnknown(protoreflect.RawFields(p.raw))
	return resp
}

// defaultFilter identifies "no filters" in page tokens.
const defaultFilter = "-"

// adminQueryFrom checks a ListEvents request.
func adminQueryFrom(req *eventspb.ListEventsRequest) (adminQuery, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return adminQuery{}, err
	}
	q := adminQuery{pageSize: size}
	for _, st := range req.GetStatus() {
		switch st {
		case eventspb.EventStatus_EVENT_STATUS_ACTIVE:
			q.statuses.add(statusActive)
		case eventspb.EventStatus_EVENT_STATUS_UPCOMING:
			q.statuses.add(statusUpcoming)
		case eventspb.EventStatus_EVENT_STATUS_ENDED:
			q.statuses.add(statusEnded)
		default:
			return q, &fieldError{"status", fmt.Sprintf("unknown status %v", st)}
		}
	}
	for _, l := range req.GetLabels() {
		if err := checkLabel(l); err != nil {
			return q, &fieldError{"labels", err.Error()}
		}
	}
	q.labels = req.GetLabels()
	switch req.GetState() {
	case eventspb.EventState_EVENT_STATE_UNSPECIFIED:
	case eventspb.EventState_EVENT_STATE_PUBLISHED:
		q.state = statePublished
	case eventspb.EventState_EVENT_STATE_DRAFT:
		q.state = stateDraft
	default:
		return q, &fieldError{"state", fmt.Sprintf("unknown state %v", req.GetState())}
	}
	if req.At != nil {
		if q.at, err = fromTimestamp("at", req.GetAt()); err != nil {
			return q, err
		}
	}
	// The audience filters follow an audience's rules, and are named as the request names them.
	a, err := (&Audience{Platforms: req.GetPlatforms(), Countries: req.GetCountries(), Languages: req.GetLanguages()}).validate("audience")
	if problems := fieldProblems(err); problems != nil {
		for _, p := range problems {
			p.Field = strings.TrimPrefix(p.Field, "audience.")
		}
		return q, problems
	}
	if a != nil {
		q.platforms, q.countries, q.languages = a.Platforms, a.Countries, a.Languages
	}
	q.filter = defaultFilter
	if q.statuses != 0 || len(q.labels) > 0 || q.state != "" || !q.at.IsZero() || a != nil {
		sum := sha256.Sum256(fmt.Appendf(nil, "%d|%s|%s|%d|%s|%s|%s", q.statuses, strings.Join(slices.Sorted(slices.Values(q.labels)), ","),
			q.state, q.at.UnixNano(), strings.Join(q.platforms, ","), strings.Join(q.countries, ","), strings.Join(q.languages, ",")))
		q.filter = hex.EncodeToString(sum[:8])
	}
	if tok := req.GetPageToken(); tok != "" {
		var k pageKey
		if err := decodeToken(tok, &k); err != nil || !validID(k.ID) {
			return q, &fieldError{"page_token", "is not a token this server issued"}
		}
		if k.Filter != q.filter {
			return q, &fieldError{"page_token", "was issued for other filters; send the same status, labels, state, at, platforms, countries and languages"}
		}
		q.after = &k
	}
	return q, nil
}

// token is the page token that resumes after k; empty for no next page.
func (k *pageKey) token() string {
	if k == nil {
		return ""
	}
	return encodeToken(k)
}

func (s *eventServer) ListEventRevisions(ctx context.Context, req *eventspb.ListEventRevisionsRequest) (*eventspb.ListEventRevisionsResponse, error) {
	if err := checkID("event_id", req.GetEventId()); err != nil {
		return nil, err
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var before int64
	if tok := req.GetPageToken(); tok != "" {
		var c auditCursor
		if err := decodeToken(tok, &c); err != nil || c.EventID != req.GetEventId() {
			return nil, &fieldError{"page_token", "is not a token this server issued for this event"}
		}
		before = c.Revision
	}
	revs, err := s.st.Revisions(ctx, req.GetEventId(), before, size+1)
	if err != nil {
		return nil, err
	}
	resp := &eventspb.ListEventRevisionsResponse{}
	if len(revs) > size {
		revs = revs[:size]
		last := revs[size-1]
		resp.NextPageToken = encodeToken(auditCursor{EventID: last.EventID, Revision: last.Revision})
	}
	resp.Revisions = revisionsToProto(revs, s.rm.zones)
	return resp, nil
}

func (s *eventServer) ListAuditLog(ctx context.Context, req *eventspb.ListAuditLogRequest) (*eventspb.ListAuditLogResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var since time.Time
	if req.Since != nil {
		if since, err = fromTimestamp("since", req.GetSince()); err != nil {
			return nil, err
		}
	}
	filter := fmt.Sprintf("%d|%s", since.UnixNano(), req.GetKeyId())
	var after *auditCursor
	if tok := req.GetPageToken(); tok != "" {
		var c auditCursor
		if err := decodeToken(tok, &c); err != nil || c.Filter != filter {
			return nil, &fieldError{"page_token", "is not a token this server issued for these filters"}
		}
		after = &c
	}
	revs, err := s.st.AuditLog(ctx, since, req.GetKeyId(), after, size+1)
	if err != nil {
		return nil, err
	}
	resp := &eventspb.ListAuditLogResponse{}
	if len(revs) > size {
		revs = revs[:size]
		last := revs[size-1]
		resp.NextPageToken = encodeToken(auditCursor{At: last.At.UnixNano(), EventID: last.EventID, Revision: last.Revision, Filter: filter})
	}
	resp.Revisions = revisionsToProto(revs, s.rm.zones)
	return resp, nil
}

func (s *eventServer) RestoreEvent(ctx context.Context, req *eventspb.RestoreEventRequest) (*eventspb.RestoreEventResponse, error) {
	if err := checkID("event_id", req.GetEventId()); err != nil {
		return nil, err
	}
	if req.GetRevision() < 1 {
		return nil, &fieldError{"revision", "must be 1 or more"}
	}
	e, gen, err := s.st.RestoreEvent(ctx, req.GetEventId(), req.GetRevision(), req.GetEtag())
	if err != nil {
		return nil, err
	}
	s.rm.applied(ctx, gen, &e, "")
	s.logWrite(ctx, "restore", e.ID)
	now := s.rm.now()
	return &eventspb.RestoreEventResponse{Event: toProto(e, s.rm.viewOf(e, now), s.rm.zones), ServerTime: timestamppb.New(now)}, nil
}

// hiddenReasons maps the read model's reasons an event is hidden from a player to the API's.
var hiddenReasons = map[string]eventspb.HiddenReason{
	"audience":          eventspb.HiddenReason_HIDDEN_REASON_AUDIENCE,
	"excluded":          eventspb.HiddenReason_HIDDEN_REASON_EXCLUDED,
	"rollout":           eventspb.HiddenReason_HIDDEN_REASON_ROLLOUT,
	"not_yet_previewed": eventspb.HiddenReason_HIDDEN_REASON_NOT_YET_PREVIEWED,
	"draft":             eventspb.HiddenReason_HIDDEN_REASON_DRAFT,
	"ended":             eventspb.HiddenReason_HIDDEN_REASON_ENDED,
	"not_requested":     eventspb.HiddenReason_HIDDEN_REASON_NOT_REQUESTED,
}

func (s *eventServer) PreviewPlayerView(ctx context.Context, req *eventspb.PreviewPlayerViewRequest) (*eventspb.PreviewPlayerViewResponse, error) {
	c, ctxErr := newClientContext(req.GetPlatform(), req.GetClientVersion(), req.GetCountry(), req.GetLanguage(),
		req.GetPlayerId(), req.GetTimeZone(), req.GetUtcOffset(), s.rm.zones)
	q, queryErr := playerQueryFrom(req.GetStatuses(), req.GetLabels())
	t := s.rm.now()
	var atErr error
	if req.At != nil {
		t, atErr = fromTimestamp("at", req.GetAt())
	}
	// Every problem of the request at once, as a create reports them.
	var errs fieldErrors
	for _, err := range []error{ctxErr, queryErr, atErr} {
		if err != nil && fieldProblems(err) == nil {
			return nil, err
		}
		errs.add(err)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	c.defaultLocale = s.defaultLocale
	shown, hidden := s.rm.snapshot().playerView(t, q, &c)
	resp := &eventspb.PreviewPlayerViewResponse{ServerTime: timestamppb.New(t), Body: string(playerAnswer(t, shown, s.defaultLocale))}
	for _, sh := range shown {
		resp.Shown = append(resp.Shown, shownToProto(sh, s.rm.zones, s.defaultLocale))
	}
	for _, h := range hidden {
		resp.Hidden = append(resp.Hidden, &eventspb.HiddenEvent{EventId: h.e.ID, Title: h.e.Title, Reason: hiddenReasons[h.reason]})
	}
	return resp, nil
}

// logWrite records an admin write: who (key id and name), what, and which event.
func (s *eventServer) logWrite(ctx context.Context, action, id string) {
	var keyID, keyName string
	if k := callerFrom(ctx); k != nil {
		keyID, keyName = k.ID, k.Name
	}
	s.log.Info("admin write", "action", action, "event_id", id, "key_id", keyID, "key_name", keyName)
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// pageSize checks a requested page size: 0 means the default.
func pageSize(n int32) (int, error) {
	switch {
	case n == 0:
		return defaultPageSize, nil
	case n < 0 || n > maxPageSize:
		return 0, &fieldError{"page_size", fmt.Sprintf("must be between 1 and %d (0 means %d), got %d", maxPageSize, defaultPageSize, n)}
	}
	return int(n), nil
}

func encodeToken(v any) string { return base64.RawURLEncoding.EncodeToString(marshalJSON(v)) }

func decodeToken(tok string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// grpcStatus is the one place an error becomes a gRPC status, for the call with context
// ctx. It reports internal when the error is unexpected: the caller then sees only
// "internal error" and the call's trace id, and the cause goes to the access log.
func grpcStatus(ctx context.Context, err error) (st *status.Status, internal bool) {
	var ae *authError
	var nf *notFoundError
	switch {
	case err == nil:
		return nil, false
	case errors.As(err, &ae):
		switch ae.kind {
		case authForbidden:
			return status.New(codes.PermissionDenied, ae.msg), false
		case authThrottled:
			return withDetails(status.New(codes.ResourceExhausted, ae.msg),
				&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfterSeconds(ae.retryAfter))}), false
		}
		return status.New(codes.Unauthenticated, ae.msg), false
	case fieldProblems(err) != nil:
		br := &errdetails.BadRequest{}
		for _, fe := range fieldProblems(err) {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: fe.Field, Description: fe.Reason})
		}
		return withDetails(status.New(codes.InvalidArgument, fieldProblems(err).Error()), br), false
	case errors.As(err, &nf):
		return status.New(codes.NotFound, nf.msg), false
	case errors.Is(err, errStale):
		return status.New(codes.Aborted, errStale.Error()), false
	case errors.Is(err, errRequestReused):
		return status.New(codes.AlreadyExists, errRequestReused.Error()), false
	case errors.Is(err, errBusy):
		return status.New(codes.Unavailable, errBusy.Error()), false
	case errors.Is(err, errReadOnly):
		return status.New(codes.Unavailable, errReadOnly.Error()), false
	case errors.Is(err, errUnavailable):
		return status.New(codes.Unavailable, errUnavailable.Error()), false
	case errors.Is(err, errFull):
		return status.New(codes.ResourceExhausted, errFull.Error()), false
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request canceled"), false
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded"), false
	}
	if st, ok := status.FromError(err); ok {
		return st, st.Code() == codes.Internal || st.Code() == codes.Unknown
	}
	return status.New(codes.Internal, internalMessage(ctx)), true
}

// withDetails returns st with details attached; details are a courtesy, so st alone is
// returned should they fail to encode.
func withDetails(st *status.Status, details ...protoadapt.MessageV1) *status.Status {
	if d, err := st.WithDetails(details...); err == nil {
		return d
	}
	return st
}

// grpcGate is the front door of every gRPC call. It decides on the key from the headers
// alone, before grpc-go reads a byte of the body (grpc-go's ServeHTTP reads a whole message
// before any interceptor runs), so that a caller without a valid key gets
// UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED at once, whatever it sends
// after. It refuses codecs liveops does not serve, bounds the calls in flight, and writes
// one access-log line for every call it answers, grpc-go's own refusals included.
func grpcGate(gs *grpc.Server, g *guard, inflight *inFlight, reqs *requestMetrics, maxHeaderBytes int, log *logger, tr trace.Tracer) http.Handler {
	streams := streamingMethods(gs)
	names := rpcNames(gs)
	// Health calls need no key, so anyone can open them: they get a small bound of their
	// own, and cannot take the slots of keyed calls.
	health := &inFlight{max: maxHealthInFlight}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, info := withRequestInfo(r.Context())
		method := r.URL.Path
		name, ok := names[method]
		if !ok {
			name = unknownRPC
		}
		ctx, span := startRPCSpan(ctx, tr, r, info, name)
		// Every encoding liveops accepts: grpc-go answers in the one the call used.
		w.Header().Set("Grpc-Accept-Encoding", "gzip")
		bound := inflight
		var k *keyEntry
		st := func() *status.Status {
			if n := headerBytes(r); n > maxHeaderBytes {
				return status.Newf(codes.ResourceExhausted, "request metadata is %d bytes; the limit is %d (-max-header-bytes)", n, maxHeaderBytes)
			}
			if need := rpcRole(method); need != rolePublic {
				var err error
				k, err = g.authorize(ctx, remoteIP(r.RemoteAddr), r.Header["Authorization"], need)
				if k != nil {
					info.setCaller(k)
				}
				if err != nil {
					s, _ := grpcStatus(ctx, err)
					return s
				}
			} else {
				bound = health
			}
			if sub := grpcSubtype(r.Header.Get("Content-Type")); sub != "" && sub != "proto" {
				return status.Newf(codes.Unimplemented, "content-type application/grpc+%s is not served: liveops speaks application/grpc (protobuf)", sub)
			}
			if !bound.acquire() {
				reqs.shedGRPC.Inc()
				return status.New(codes.Unavailable, errTooBusy.Error())
			}
			return nil
		}()
		if st != nil {
			info.setReason(st.Message())
			writeGRPCStatus(w, st)
		} else {
			defer bound.release()
			if k != nil {
				k.markUsed()
			}
			if streams[method] {
				// -read-timeout and -write-timeout would cut a stream with RST_STREAM,
				// which clients see as INTERNAL; a stream gets a maximum age instead (see
				// streamInterceptor), ended with a status that says why. A unary call
				// keeps both: it must send its request and get its answer in time.
				rc := http.NewResponseController(w)
				rc.SetReadDeadline(time.Time{})
				rc.SetWriteDeadline(time.Time{})
			}
			// grpc-go's ServeHTTP needs a Flusher; this records nothing but passes it on.
			gs.ServeHTTP(flushWriter{w}, r.WithContext(ctx))
		}
		code := codes.Unknown
		if n, err := strconv.Atoi(w.Header().Get("Grpc-Status")); err == nil {
			code = codes.Code(n)
		} else if r.Context().Err() != nil {
			code = codes.Canceled // the client went away before a status was sent
		}
		endRPCSpan(span, name, code)
		e := &accessEntry{end: time.Now(), proto: "grpc", path: method, code: code.String(),
			failed: code == codes.Internal || code == codes.Unknown || code == codes.DataLoss}
		e.took = e.end.Sub(start)
		log.access(e.from(info))
		reqs.observeRPC(method, code, e.took)
	})
}

// maxHealthInFlight bounds the keyless health calls served at once.
const maxHealthInFlight = 64

// streamingMethods returns the full names of gs's streaming methods.
func streamingMethods(gs *grpc.Server) map[string]bool {
	out := map[string]bool{}
	for name, info := range gs.GetServiceInfo() {
		for _, m := range info.Methods {
			if m.IsClientStream || m.IsServerStream {
				out["/"+name+"/"+m.Name] = true
			}
		}
	}
	return out
}

// flushWriter is w, with the Flusher grpc-go insists on seeing in the method set.
type flushWriter struct{ http.ResponseWriter }

func (f flushWriter) Flush() { http.NewResponseController(f.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (f flushWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// grpcSubtype returns the codec a gRPC Content-Type names: "" for application/grpc,
// "proto" for application/grpc+proto, "json" for application/grpc+json.
func grpcSubtype(contentType string) string {
	rest, _ := strings.CutPrefix(contentType, "application/grpc")
	rest, _, _ = strings.Cut(rest, ";")
	return strings.ToLower(strings.TrimSpace(strings.TrimPrefix(rest, "+")))
}

// writeGRPCStatus answers a gRPC call with st alone, a trailers-only response, without
// reading its body.
func writeGRPCStatus(w http.ResponseWriter, st *status.Status) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(int(st.Code())))
	h.Set("Grpc-Message", encodeGRPCMessage(st.Message()))
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			h.Set("Grpc-Status-Details-Bin", base64.RawStdEncoding.EncodeToString(b))
		}
	}
	w.WriteHeader(http.StatusOK)
}

// encodeGRPCMessage percent-encodes a status message as the gRPC protocol asks: every byte
// outside printable ASCII, and '%' itself.
func encodeGRPCMessage(msg string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// unaryInterceptor gives every unary call the -write-timeout as its deadline and maps its
// error to a status.
func unaryInterceptor(timeout time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		resp, err := handler(ctx, req)
		return resp, finishRPC(ctx, err)
	}
}

// Why a stream was ended by the server rather than by its client or its handler.
var (
	errStreamAge    = errors.New("the stream reached its maximum age (-grpc-stream-max-age); open a new one")
	errShuttingDown = errors.New("the server is shutting down; reconnect")
)

// streamInterceptor gives every stream a lifetime: after maxAge, or when the server starts
// shutting down, the stream ends with UNAVAILABLE and a message saying why, which clients
// take as "reconnect" (a health Watch does so by itself).
func streamInterceptor(maxAge time.Duration, shutdown <-chan struct{}) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancelCause(ss.Context())
		defer cancel(nil)
		age := time.AfterFunc(maxAge, func() { cancel(errStreamAge) })
		defer age.Stop()
		go func() {
			select {
			case <-shutdown:
				cancel(errShuttingDown)
			case <-ctx.Done():
			}
		}()
		err := handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
		if cause := context.Cause(ctx); cause == errStreamAge || cause == errShuttingDown {
			err = status.Error(codes.Unavailable, cause.Error())
		}
		return finishRPC(ctx, err)
	}
}

// contextStream is a ServerStream with a context of its own.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// finishRPC maps a call's error to its status, notes for the access log why it failed (the
// cause itself, for an internal error, which the caller never sees) and returns the
// status error for gRPC to send.
func finishRPC(ctx context.Context, err error) error {
	st, internal := grpcStatus(ctx, err)
	switch {
	case internal:
		noteReason(ctx, err.Error())
	case err != nil:
		noteReason(ctx, st.Message())
	}
	return st.Err()
}
