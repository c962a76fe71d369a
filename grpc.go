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
	"slices"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// newGRPCServer returns the gRPC server with the event service, health and reflection
// registered, and every call (known or not) going through authentication and logging.
func newGRPCServer(st *store, rm *readModel, g *guard, maxRecvBytes int, now func() time.Time, log *logger) (*grpc.Server, *health.Server) {
	gs := grpc.NewServer(
		grpc.ForceServerCodecV2(preEncodedCodec{encoding.GetCodecV2(protoenc.Name)}),
		grpc.MaxRecvMsgSize(maxRecvBytes),
		grpc.UnaryInterceptor(unaryInterceptor(g, log)),
		grpc.StreamInterceptor(streamInterceptor(g, log)),
		// Unknown services and methods pass through the stream interceptor like any other
		// call, so without a key they are UNAUTHENTICATED rather than UNIMPLEMENTED.
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			return status.Error(codes.Unimplemented, "unknown service or method")
		}),
	)
	eventspb.RegisterEventServiceServer(gs, &eventServer{st: st, rm: rm, now: now, log: log})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs) // v1 and v1alpha
	return gs, hs
}

// preEncodedCodec is gRPC's proto codec, except that a message holding nothing but unknown
// fields is sent as those bytes, without a copy. The read model's ListEvents answer is such
// a message: its events are encoded once per snapshot and shared by every call, so a call
// costs no encoding and no copy of a response that can run to megabytes. (A message with
// only unknown fields encodes to exactly those bytes, so the wire format is unchanged.)
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

// eventServer implements liveops.v1.EventService.
type eventServer struct {
	eventspb.UnimplementedEventServiceServer
	st  *store
	rm  *readModel
	now func() time.Time
	log *logger
}

func (s *eventServer) CreateEvent(ctx context.Context, req *eventspb.CreateEventRequest) (*eventspb.CreateEventResponse, error) {
	if id := req.GetRequestId(); id != "" && !validID(id) {
		return nil, s.grpcError(&fieldError{"request_id", "must be a lowercase UUID"})
	}
	e, err := eventFromFields(eventFields{req.GetTitle(), req.GetDescription(), req.GetStartTime(), req.GetEndTime(),
		req.GetRewards(), req.GetPreviewTime(), req.GetRecurrence(), req.GetPriority(), req.GetLabels(), req.GetState()})
	if err == nil {
		err = e.validate()
	}
	if err != nil {
		return nil, s.grpcError(err)
	}
	now := s.now().UTC()
	e.CreatedAt, e.UpdatedAt = now, now
	if req.GetValidateOnly() {
		return &eventspb.CreateEventResponse{Event: s.toProtoNow(e)}, nil
	}
	e.ID = newID()
	got, gen, err := s.st.CreateEvent(ctx, e, req.GetRequestId(), e.fingerprint(), callerKeyID(ctx))
	if err != nil {
		return nil, s.grpcError(err)
	}
	if gen != 0 { // 0: a retry, which wrote nothing
		s.rm.applied(ctx, gen, &got, "")
		s.logWrite(ctx, "create", got.ID)
	}
	return &eventspb.CreateEventResponse{Event: s.toProtoNow(got)}, nil
}

func (s *eventServer) GetEvent(ctx context.Context, req *eventspb.GetEventRequest) (*eventspb.GetEventResponse, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, s.grpcError(err)
	}
	e, ok := s.rm.snapshot().get(req.GetId())
	if !ok {
		return nil, s.grpcError(errNotFound)
	}
	return &eventspb.GetEventResponse{Event: toProto(e.Event, e.viewAt(s.now()))}, nil
}

// toProtoNow converts e for an admin, with its status as of now.
func (s *eventServer) toProtoNow(e Event) *eventspb.Event {
	sched := newSchedule(&e)
	return toProto(e, e.viewAt(&sched, s.now()))
}

