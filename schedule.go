package main

import (
	"fmt"
	"sync"
	"time"
	_ "time/tzdata" // time zones work in an empty container, without /usr/share/zoneinfo
)

// Recurrence repeats an event. Occurrence k starts at the event's start stepped k times
// interval units; each lasts as long as the event (End - Start).
type Recurrence struct {
	Interval int       // how many units between occurrences, at least 1
	Unit     string    // HOURLY, DAILY, WEEKLY or MONTHLY; "" means the event does not repeat
	TimeZone string    // IANA name whose wall clock DAILY, WEEKLY and MONTHLY steps follow; "" is UTC
	Until    time.Time // no occurrence starts after this; zero means no limit
	Count    int       // how many occurrences there are; 0 means no limit
}

func (r Recurrence) repeats() bool { return r.Unit != "" }

// The recurrence units.
const (
	unitHourly  = "HOURLY"
	unitDaily   = "DAILY"
	unitWeekly  = "WEEKLY"
	unitMonthly = "MONTHLY"
)

const maxInterval = 1000

// validate checks r for an event lasting d, and fills in the default time zone.
func (r *Recurrence) validate(d time.Duration, start time.Time) error {
	if !r.repeats() {
		if r.Interval != 0 || r.TimeZone != "" || !r.Until.IsZero() || r.Count != 0 {
			return &fieldError{"recurrence.unit", "is required when any recurrence field is set"}
		}
		return nil
	}
	switch r.Unit {
	case unitHourly, unitDaily, unitWeekly, unitMonthly:
	default:
		return &fieldError{"recurrence.unit", fmt.Sprintf("must be HOURLY, DAILY, WEEKLY or MONTHLY, got %q", r.Unit)}
	}
	if r.Interval < 1 || r.Interval > maxInterval {
		return &fieldError{"recurrence.interval", fmt.Sprintf("must be between 1 and %d, got %d", maxInterval, r.Interval)}
	}
	if r.TimeZone == "" {
		r.TimeZone = "UTC"
	}
	// "Local" loads too, but means whatever zone the host computing it is in.
	if loc, err := time.LoadLocation(r.TimeZone); err != nil || r.TimeZone == "Local" || loc.String() != r.TimeZone {
		return &fieldError{"recurrence.time_zone", fmt.Sprintf("unknown time zone %q; want an IANA name such as Europe/Paris", r.TimeZone)}
	}
	if r.Count < 0 {
		return &fieldError{"recurrence.count", "must not be negative"}
	}
	// Every occurrence must start before maxEventTime, like any event; working in seconds
	// keeps a huge count from overflowing a Duration on the way.
	if r.Count > 0 && start.Unix()+int64(r.Count-1)*int64(r.Interval)*r.nominalStepSeconds() >= maxEventTime.Unix() {
		return &fieldError{"recurrence.count", fmt.Sprintf("the last occurrence would start after %d", maxEventTime.Year())}
	}
	if !r.Until.IsZero() {
		if err := checkTime("recurrence.until", r.Until); err != nil {
			return err
		}
		if r.Until.Before(start) {
			return &fieldError{"recurrence.until", "must not be before start_time"}
		}
	}
	if step := r.minStep(); d >= step {
		return &fieldError{"recurrence", fmt.Sprintf("occurrences would overlap: the event lasts %v, but occurrences can be %v apart", d, step)}
	}
	return nil
}

// clockChangeMargin is the most a wall-clock day can be shorter than 24 hours. Most zones
// move their clocks by an hour; Antarctica/Troll moves them by two.
const clockChangeMargin = 3 * time.Hour

// minStep is the shortest real time between two occurrences: wall-clock days can be short
// by a clock change, and n months are at least 28 + 30(n-1) days (February first).
func (r Recurrence) minStep() time.Duration {
	n := time.Duration(r.Interval)
	day := 24 * time.Hour
	switch r.Unit {
	case unitHourly:
		return n * time.Hour
	case unitDaily:
		return n*day - clockChangeMargin
	case unitWeekly:
		return n*7*day - clockChangeMargin
	default:
		return (28+30*(n-1))*day - clockChangeMargin
	}
}

// nominalStepSeconds is one unit's nominal length, for estimates.
func (r Recurrence) nominalStepSeconds() int64 {
	switch r.Unit {
	case unitHourly:
		return 3600
	case unitDaily:
		return 86400
	case unitWeekly:
		return 7 * 86400
	default:
		return 28 * 86400 // the shortest month: an estimate of how far occurrences reach
	}
}

// zones caches loaded time zones, since time.LoadLocation parses the zone data on every
// call and a snapshot builds a schedule for every recurring event. The read model owns
// one; a nil *zones loads every time.
type zones struct {
	mu   sync.Mutex
	locs map[string]*time.Location
}

