package main

import (
	"cmp"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"liveops/eventspb"
)

// This file converts between events and the gRPC API's messages.

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
	audience           *eventspb.Audience
	rolloutPercent     int32
	timeMode           eventspb.TimeMode
	localizations      map[string]*eventspb.Localization
}

// eventFromFields builds an event from the fields of a create or update. Only the
// timestamps and enums are checked here; the caller validates the event once it is complete.
func eventFromFields(f eventFields) (Event, error) {
	e := Event{Title: f.title, Description: f.description, Rewards: f.rewards, Priority: f.priority, Labels: f.labels,
		Audience: audienceFromProto(f.audience), RolloutPercent: f.rolloutPercent}
	var errs fieldErrors
	var err error
	e.Start, err = fromTimestamp("start_time", f.start)
	errs.add(err)
	e.End, err = fromTimestamp("end_time", f.end)
	errs.add(err)
	e.Preview, err = fromTimestamp("preview_time", f.preview)
	errs.add(err)
	switch f.state {
	case eventspb.EventState_EVENT_STATE_UNSPECIFIED, eventspb.EventState_EVENT_STATE_PUBLISHED:
		e.State = statePublished
	case eventspb.EventState_EVENT_STATE_DRAFT:
		e.State = stateDraft
	default:
		errs.add(&fieldError{"state", fmt.Sprintf("unknown state %v", f.state)})
	}
	switch f.timeMode {
	case eventspb.TimeMode_TIME_MODE_UNSPECIFIED, eventspb.TimeMode_TIME_MODE_UTC:
		e.TimeMode = timeModeUTC
	case eventspb.TimeMode_TIME_MODE_PLAYER_LOCAL:
		e.TimeMode = timeModePlayerLocal
	default:
		errs.add(&fieldError{"time_mode", fmt.Sprintf("unknown time mode %v; want TIME_MODE_UTC or TIME_MODE_PLAYER_LOCAL", f.timeMode)})
	}
	if len(f.localizations) > 0 {
		e.Localizations = make(map[string]Localization, len(f.localizations))
		for tag, l := range f.localizations {
			e.Localizations[tag] = Localization{Title: l.GetTitle(), Description: l.GetDescription()}
		}
	}
	if r := f.recurrence; r != nil {
		e.Recurrence = Recurrence{Interval: int(r.GetInterval()), TimeZone: r.GetTimeZone(), Count: int(r.GetCount())}
		switch r.GetUnit() {
		case eventspb.Recurrence_UNIT_UNSPECIFIED:
			e.Recurrence.Unit = "" // validate refuses other recurrence fields without a unit
		case eventspb.Recurrence_HOURLY, eventspb.Recurrence_DAILY, eventspb.Recurrence_WEEKLY, eventspb.Recurrence_MONTHLY:
			e.Recurrence.Unit = r.GetUnit().String()
		default:
			errs.add(&fieldError{"recurrence.unit", fmt.Sprintf("unknown unit %v", r.GetUnit())})
		}
		e.Recurrence.Until, err = fromTimestamp("recurrence.until", r.GetUntil())
		errs.add(err)
	}
	if len(errs) > 0 {
		return Event{}, errs
	}
	return e, nil
}

func audienceFromProto(a *eventspb.Audience) *Audience {
	if a == nil {
		return nil
	}
	return &Audience{Platforms: a.GetPlatforms(), MinVersion: a.GetMinVersion(), MaxVersion: a.GetMaxVersion(),
		Countries: a.GetCountries(), Languages: a.GetLanguages(), Exclude: audienceFromProto(a.GetExclude())}
}

func audienceToProto(a *Audience) *eventspb.Audience {
	if a == nil {
		return nil
	}
	return &eventspb.Audience{Platforms: a.Platforms, MinVersion: a.MinVersion, MaxVersion: a.MaxVersion,
		Countries: a.Countries, Languages: a.Languages, Exclude: audienceToProto(a.Exclude)}
}

// fromTimestamp converts a protobuf timestamp to UTC time; nil gives the zero time, which
// validate reports as missing. A timestamp outside the range events may use is refused
// here with the same words as any other spelling of that time.
func fromTimestamp(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, &fieldError{field, "is not a valid timestamp"}
	}
	t := ts.AsTime()
	if t.IsZero() {
		// 0001-01-01T00:00:00Z is a real instant to protobuf, but the zero time to Go.
		return time.Time{}, &fieldError{field, fmt.Sprintf("must be between %d and %d, got %s", minEventTime.Year(), maxEventTime.Year(), t.Format(time.RFC3339))}
	}
	return t, checkTime(field, t)
}