// updatableFields are the update_mask paths UpdateEvent accepts, each with how to copy that
// field from the request onto the stored event.
var updatableFields = map[string]func(dst *Event, src Event){
	"title":        func(dst *Event, src Event) { dst.Title = src.Title },
	"description":  func(dst *Event, src Event) { dst.Description = src.Description },
	"start_time":   func(dst *Event, src Event) { dst.Start = src.Start },
	"end_time":     func(dst *Event, src Event) { dst.End = src.End },
	"rewards":      func(dst *Event, src Event) { dst.Rewards = src.Rewards },
	"preview_time": func(dst *Event, src Event) { dst.Preview = src.Preview },
	"recurrence":   func(dst *Event, src Event) { dst.Recurrence = src.Recurrence },
	"priority":     func(dst *Event, src Event) { dst.Priority = src.Priority },
	"labels":       func(dst *Event, src Event) { dst.Labels = src.Labels },
	"state":        func(dst *Event, src Event) { dst.State = src.State },
}

func (s *eventServer) UpdateEvent(ctx context.Context, req *eventspb.UpdateEventRequest) (*eventspb.UpdateEventResponse, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, s.grpcError(err)
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
			return nil, s.grpcError(&fieldError{"update_mask", fmt.Sprintf("unknown path %q; want one of %s",
				p, strings.Join(slices.Sorted(maps.Keys(updatableFields)), ", "))})
		}
	}
	in, err := eventFromFields(eventFields{req.GetTitle(), req.GetDescription(), req.GetStartTime(), req.GetEndTime(),
		req.GetRewards(), req.GetPreviewTime(), req.GetRecurrence(), req.GetPriority(), req.GetLabels(), req.GetState()})
	if err != nil {
		return nil, s.grpcError(err)
	}
	got, gen, err := s.st.UpdateEvent(ctx, req.GetId(), req.GetEtag(), s.now().UTC(), req.GetValidateOnly(), callerKeyID(ctx), func(e *Event) error {
		for _, p := range paths {
			updatableFields[p](e, in)
		}
		return e.validate()
	})
	if err != nil {
		return nil, s.grpcError(err)
	}
	if !req.GetValidateOnly() {
		s.rm.applied(ctx, gen, &got, "")
		s.logWrite(ctx, "update", got.ID)
	}
	return &eventspb.UpdateEventResponse{Event: s.toProtoNow(got)}, nil
}

func (s *eventServer) DeleteEvent(ctx context.Context, req *eventspb.DeleteEventRequest) (*eventspb.DeleteEventResponse, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, s.grpcError(err)
	}
	gen, err := s.st.DeleteEvent(ctx, req.GetId(), req.GetEtag(), s.now().UTC(), callerKeyID(ctx))
	if err != nil {
		return nil, s.grpcError(err)
	}
	s.rm.applied(ctx, gen, nil, req.GetId())
	s.logWrite(ctx, "delete", req.GetId())
	return &eventspb.DeleteEventResponse{Success: true}, nil
}

func (s *eventServer) ListEvents(ctx context.Context, req *eventspb.ListEventsRequest) (*eventspb.ListEventsResponse, error) {
	q, err := adminQueryFrom(req)
	if err != nil {
		return nil, s.grpcError(err)
	}
	now := s.now()
	if q.isDefault() {
		return s.rm.firstPage(now), nil
	}
	t := now
	if !q.at.IsZero() {
		t = q.at
	}
	events, next, _ := s.rm.snapshot().adminPage(t, q)
	return listResponse(events, next), nil
}

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
		at, err := fromTimestamp("at", req.GetAt())
		if err == nil {
			err = checkTime("at", at)
		}
		if err != nil {
			return q, err
		}
		q.at = at
	}
	q.filter = defaultFilter
	if q.statuses != 0 || len(q.labels) > 0 || q.state != "" || !q.at.IsZero() {
		sum := sha256.Sum256(fmt.Appendf(nil, "%d|%s|%s|%d", q.statuses, strings.Join(slices.Sorted(slices.Values(q.labels)), ","), q.state, q.at.UnixNano()))
		q.filter = hex.EncodeToString(sum[:8])
	}
	if tok := req.GetPageToken(); tok != "" {
		k, err := parsePageToken(tok)
		if err != nil {
			return q, err
		}
		if k.Filter != q.filter {
			return q, &fieldError{"page_token", "was issued for other filters; send the same status, labels, state and at"}
		}
		q.after = k
	}
	return q, nil
}

