package main

import (
	"testing"
	"time"
)

// utc parses an RFC 3339 time; the test tables below are written in UTC, hand-checked
// against the zones' rules for 2026-2028.
func utc(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v.UTC()
}

func TestOccurrences(t *testing.T) {
	tests := []struct {
		name  string
		start string // the first occurrence, UTC
		rec   Recurrence
		want  []string // occurrences 0, 1, 2, ... in UTC
	}{
		{"daily 18:00 Paris across spring forward (29 Mar 2026)", "2026-03-27T17:00:00Z",
			Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "Europe/Paris"},
			[]string{"2026-03-27T17:00:00Z", "2026-03-28T17:00:00Z", "2026-03-29T16:00:00Z", "2026-03-30T16:00:00Z"}},
		{"daily 18:00 Paris across fall back (25 Oct 2026)", "2026-10-24T16:00:00Z",
			Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "Europe/Paris"},
			[]string{"2026-10-24T16:00:00Z", "2026-10-25T17:00:00Z", "2026-10-26T17:00:00Z"}},
		{"daily 02:30 Paris: a missing clock time moves forward", "2026-03-28T01:30:00Z",
			Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "Europe/Paris"},
			// 29 Mar 02:30 does not exist: 03:30 CEST, 01:30Z. 30 Mar 02:30 CEST is 00:30Z.
			[]string{"2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"}},
		{"daily 02:30 Paris: a repeated clock time is the first", "2026-10-24T00:30:00Z",
			Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "Europe/Paris"},
			// 25 Oct 02:30 happens at 00:30Z (CEST) and 01:30Z (CET): the first.
			[]string{"2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
		{"weekly 09:00 New York across spring forward (8 Mar 2026)", "2026-03-01T14:00:00Z",
			Recurrence{Interval: 1, Unit: unitWeekly, TimeZone: "America/New_York"},
			[]string{"2026-03-01T14:00:00Z", "2026-03-08T13:00:00Z", "2026-03-15T13:00:00Z"}},
		{"daily 02:15 New York: a missing clock time moves forward", "2026-03-07T07:15:00Z",
			Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "America/New_York"},
			[]string{"2026-03-07T07:15:00Z", "2026-03-08T07:15:00Z", "2026-03-09T06:15:00Z"}},
		{"daily 01:30 New York: a repeated clock time is the first (1 Nov 2026)", "2026-10-31T05:30:00Z",
			Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "America/New_York"},
			[]string{"2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"}},
		{"every 2 days in UTC", "2026-01-01T10:00:00Z",
			Recurrence{Interval: 2, Unit: unitDaily},
			[]string{"2026-01-01T10:00:00Z", "2026-01-03T10:00:00Z", "2026-01-05T10:00:00Z"}},
		{"hourly counts real hours across a clock change", "2026-03-29T00:30:00Z",
			Recurrence{Interval: 1, Unit: unitHourly, TimeZone: "Europe/Paris"},
			[]string{"2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:30:00Z"}},
		{"monthly on the 31st clamps to the month's end", "2026-01-31T10:00:00Z",
			Recurrence{Interval: 1, Unit: unitMonthly},
			[]string{"2026-01-31T10:00:00Z", "2026-02-28T10:00:00Z", "2026-03-31T10:00:00Z", "2026-04-30T10:00:00Z"}},
		{"monthly on the 31st in a leap year", "2028-01-31T10:00:00Z",
			Recurrence{Interval: 1, Unit: unitMonthly},
			[]string{"2028-01-31T10:00:00Z", "2028-02-29T10:00:00Z", "2028-03-31T10:00:00Z"}},
		{"every 2 months from 31 Dec, across a year", "2026-12-31T10:00:00Z",
			Recurrence{Interval: 2, Unit: unitMonthly},
			[]string{"2026-12-31T10:00:00Z", "2027-02-28T10:00:00Z", "2027-04-30T10:00:00Z"}},
		{"monthly 18:00 Paris keeps the clock time across DST", "2026-02-15T17:00:00Z",
			Recurrence{Interval: 1, Unit: unitMonthly, TimeZone: "Europe/Paris"},
			[]string{"2026-02-15T17:00:00Z", "2026-03-15T17:00:00Z", "2026-04-15T16:00:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := utc(t, tt.start)
			e := &Event{Start: start, End: start.Add(time.Hour), Recurrence: tt.rec}
			if e.Recurrence.TimeZone == "" {
				e.Recurrence.TimeZone = "UTC"
			}
			s := newSchedule(e, nil)
			for k, w := range tt.want {
				want := utc(t, w)
				if got := s.startOf(k); !got.Equal(want) {
					t.Errorf("occurrence %d starts %v; want %v", k, got, want)
				}
				// indexAt is the inverse: at the start, and just before the next one.
				if got := s.indexAt(want); got != k {
					t.Errorf("indexAt(%v) = %d; want %d", want, got, k)
				}
				if got := s.indexAt(want.Add(-time.Nanosecond)); got != k-1 {
					t.Errorf("indexAt(just before occurrence %d) = %d; want %d", k, got, k-1)
				}
			}
		})
	}
}

