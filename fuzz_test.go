package main

// Fuzz targets for everything that parses untrusted input. Their seed corpora live in
// testdata/fuzz/<name>/ and run with every `go test ./...`; to fuzz one for real:
//
//	go test -run '^$' -fuzz '^FuzzNormalizeRewards$' -fuzztime 2m

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func FuzzBearerToken(f *testing.F) {
	f.Add("Bearer lo_user_x", "")
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, values := range [][]string{{a}, {a, b}} {
			tok, err := bearerToken(values)
			if len(values) == 2 && err != errTwoKeys {
				t.Fatalf("bearerToken(%q) = %q, %v; two values must be refused", values, tok, err)
			}
			if err != nil {
				if tok != "" {
					t.Fatalf("bearerToken(%q) returned %q with error %v", values, tok, err)
				}
				continue
			}
			if tok == "" || tok != strings.TrimSpace(tok) || !strings.Contains(a, tok) {
				t.Fatalf("bearerToken(%q) = %q: empty, untrimmed or not from the input", values, tok)
			}
			if strings.ContainsAny(strings.TrimSpace(tok), " ") && !strings.EqualFold(strings.Fields(a)[0], "bearer") {
				t.Fatalf("bearerToken(%q) = %q: a token with a space must come after Bearer", values, tok)
			}
		}
	})
}

func FuzzCheckKeyFormat(f *testing.F) {
	for _, r := range []role{roleHTTPUser, roleGRPCAdmin} {
		secret, _, _ := newKey(r, "", time.Now(), 0)
		f.Add(secret)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !checkKeyFormat(s) {
			return
		}
		// Anything accepted has the exact shape of a generated key.
		tag, rest, _ := strings.Cut(strings.TrimPrefix(s, keyPrefix), "_")
		if !strings.HasPrefix(s, keyPrefix) || (tag != "user" && tag != "admin") || len(rest) != keyRandomLen+1+keyChecksumLen {
			t.Fatalf("checkKeyFormat accepted %q", s)
		}
		if body := s[:len(s)-keyChecksumLen-1]; checksum(body) != s[len(s)-keyChecksumLen:] {
			t.Fatalf("checkKeyFormat accepted %q with a wrong checksum", s)
		}
	})
}

func FuzzValidateEvent(f *testing.F) {
	f.Add("Festival", "about", int64(1767225600), int64(3600), `{"gems":1}`)
	f.Fuzz(func(t *testing.T, title, description string, start, length int64, rewards string) {
		e := Event{Title: title, Description: description, Start: time.Unix(start, 0).UTC(), End: time.Unix(start+length, 0).UTC(), Rewards: rewards}
		if err := e.validate(); err != nil {
			if len(fieldProblems(err)) == 0 {
				t.Fatalf("validate returned %T %v; want field problems", err, err)
			}
			return
		}
		if n := utf8.RuneCountInString(e.Title); n == 0 || n > maxTitleRunes || utf8.RuneCountInString(e.Description) > maxDescriptionRunes {
			t.Fatalf("accepted title %q / description of %d runes", e.Title, utf8.RuneCountInString(e.Description))
		}
		for _, r := range e.Title + e.Description {
			if r < 0x20 && r != '\n' || r == 0x7f || 0x80 <= r && r < 0xa0 || 0x202a <= r && r <= 0x202e || 0x2066 <= r && r <= 0x2069 {
				t.Fatalf("accepted control or bidi character %U", r)
			}
		}
		if !e.End.After(e.Start) || e.Start.Year() < 2000 || e.End.Year() >= 2200 {
			t.Fatalf("accepted times %v .. %v", e.Start, e.End)
		}
		// Validating what validate produced changes nothing.
		again := e
		if err := again.validate(); err != nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("validate is not idempotent: %v, %+v vs %+v", err, again, e)
		}
	})
}