// logWrite records an admin write: who (key id), what, and which event.
func (s *eventServer) logWrite(ctx context.Context, action, id string) {
	s.log.Info("admin write", "action", action, "event_id", id, "key_id", callerKeyID(ctx))
}

// callerKeyID returns the id of the key that authenticated the call.
func callerKeyID(ctx context.Context) string {
	if k, ok := ctx.Value(keyContextKey{}).(*keyEntry); ok {
		return k.ID
	}
	return ""
}

func (s *eventServer) ListEventRevisions(ctx context.Context, req *eventspb.ListEventRevisionsRequest) (*eventspb.ListEventRevisionsResponse, error) {
	if err := checkID(req.GetEventId()); err != nil {
		return nil, s.grpcError(&fieldError{"event_id", err.(*fieldError).Reason})
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, s.grpcError(err)
	}
	var before int64
	if tok := req.GetPageToken(); tok != "" {
		var c auditCursor
		if err := decodeToken(tok, &c); err != nil || c.EventID != req.GetEventId() {
			return nil, s.grpcError(&fieldError{"page_token", "is not a token this server issued for this event"})
		}
		before = c.Revision
	}
	revs, err := s.st.Revisions(ctx, req.GetEventId(), before, size+1)
	if err != nil {
		return nil, s.grpcError(err)
	}
	resp := &eventspb.ListEventRevisionsResponse{}
	if len(revs) > size {
		revs = revs[:size]
		last := revs[size-1]
		resp.NextPageToken = encodeToken(auditCursor{EventID: last.EventID, Revision: last.Revision})
	}
	resp.Revisions = revisionsToProto(revs)
	return resp, nil
}

func (s *eventServer) ListAuditLog(ctx context.Context, req *eventspb.ListAuditLogRequest) (*eventspb.ListAuditLogResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, s.grpcError(err)
	}
	var since time.Time
	if req.Since != nil {
		if since, err = fromTimestamp("since", req.GetSince()); err == nil {
			err = checkTime("since", since)
		}
		if err != nil {
			return nil, s.grpcError(err)
		}
	}
	filter := fmt.Sprintf("%d|%s", since.UnixNano(), req.GetKeyId())
	var after *auditCursor
	if tok := req.GetPageToken(); tok != "" {
		var c auditCursor
		if err := decodeToken(tok, &c); err != nil || c.Filter != filter {
			return nil, s.grpcError(&fieldError{"page_token", "is not a token this server issued for these filters"})
		}
		after = &c
	}
	revs, err := s.st.AuditLog(ctx, since, req.GetKeyId(), after, size+1)
	if err != nil {
		return nil, s.grpcError(err)
	}
	resp := &eventspb.ListAuditLogResponse{}
	if len(revs) > size {
		revs = revs[:size]
		last := revs[size-1]
		resp.NextPageToken = encodeToken(auditCursor{At: last.At.UnixNano(), EventID: last.EventID, Revision: last.Revision, Filter: filter})
	}
	resp.Revisions = revisionsToProto(revs)
	return resp, nil
}

func (s *eventServer) RestoreEvent(ctx context.Context, req *eventspb.RestoreEventRequest) (*eventspb.RestoreEventResponse, error) {
	if err := checkID(req.GetEventId()); err != nil {
		return nil, s.grpcError(&fieldError{"event_id", err.(*fieldError).Reason})
	}
	if req.GetRevision() < 1 {
		return nil, s.grpcError(&fieldError{"revision", "must be 1 or more"})
	}
	e, gen, err := s.st.RestoreEvent(ctx, req.GetEventId(), req.GetRevision(), req.GetEtag(), s.now().UTC(), callerKeyID(ctx))
	if errors.Is(err, errNoRevision) {
		return nil, status.Errorf(codes.NotFound, "event %s has no revision %d", req.GetEventId(), req.GetRevision())
	}
	if err != nil {
		return nil, s.grpcError(err)
	}
	s.rm.applied(ctx, gen, &e, "")
	s.logWrite(ctx, "restore", e.ID)
	return &eventspb.RestoreEventResponse{Event: s.toProtoNow(e)}, nil
}

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

func encodeToken(v any) string { return base64.RawURLEncoding.EncodeToString(mustJSON(v)) }