func TestRecurrenceLimits(t *testing.T) {
	start := utc(t, "2026-05-01T18:00:00Z")
	daily := func(r Recurrence) *schedule {
		r.Interval, r.Unit, r.TimeZone = 1, unitDaily, "UTC"
		s := newSchedule(&Event{Start: start, End: start.Add(2 * time.Hour), Recurrence: r}, nil)
		return &s
	}
	tests := []struct {
		name string
		s    *schedule
		last int // -1: unbounded
	}{
		{"count 3", daily(Recurrence{Count: 3}), 2},
		{"count 1", daily(Recurrence{Count: 1}), 0},
		{"until exactly the third start (inclusive)", daily(Recurrence{Until: start.Add(48 * time.Hour)}), 2},
		{"until just before the third start", daily(Recurrence{Until: start.Add(48*time.Hour - time.Nanosecond)}), 1},
		{"the lower of count and until", daily(Recurrence{Count: 2, Until: start.Add(240 * time.Hour)}), 1},
		{"neither: unbounded", daily(Recurrence{}), -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.s.last != tt.last {
				t.Fatalf("last occurrence %d; want %d", tt.s.last, tt.last)
			}
			if tt.last < 0 {
				if !tt.s.seriesEnd().Equal(forever) {
					t.Fatalf("an unbounded series ends %v", tt.s.seriesEnd())
				}
				return
			}
			if !tt.s.exists(tt.last) || tt.s.exists(tt.last+1) {
				t.Fatalf("exists(%d), exists(%d) = %v, %v; want true, false", tt.last, tt.last+1, tt.s.exists(tt.last), tt.s.exists(tt.last+1))
			}
			// After the last occurrence ends, the event has ended on its last occurrence.
			e := &Event{State: statePublished}
			v := e.viewAt(tt.s, tt.s.seriesEnd())
			if v.status != statusEnded || v.occurrence != tt.last || !v.nextStart.IsZero() || !v.until.Equal(forever) {
				t.Fatalf("after the series: %+v; want ended on occurrence %d, nothing next", v, tt.last)
			}
		})
	}
}

func TestViewAt(t *testing.T) {
	// Every day 18:00-20:00 UTC from 1 May, three times, previewed 6 hours ahead.
	start := utc(t, "2026-05-01T18:00:00Z")
	e := &Event{Start: start, End: start.Add(2 * time.Hour), Preview: start.Add(-6 * time.Hour), State: statePublished,
		Recurrence: Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "UTC", Count: 3}}
	s := newSchedule(e, nil)
	day := 24 * time.Hour
	tests := []struct {
		name       string
		at         time.Time
		status     eventStatus
		visible    bool
		occurrence int
		until      time.Time
	}{
		{"before the first preview", start.Add(-7 * time.Hour), statusUpcoming, false, 0, start.Add(-6 * time.Hour)},
		{"previewed", start.Add(-6 * time.Hour), statusUpcoming, true, 0, start},
		{"first occurrence", start, statusActive, true, 0, start.Add(2 * time.Hour)},
		{"between, before the next preview", start.Add(3 * time.Hour), statusUpcoming, true, 1, start.Add(day - 6*time.Hour)},
		{"next one previewed", start.Add(day - 6*time.Hour), statusUpcoming, true, 1, start.Add(day)},
		{"second occurrence", start.Add(day + time.Hour), statusActive, true, 1, start.Add(day + 2*time.Hour)},
		{"last occurrence", start.Add(2 * day), statusActive, true, 2, start.Add(2*day + 2*time.Hour)},
		{"after the last", start.Add(3 * day), statusEnded, true, 2, forever},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.viewAt(&s, tt.at)
			// Lists show what is active, or upcoming within its preview.
			wantListed := tt.status == statusActive || tt.status == statusUpcoming && !tt.at.Before(start.Add(time.Duration(tt.occurrence)*day-6*time.Hour))
			if v.listed != wantListed {
				t.Fatalf("listed = %v; want %v", v.listed, wantListed)
			}
			if v.status != tt.status || v.visible != tt.visible || v.occurrence != tt.occurrence || !v.until.Equal(tt.until) {
				t.Fatalf("viewAt = %v visible=%v occurrence %d until %v; want %v %v %d until %v",
					v.status, v.visible, v.occurrence, v.until, tt.status, tt.visible, tt.occurrence, tt.until)
			}
			if want := start.Add(time.Duration(tt.occurrence) * day); !v.start.Equal(want) || !v.end.Equal(want.Add(2*time.Hour)) {
				t.Fatalf("shown occurrence %v-%v; want it to start %v", v.start, v.end, want)
			}
		})
	}

	draft := *e
	draft.State = stateDraft
	if v := draft.viewAt(&s, start); v.visible || v.status != statusActive {
		t.Fatalf("a draft at its start: %+v; want active for admins, invisible to players", v)
	}
	plain := &Event{Start: start, End: start.Add(time.Hour), State: statePublished}
	ps := newSchedule(plain, nil)
	if v := plain.viewAt(&ps, start.Add(-time.Minute)); v.visible || v.status != statusUpcoming || !v.until.Equal(start) || !v.nextStart.Equal(start) {
		t.Fatalf("an unpreviewed event before its start: %+v; want upcoming, invisible until it starts", v)
	}
}