func FuzzSchedule(f *testing.F) {
	f.Add(int64(1767225600), int64(7200), int64(86400), uint8(2), 1, 0, int64(0), "Europe/Paris", int64(1767312000))
	f.Add(int64(1774746000), int64(3600), int64(0), uint8(4), 2, 5, int64(0), "America/New_York", int64(1800000000))
	zones := []string{"UTC", "Europe/Paris", "America/New_York", "Antarctica/Troll", "Australia/Lord_Howe", "Asia/Kolkata"}
	f.Fuzz(func(t *testing.T, start, length, lead int64, unit uint8, interval, count int, until int64, zone string, at int64) {
		units := []string{"", unitHourly, unitDaily, unitWeekly, unitMonthly}
		if len(zone) == 0 || int(zone[0])%2 == 0 {
			zone = zones[int(unit)%len(zones)] // mostly real zones, sometimes the fuzzer's string
		}
		e := Event{Title: "t", Start: time.Unix(start, 0).UTC(), End: time.Unix(start+length, 0).UTC(),
			Recurrence: Recurrence{Unit: units[int(unit)%len(units)], Interval: interval, Count: count, TimeZone: zone}}
		if lead > 0 {
			e.Preview = e.Start.Add(-time.Duration(lead%(1<<40)) * time.Second)
		}
		if until != 0 {
			e.Recurrence.Until = time.Unix(until, 0).UTC()
		}
		if e.validate() != nil {
			return
		}
		s := newSchedule(&e, nil)
		t0 := time.Unix(at, 0).UTC()
		if t0.Before(minEventTime) || !t0.Before(maxEventTime) {
			return // the APIs refuse such instants
		}
		v := e.viewAt(&s, t0)
		// The occurrence shown exists, lasts as long as the event, and the answer holds
		// for a while: until is after the instant asked about.
		if v.occurrence < 0 || !s.exists(v.occurrence) || !v.end.Equal(v.start.Add(e.End.Sub(e.Start))) || !v.until.After(t0) {
			t.Fatalf("viewAt(%v) = %+v for %+v", t0, v, e.Recurrence)
		}
		switch v.status {
		case statusActive:
			if t0.Before(v.start) || !t0.Before(v.end) {
				t.Fatalf("active at %v, but the occurrence is %v-%v", t0, v.start, v.end)
			}
		case statusUpcoming:
			if !t0.Before(v.start) {
				t.Fatalf("upcoming at %v, but the occurrence started %v", t0, v.start)
			}
		case statusEnded:
			if t0.Before(v.end) || !v.nextStart.IsZero() {
				t.Fatalf("ended at %v, but the occurrence ends %v (next %v)", t0, v.end, v.nextStart)
			}
		}
		// Occurrences never overlap.
		if s.exists(v.occurrence+1) && s.startOf(v.occurrence+1).Before(v.end) {
			t.Fatalf("occurrence %d starts %v, before occurrence %d ends %v", v.occurrence+1, s.startOf(v.occurrence+1), v.occurrence, v.end)
		}
	})
}

func FuzzNormalizeRewards(f *testing.F) {
	f.Add(`{"gems": 50, "items": [{"id": "hat", "qty": 1}]}`)
	f.Fuzz(func(t *testing.T, s string) {
		out, err := normalizeRewards(s)
		if err != nil {
			if _, ok := err.(*fieldError); !ok {
				t.Fatalf("normalizeRewards returned %T %v; want a *fieldError", err, err)
			}
			return
		}
		if !json.Valid([]byte(out)) || (out[0] != '{' && out[0] != '[') || len(out) > maxRewardsBytes {
			t.Fatalf("normalizeRewards(%q) = %q: not a JSON object or array within the cap", s, out)
		}
		if again, err := normalizeRewards(out); err != nil || again != out {
			t.Fatalf("normalizing %q again gave %q, %v", out, again, err)
		}
		if strings.TrimSpace(s) == "" {
			return
		}
		var in, got any
		dec := json.NewDecoder(bytes.NewReader([]byte(s)))
		dec.UseNumber()
		if err := dec.Decode(&in); err != nil {
			t.Fatalf("accepted %q, which does not decode: %v", s, err)
		}
		dec = json.NewDecoder(bytes.NewReader([]byte(out)))
		dec.UseNumber()
		dec.Decode(&got)
		if !reflect.DeepEqual(in, got) {
			t.Fatalf("normalizing changed the value: %q -> %q", s, out)
		}
	})
}