func decodeToken(tok string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func revisionsToProto(revs []revision) []*eventspb.Revision {
	out := make([]*eventspb.Revision, len(revs))
	for i, r := range revs {
		out[i] = &eventspb.Revision{EventId: r.EventID, Revision: r.Revision, Action: r.Action, KeyId: r.KeyID,
			Time: timestamppb.New(r.At), Event: toProto(r.Event, view{})}
	}
	return out
}

// grpcError maps an error to a gRPC status: a *fieldError to INVALID_ARGUMENT naming the
// field, errNotFound to NOT_FOUND, and anything else to INTERNAL with a generic message,
// the detail going only to the log.
func (s *eventServer) grpcError(err error) error {
	var fe *fieldError
	switch {
	case errors.As(err, &fe):
		st, derr := status.New(codes.InvalidArgument, fe.Error()).WithDetails(&errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: fe.Field, Description: fe.Reason}},
		})
		if derr != nil {
			return status.Error(codes.InvalidArgument, fe.Error())
		}
		return st.Err()
	case errors.Is(err, errNotFound):
		return status.Error(codes.NotFound, "event not found")
	case errors.Is(err, errNoRevision):
		return status.Error(codes.NotFound, "revision not found")
	case errors.Is(err, errStale):
		return status.Error(codes.Aborted, err.Error()+"; read it again and retry")
	case errors.Is(err, errRequestReused):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, errBusy):
		s.log.Warn("write timed out waiting for the database lock", "err", err)
		return status.Error(codes.Unavailable, "the database is busy; retry shortly")
	case errors.Is(err, errFull):
		s.log.Error("database full", "err", err)
		return status.Error(codes.ResourceExhausted, "storage is full; the write was not saved")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	s.log.Error("internal error", "err", err)
	return status.Error(codes.Internal, "internal error")
}

// eventFields are the admin-supplied fields of a create or update request.
type eventFields struct {
	title, description string
	start, end         *timestamppb.Timestamp
	rewards            string
	preview            *timestamppb.Timestamp
	recurrence         *eventspb.Recurrence
	priority           int32
	labels             []string
	state              eventspb.EventState
}

// eventFromFields builds an event from the fields of a create or update. Only the
// timestamps and enums are checked here; the caller validates the event once it is complete.
func eventFromFields(f eventFields) (Event, error) {
	e := Event{Title: f.title, Description: f.description, Rewards: f.rewards, Priority: f.priority, Labels: f.labels}
	var err error
	if e.Start, err = fromTimestamp("start_time", f.start); err != nil {
		return Event{}, err
	}
	if e.End, err = fromTimestamp("end_time", f.end); err != nil {
		return Event{}, err
	}
	if e.Preview, err = fromTimestamp("preview_time", f.preview); err != nil {
		return Event{}, err
	}
	switch f.state {
	case eventspb.EventState_EVENT_STATE_UNSPECIFIED, eventspb.EventState_EVENT_STATE_PUBLISHED:
		e.State = statePublished
	case eventspb.EventState_EVENT_STATE_DRAFT:
		e.State = stateDraft
	default:
		return Event{}, &fieldError{"state", fmt.Sprintf("unknown state %v", f.state)}
	}
	if r := f.recurrence; r != nil {
		e.Recurrence = Recurrence{Interval: int(r.GetInterval()), TimeZone: r.GetTimeZone(), Count: int(r.GetCount())}
		switch r.GetUnit() {
		case eventspb.Recurrence_UNIT_UNSPECIFIED:
			e.Recurrence.Unit = "" // validate refuses other recurrence fields without a unit
		case eventspb.Recurrence_HOURLY, eventspb.Recurrence_DAILY, eventspb.Recurrence_WEEKLY, eventspb.Recurrence_MONTHLY:
			e.Recurrence.Unit = r.GetUnit().String()
		default:
			return Event{}, &fieldError{"recurrence.unit", fmt.Sprintf("unknown unit %v", r.GetUnit())}
		}
		if e.Recurrence.Until, err = fromTimestamp("recurrence.until", r.GetUntil()); err != nil {
			return Event{}, err
		}
	}
	return e, nil
}