func TestRecurrenceValidation(t *testing.T) {
	start := utc(t, "2026-05-01T18:00:00Z")
	tests := []struct {
		name     string
		duration time.Duration
		rec      Recurrence
		field    string
	}{
		{"valid daily", 2 * time.Hour, Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "Europe/Paris"}, ""},
		{"time zone defaults to UTC", 2 * time.Hour, Recurrence{Interval: 1, Unit: unitWeekly}, ""},
		{"unknown time zone", time.Hour, Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "Mars/Olympus_Mons"}, "recurrence.time_zone"},
		{"the host's zone", time.Hour, Recurrence{Interval: 1, Unit: unitDaily, TimeZone: "Local"}, "recurrence.time_zone"},
		{"unknown unit", time.Hour, Recurrence{Interval: 1, Unit: "YEARLY"}, "recurrence.unit"},
		{"interval 0", time.Hour, Recurrence{Interval: 0, Unit: unitDaily}, "recurrence.interval"},
		{"daily lasting a day overlaps", 24 * time.Hour, Recurrence{Interval: 1, Unit: unitDaily}, "recurrence"},
		{"daily lasting 23h could overlap across a clock change", 23 * time.Hour, Recurrence{Interval: 1, Unit: unitDaily}, "recurrence"},
		{"daily lasting 21h could overlap across Antarctica/Troll's 2-hour change", 21 * time.Hour, Recurrence{Interval: 1, Unit: unitDaily}, "recurrence"},
		{"daily lasting 20h59m", 20*time.Hour + 59*time.Minute, Recurrence{Interval: 1, Unit: unitDaily}, ""},
		{"every 2 months lasting 57 days", 57 * 24 * time.Hour, Recurrence{Interval: 2, Unit: unitMonthly}, ""},
		{"every 2 months lasting 58 days", 58 * 24 * time.Hour, Recurrence{Interval: 2, Unit: unitMonthly}, "recurrence"},
		{"a count reaching past 2200", time.Hour, Recurrence{Interval: 2, Unit: unitHourly, Count: 3_000_000}, "recurrence.count"},
		{"a count within range", time.Hour, Recurrence{Interval: 2, Unit: unitHourly, Count: 100_000}, ""},
		{"hourly lasting an hour overlaps", time.Hour, Recurrence{Interval: 1, Unit: unitHourly}, "recurrence"},
		{"monthly lasting 28 days overlaps", 28 * 24 * time.Hour, Recurrence{Interval: 1, Unit: unitMonthly}, "recurrence"},
		{"until before start", time.Hour, Recurrence{Interval: 1, Unit: unitDaily, Until: start.Add(-time.Hour)}, "recurrence.until"},
		{"negative count", time.Hour, Recurrence{Interval: 1, Unit: unitDaily, Count: -1}, "recurrence.count"},
		{"fields without a unit", time.Hour, Recurrence{Interval: 2}, "recurrence.unit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Event{Title: "t", Start: start, End: start.Add(tt.duration), Recurrence: tt.rec}
			err := e.validate()
			probs := fieldProblems(err)
			switch {
			case tt.field == "" && err != nil:
				t.Fatalf("validate = %v; want nil", err)
			case tt.field != "" && (len(probs) != 1 || probs[0].Field != tt.field):
				t.Fatalf("validate = %v; want a %s error", err, tt.field)
			}
			if tt.field == "" && e.Recurrence.TimeZone == "" {
				t.Fatal("the time zone was not defaulted")
			}
		})
	}
}