func (z *zones) load(name string) (*time.Location, error) {
	if z == nil {
		return time.LoadLocation(name)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if loc, ok := z.locs[name]; ok {
		return loc, nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	if z.locs == nil {
		z.locs = map[string]*time.Location{}
	}
	z.locs[name] = loc
	return loc, nil
}

// schedule answers questions about an event's occurrences. A non-repeating event has one.
type schedule struct {
	rec      Recurrence
	start    time.Time     // occurrence 0
	duration time.Duration // of every occurrence
	lead     time.Duration // how long before its start each occurrence is previewed; 0 for none
	loc      *time.Location
	wall     time.Time // start in loc, whose date and clock the steps advance
	last     int       // index of the last occurrence, or -1 when unbounded
}

// newSchedule works out e's schedule, loading its time zone from z.
func newSchedule(e *Event, z *zones) schedule {
	loc := time.UTC
	if e.Recurrence.repeats() {
		var err error
		if loc, err = z.load(e.Recurrence.TimeZone); err != nil {
			loc = time.UTC // validated on write; a zone that vanished from tzdata falls back
		}
	}
	return scheduleIn(e, loc)
}

// scheduleIn works out e's schedule with its recurrence stepping loc's wall clock.
func scheduleIn(e *Event, loc *time.Location) schedule {
	s := schedule{rec: e.Recurrence, start: e.Start, duration: e.End.Sub(e.Start), last: 0}
	if !e.Preview.IsZero() {
		s.lead = e.Start.Sub(e.Preview)
	}
	if !s.rec.repeats() {
		return s
	}
	s.loc, s.wall = loc, e.Start.In(loc)
	s.last = -1
	if s.rec.Count > 0 {
		s.last = s.rec.Count - 1
	}
	if !s.rec.Until.IsZero() {
		k := s.indexAt(s.rec.Until)
		if s.last < 0 || k < s.last {
			s.last = k
		}
	}
	return s
}

// startOf returns the start of occurrence k (k >= 0, not checked against the limits).
func (s *schedule) startOf(k int) time.Time {
	if k == 0 || !s.rec.repeats() {
		return s.start
	}
	n := k * s.rec.Interval
	w := s.wall
	switch s.rec.Unit {
	case unitHourly:
		// Hours are counted in real time: a wall-clock hour can be missing or repeated.
		return s.start.Add(time.Duration(n) * time.Hour)
	case unitDaily:
		return wallTime(w.Year(), w.Month(), w.Day()+n, w, s.loc)
	case unitWeekly:
		return wallTime(w.Year(), w.Month(), w.Day()+7*n, w, s.loc)
	default:
		// The same day of the month, or the month's last day when it is shorter: a
		// festival on the 31st falls on the 28th (or 29th) in February.
		first := time.Date(w.Year(), w.Month()+time.Month(n), 1, 0, 0, 0, 0, time.UTC)
		day := min(w.Day(), daysIn(first.Year(), first.Month()))
		return wallTime(first.Year(), first.Month(), day, w, s.loc)
	}
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// wallTime returns the instant at which loc's clocks show the date y-m-d and the clock time
// of w. A clock time that does not exist that day (clocks went forward) moves forward by
// the jump; one that exists twice (clocks went back) is the first.
func wallTime(y int, m time.Month, d int, w time.Time, loc *time.Location) time.Time {
	naive := time.Date(y, m, d, w.Hour(), w.Minute(), w.Second(), w.Nanosecond(), time.UTC)
	// The offsets in force a day either side cover any one transition.
	_, before := naive.Add(-24 * time.Hour).In(loc).Zone()
	_, after := naive.Add(24 * time.Hour).In(loc).Zone()
	var found time.Time
	for _, off := range []int{before, after} {
		t := naive.Add(-time.Duration(off) * time.Second)
		if _, o := t.In(loc).Zone(); o == off && (found.IsZero() || t.Before(found)) {
			found = t
		}
	}
	if found.IsZero() {
		// In the gap: read the clock time with the offset from before the jump.
		found = naive.Add(-time.Duration(before) * time.Second)
	}
	return found.UTC()
}

// exists reports whether occurrence k is within the recurrence's limits.
func (s *schedule) exists(k int) bool {
	return k >= 0 && (s.last < 0 || k <= s.last)
}

// indexAt returns the index of the last occurrence starting at or before t, ignoring the
// limits, or -1 when t is before the first.
func (s *schedule) indexAt(t time.Time) int {
	if t.Before(s.start) {
		return -1
	}
	if !s.rec.repeats() {
		return 0
	}
	// Past the last occurrence, nothing changes any more: answer for the last one instead
	// of stepping through centuries.
	if s.last >= 0 {
		if lastStart := s.startOf(s.last); !t.Before(lastStart) {
			return s.last
		}
	}
	// Estimate from the nominal step, then correct: clock changes and month lengths move
	// the real starts by less than one step.
	var k int
	switch s.rec.Unit {
	case unitMonthly:
		tw := t.In(s.loc)
		months := (tw.Year()-s.wall.Year())*12 + int(tw.Month()-s.wall.Month())
		k = months / s.rec.Interval
	default:
		k = int((t.Unix() - s.start.Unix()) / (s.rec.nominalStepSeconds() * int64(s.rec.Interval)))
	}
	for k > 0 && s.startOf(k).After(t) {
		k--
	}
	for !s.startOf(k + 1).After(t) {
		k++
	}
	return k
}

// eventStatus is where an event stands at some instant.
type eventStatus int

const (
	statusUpcoming eventStatus = iota + 1
	statusActive
	statusEnded
)

var statusNames = map[eventStatus]string{statusUpcoming: "upcoming", statusActive: "active", statusEnded: "ended"}

func (s eventStatus) String() string { return statusNames[s] }

// view is an event as it stands at one instant.
type view struct {
	status     eventStatus
	visible    bool      // players may read it by id: published, and previewed or started once
	listed     bool      // players' lists show it: active, or upcoming and previewed
	start, end time.Time // the occurrence shown: the active one, else the next, else the last
	occurrence int       // its index
	nextStart  time.Time // the first start after the instant; zero when there is none
	until      time.Time // the next instant anything above changes; forever when nothing will
}

// viewAt works out how e (with schedule s) stands at t. Between two occurrences a
// recurring event is upcoming, showing the next one; it is ended only when none is left.
func (e *Event) viewAt(s *schedule, t time.Time) view {
	v := view{until: forever}
	k := s.indexAt(t) // the last occurrence started
	if k >= 0 && !s.exists(k) {
		k = s.last
	}
	next := k + 1
	if !s.exists(next) {
		next = -1
	}
	if next >= 0 {
		v.nextStart = s.startOf(next)
	}
	published := e.State != stateDraft
	switch {
	case k >= 0 && t.Before(s.startOf(k).Add(s.duration)):
		v.status, v.occurrence = statusActive, k
		v.until = s.startOf(k).Add(s.duration)
		v.listed = published
	case next >= 0:
		v.status, v.occurrence = statusUpcoming, next
		previewFrom := v.nextStart.Add(-s.lead)
		v.listed = published && s.lead > 0 && !t.Before(previewFrom)
		if s.lead > 0 && t.Before(previewFrom) {
			v.until = previewFrom
		}
	default: // the last occurrence has ended
		v.status, v.occurrence = statusEnded, k
	}
	if next >= 0 {
		v.until = minTime(v.until, v.nextStart)
	}
	v.start = s.startOf(v.occurrence)
	v.end = v.start.Add(s.duration)
	firstSeen := s.start.Add(-s.lead)
	v.visible = published && !t.Before(firstSeen)
	if published && !v.visible {
		v.until = minTime(v.until, firstSeen)
	}
	return v
}

// inZone returns a PLAYER_LOCAL event as it is for a player in loc: its times, which are
// wall-clock times written as UTC, read on loc's clock, and its recurrence stepping that
// clock. The wall clock rules, so across a clock change an occurrence may last an hour
// more or less in real time.
func (e *Event) inZone(loc *time.Location) Event {
	c := *e
	c.Start, c.End = onClock(e.Start, loc), onClock(e.End, loc)
	if !e.Preview.IsZero() {
		c.Preview = onClock(e.Preview, loc)
	}
	if !e.Recurrence.Until.IsZero() {
		c.Recurrence.Until = onClock(e.Recurrence.Until, loc)
	}
	c.Recurrence.TimeZone = loc.String()
	return c
}

// onClock returns the instant at which loc's clocks show the date and time t shows in UTC.
func onClock(t time.Time, loc *time.Location) time.Time {
	return wallTime(t.Year(), t.Month(), t.Day(), t, loc)
}

// The extreme offsets in use on Earth: UTC+14 (Kiribati) sees a wall-clock time first,
// UTC-12 (Baker Island) last. A PLAYER_LOCAL event's times span that much more.
const (
	earliestOffset = 14 * time.Hour
	latestOffset   = 12 * time.Hour
)

// seriesEnd is when the last occurrence ends, or forever for an unbounded recurrence.
func (s *schedule) seriesEnd() time.Time {
	if s.last < 0 {
		return forever
	}
	return s.startOf(s.last).Add(s.duration)
}

// forever stands for "no boundary ahead".
var forever = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