// fromTimestamp converts a protobuf timestamp to UTC time; nil gives the zero time, which
// validate reports as missing.
func fromTimestamp(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, &fieldError{field, "is not a valid timestamp"}
	}
	return ts.AsTime(), nil
}

// statusToProto maps statuses to the API's enum; the zero view (a revision's event) maps to
// UNSPECIFIED.
var statusToProto = map[eventStatus]eventspb.EventStatus{
	statusUpcoming: eventspb.EventStatus_EVENT_STATUS_UPCOMING,
	statusActive:   eventspb.EventStatus_EVENT_STATUS_ACTIVE,
	statusEnded:    eventspb.EventStatus_EVENT_STATUS_ENDED,
}

// toProto converts e for an admin, with its status and next start as in v.
func toProto(e Event, v view) *eventspb.Event {
	p := &eventspb.Event{
		Id: e.ID, Title: e.Title, Description: e.Description,
		StartTime: timestamppb.New(e.Start), EndTime: timestamppb.New(e.End),
		Rewards:   e.Rewards,
		CreatedAt: timestamppb.New(e.CreatedAt), UpdatedAt: timestamppb.New(e.UpdatedAt),
		Etag:     e.ETag(),
		Priority: e.Priority,
		Labels:   e.Labels,
		State:    eventspb.EventState_EVENT_STATE_PUBLISHED,
		Status:   statusToProto[v.status],
	}
	if e.State == stateDraft {
		p.State = eventspb.EventState_EVENT_STATE_DRAFT
	}
	if !e.Preview.IsZero() {
		p.PreviewTime = timestamppb.New(e.Preview)
	}
	if !v.nextStart.IsZero() {
		p.NextStartTime = timestamppb.New(v.nextStart)
	}
	if r := e.Recurrence; r.repeats() {
		p.Recurrence = &eventspb.Recurrence{Interval: int32(r.Interval), TimeZone: r.TimeZone, Count: int32(r.Count),
			Unit: eventspb.Recurrence_Unit(eventspb.Recurrence_Unit_value[r.Unit])}
		if !r.Until.IsZero() {
			p.Recurrence.Until = timestamppb.New(r.Until)
		}
	}
	return p
}

// keyContextKey carries the caller's *keyEntry in a gRPC call's context.
type keyContextKey struct{}

// authorizeRPC checks the key in the call's metadata against the role the method needs and
// returns a context carrying the key. It returns a status error: UNAUTHENTICATED for a
// missing, unknown, revoked or expired key, PERMISSION_DENIED for a key of another role,
// RESOURCE_EXHAUSTED for an address that failed too often.
func authorizeRPC(ctx context.Context, g *guard, method string) (context.Context, *keyEntry, error) {
	need := rpcRole(method)
	if need == rolePublic {
		return ctx, nil, nil
	}
	var addr string
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = remoteIP(p.Addr.String())
	}
	md, _ := metadata.FromIncomingContext(ctx)
	k, err := g.authorize(ctx, addr, md.Get("authorization"), need)
	if err != nil {
		code := codes.Unauthenticated
		switch err.kind {
		case authForbidden:
			code = codes.PermissionDenied
		case authThrottled:
			code = codes.ResourceExhausted
		}
		return ctx, k, status.Error(code, err.msg)
	}
	return context.WithValue(ctx, keyContextKey{}, k), k, nil
}

func unaryInterceptor(g *guard, log *logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ctx, k, err := authorizeRPC(ctx, g, info.FullMethod)
		var resp any
		if err == nil {
			resp, err = handler(ctx, req)
		}
		logRPC(log, info.FullMethod, k, err, start)
		return resp, err
	}
}

func streamInterceptor(g *guard, log *logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		ctx, k, err := authorizeRPC(ss.Context(), g, info.FullMethod)
		if err == nil {
			err = handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
		}
		logRPC(log, info.FullMethod, k, err, start)
		return err
	}
}

// contextStream is a ServerStream whose Context carries the caller's key.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

func logRPC(log *logger, method string, k *keyEntry, err error, start time.Time) {
	var keyID string
	if k != nil {
		keyID = k.ID
	}
	end := time.Now()
	log.access(end, "grpc", "POST", method, status.Code(err).String(), end.Sub(start), keyID)
}
