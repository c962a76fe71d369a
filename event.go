package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// Event is a time-limited live event. It is active at time t when Start <= t < End.
// All times are in UTC.
type Event struct {
	ID          string
	Title       string
	Description string
	Start       time.Time
	End         time.Time
	Rewards     string // a compact JSON object or array
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// activeAt reports whether the event is live at t: the start is inclusive, the end exclusive.
func (e Event) activeAt(t time.Time) bool {
	return !t.Before(e.Start) && t.Before(e.End)
}

const (
	maxTitleRunes       = 100
	maxDescriptionRunes = 1000
)

// fieldError says which field of a request was wrong and why. It maps to gRPC
// INVALID_ARGUMENT and HTTP 400.
type fieldError struct {
	Field  string
	Reason string
}

func (e *fieldError) Error() string { return e.Field + ": " + e.Reason }

// validate checks the fields an admin supplies and normalises rewards to compact JSON.
// It returns a *fieldError naming the first field that is wrong.
func (e *Event) validate() error {
	switch n := utf8.RuneCountInString(e.Title); {
	case !utf8.ValidString(e.Title):
		return &fieldError{"title", "must be valid UTF-8"}
	case n == 0:
		return &fieldError{"title", "is required"}
	case n > maxTitleRunes:
		return &fieldError{"title", fmt.Sprintf("must be at most %d characters, got %d", maxTitleRunes, n)}
	}
	switch n := utf8.RuneCountInString(e.Description); {
	case !utf8.ValidString(e.Description):
		return &fieldError{"description", "must be valid UTF-8"}
	case n > maxDescriptionRunes:
		return &fieldError{"description", fmt.Sprintf("must be at most %d characters, got %d", maxDescriptionRunes, n)}
	}
	if e.Start.IsZero() {
		return &fieldError{"start_time", "is required"}
	}
	if e.End.IsZero() {
		return &fieldError{"end_time", "is required"}
	}
	if !e.End.After(e.Start) {
		return &fieldError{"end_time", "must be after start_time"}
	}
	rewards, err := normalizeRewards(e.Rewards)
	if err != nil {
		return err
	}
	e.Rewards = rewards
	return nil
}

// normalizeRewards checks that s is a JSON object or array and returns it compacted;
// an empty s means {}.
func normalizeRewards(s string) (string, error) {
	if len(bytes.TrimSpace([]byte(s))) == 0 {
		return "{}", nil
	}
	if !json.Valid([]byte(s)) {
		return "", &fieldError{"rewards", "must be valid JSON"}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(s)); err != nil {
		return "", &fieldError{"rewards", "must be valid JSON"}
	}
	if c := buf.Bytes()[0]; c != '{' && c != '[' {
		return "", &fieldError{"rewards", "must be a JSON object or array"}
	}
	return buf.String(), nil
}

// newID returns a random UUID version 4 in canonical lowercase form.
func newID() string {
	var b [16]byte
	rand.Read(b[:]) // crypto/rand.Read never returns an error
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// validID reports whether s is a UUID in canonical lowercase text form
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx). Any other spelling is refused rather than
// normalised, so one event has exactly one URL.
func validID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// checkID returns a *fieldError when id is not a canonical UUID.
func checkID(id string) error {
	if id == "" {
		return &fieldError{"id", "is required"}
	}
	if !validID(id) {
		return &fieldError{"id", "must be a lowercase UUID such as 0b7d3c3e-4f1a-4a53-9c5e-2f9a8d6b1e20"}
	}
	return nil
}