// statusToProto maps statuses to the API's enum; the zero view (a revision's event) maps to
// UNSPECIFIED.
var statusToProto = map[eventStatus]eventspb.EventStatus{
	statusUpcoming: eventspb.EventStatus_EVENT_STATUS_UPCOMING,
	statusActive:   eventspb.EventStatus_EVENT_STATUS_ACTIVE,
	statusEnded:    eventspb.EventStatus_EVENT_STATUS_ENDED,
}

// toProto converts e for an admin, with its status and next start as in v, loading its
// time zone from z for its span.
func toProto(e Event, v view, z *zones) *eventspb.Event {
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
		Audience: audienceToProto(e.Audience), RolloutPercent: e.RolloutPercent,
		TimeMode: eventspb.TimeMode_TIME_MODE_UTC,
	}
	if e.TimeMode == timeModePlayerLocal {
		p.TimeMode = eventspb.TimeMode_TIME_MODE_PLAYER_LOCAL
	}
	if len(e.Localizations) > 0 {
		p.Localizations = make(map[string]*eventspb.Localization, len(e.Localizations))
		for tag, l := range e.Localizations {
			p.Localizations[tag] = &eventspb.Localization{Title: l.Title, Description: l.Description}
		}
	}
	first, last := span(&e, z)
	p.FirstStartTime = timestamppb.New(first)
	if !last.IsZero() {
		p.LastEndTime = timestamppb.New(last)
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

// span returns the first instant anywhere on Earth e starts and the last it is active, or
// a zero last when it repeats forever. A PLAYER_LOCAL event's wall-clock times come first
// at UTC+14 and last at UTC-12; its recurrence steps the wall clock, as it does in UTC.
func span(e *Event, z *zones) (first, last time.Time) {
	sched := newSchedule(e, z)
	first, last = e.Start, sched.seriesEnd()
	if e.TimeMode == timeModePlayerLocal {
		first, last = first.Add(-earliestOffset), last.Add(latestOffset)
	}
	if sched.last < 0 {
		last = time.Time{}
	}
	return first, last
}

// listResponse is a page of ListEvents as of t.
func listResponse(t time.Time, events []shown, nextPageToken string, z *zones) *eventspb.ListEventsResponse {
	resp := &eventspb.ListEventsResponse{Events: make([]*eventspb.Event, len(events)),
		NextPageToken: nextPageToken, ServerTime: timestamppb.New(t)}
	for i, s := range events {
		resp.Events[i] = toProto(s.e.Event, s.v, z)
	}
	return resp
}

// shownToProto converts an event as one player is shown it: the admin's view, but with the
// times of the occurrence shown, at that player's instants, as GET /events gives them, and
// the text in the locale the player gets beside the default text.
func shownToProto(sh shown, z *zones, defaultLocale string) *eventspb.ShownEvent {
	e := &sh.e.Event
	p := toProto(*e, sh.v, z)
	p.StartTime, p.EndTime = timestamppb.New(sh.v.start), timestamppb.New(sh.v.end)
	if !e.Preview.IsZero() {
		p.PreviewTime = timestamppb.New(sh.v.start.Add(-e.Start.Sub(e.Preview)))
	}
	out := &eventspb.ShownEvent{Event: p, Locale: defaultLocale, Title: e.Title, Description: e.Description}
	if l, ok := e.Localizations[sh.locale]; ok {
		// A localization may translate only one of the two, as players get it (toJSON).
		out.Locale, out.Title, out.Description = sh.locale, cmp.Or(l.Title, e.Title), cmp.Or(l.Description, e.Description)
	}
	return out
}

func revisionsToProto(revs []revision, z *zones) []*eventspb.Revision {
	out := make([]*eventspb.Revision, len(revs))
	for i, r := range revs {
		out[i] = &eventspb.Revision{EventId: r.EventID, Revision: r.Revision, Action: r.Action, KeyId: r.KeyID,
			KeyName: r.KeyName, Time: timestamppb.New(r.At), Event: toProto(r.Event, view{}, z), TraceId: r.TraceID}
	}
	return out
}
