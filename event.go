package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Event is a time-limited live event. It is active at time t when Start <= t < End, or,
// when it repeats, within one of its occurrences. All times are in UTC.
type Event struct {
	ID          string
	Title       string
	Description string
	Start       time.Time
	End         time.Time
	Rewards     string    // a compact JSON object or array
	Preview     time.Time // players see the event as upcoming from here on; zero for no preview
	Recurrence  Recurrence
	Priority    int32    // higher first in every list
	Labels      []string // sorted, distinct, lowercase tokens
	State       string   // statePublished or stateDraft
	CreatedAt   time.Time
	UpdatedAt   time.Time
	Version     int64 // 1 on create, one more on every update
}

// The states of an event. Players never see a draft.
const (
	statePublished = "PUBLISHED"
	stateDraft     = "DRAFT"
)

const (
	maxLabels   = 20
	maxLabelLen = 32
)

// ETag returns the event's entity tag: it changes on every write. Clients treat it as
// opaque.
func (e Event) ETag() string { return formatETag(e.Version) }

func formatETag(version int64) string { return "v" + strconv.FormatInt(version, 10) }

// fingerprint identifies the admin-supplied content of a validated event, so that a retried
// create can be told apart from a different create reusing its request_id.
func (e Event) fingerprint() []byte {
	h := sha256.New()
	r := e.Recurrence
	for _, s := range []string{e.Title, e.Description, e.Start.Format(time.RFC3339Nano), e.End.Format(time.RFC3339Nano), e.Rewards,
		e.Preview.Format(time.RFC3339Nano), r.Unit, strconv.Itoa(r.Interval), r.TimeZone, r.Until.Format(time.RFC3339Nano),
		strconv.Itoa(r.Count), strconv.Itoa(int(e.Priority)), strings.Join(e.Labels, ","), e.State} {
		fmt.Fprintf(h, "%d:%s;", len(s), s)
	}
	return h.Sum(nil)
}

const (
	maxTitleRunes       = 100
	maxDescriptionRunes = 1000
	maxRewardsBytes     = 64 << 10
	maxRewardsDepth     = 32
)

// The range of times an event may use. Anything outside is almost certainly a unit mistake
// (seconds for milliseconds) or a client bug, and would only clutter every schedule.
var (
	minEventTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxEventTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

// fieldError says which field of a request was wrong and why. It maps to gRPC
// INVALID_ARGUMENT (with a BadRequest field violation) and HTTP 400.
type fieldError struct {
	Field  string
	Reason string
}

func (e *fieldError) Error() string { return e.Field + ": " + e.Reason }

// validate checks the fields an admin supplies and normalises them: text is trimmed of
// surrounding white space and rewards are compacted. It returns a *fieldError naming the
// first field that is wrong.
func (e *Event) validate() error {
	e.Title = strings.TrimSpace(e.Title)
	e.Description = strings.TrimSpace(e.Description)
	if err := checkText("title", e.Title, maxTitleRunes, false); err != nil {
		return err
	}
	if e.Title == "" {
		return &fieldError{"title", "is required"}
	}
	if err := checkText("description", e.Description, maxDescriptionRunes, true); err != nil {
		return err
	}
	if err := checkTime("start_time", e.Start); err != nil {
		return err
	}
	if err := checkTime("end_time", e.End); err != nil {
		return err
	}
	if !e.End.After(e.Start) {
		return &fieldError{"end_time", "must be after start_time"}
	}
	if !e.Preview.IsZero() {
		if err := checkTime("preview_time", e.Preview); err != nil {
			return err
		}
		if !e.Preview.Before(e.Start) {
			return &fieldError{"preview_time", "must be before start_time"}
		}
	}
	if err := e.Recurrence.validate(e.End.Sub(e.Start), e.Start); err != nil {
		return err
	}
	labels, err := normalizeLabels(e.Labels)
	if err != nil {
		return err
	}
	e.Labels = labels
	switch e.State {
	case "":
		e.State = statePublished
	case statePublished, stateDraft:
	default:
		return &fieldError{"state", fmt.Sprintf("must be PUBLISHED or DRAFT, got %q", e.State)}
	}
	rewards, err := normalizeRewards(e.Rewards)
	if err != nil {
		return err
	}
	e.Rewards = rewards
	return nil
}

// normalizeLabels checks labels (short lowercase tokens: a-z, 0-9, '-' and '_', starting
// with a letter or digit) and returns them sorted without repeats.
func normalizeLabels(labels []string) ([]string, error) {
	if len(labels) > maxLabels {
		return nil, &fieldError{"labels", fmt.Sprintf("must be at most %d, got %d", maxLabels, len(labels))}
	}
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return nil, &fieldError{"labels", err.Error()}
		}
	}
	out := slices.Clone(labels)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// checkLabel says what is wrong with one label, or nil.
func checkLabel(l string) error {
	if l == "" || len(l) > maxLabelLen {
		return fmt.Errorf("label %q must be 1 to %d characters", l, maxLabelLen)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '-' || c == '_')
		if !ok {
			return fmt.Errorf("label %q must be lowercase letters, digits, '-' and '_', starting with a letter or digit", l)
		}
	}
	return nil
}

// checkText refuses text that is not valid UTF-8, is longer than maxRunes characters (or
// four bytes a character), or holds a control character or a bidirectional override, which
// can make a title display as something other than what it says. Line feeds are allowed
// in multi-line text.
func checkText(field, s string, maxRunes int, multiline bool) error {
	if len(s) > 4*maxRunes {
		return &fieldError{field, fmt.Sprintf("must be at most %d bytes, got %d", 4*maxRunes, len(s))}
	}
	if !utf8.ValidString(s) {
		return &fieldError{field, "must be valid UTF-8"}
	}
	if n := utf8.RuneCountInString(s); n > maxRunes {
		return &fieldError{field, fmt.Sprintf("must be at most %d characters, got %d", maxRunes, n)}
	}
	for i, r := range s {
		switch {
		case r == '\n' && multiline:
		case r < 0x20, 0x7f <= r && r < 0xa0:
			return &fieldError{field, fmt.Sprintf("must not contain control character %U (at byte %d)", r, i)}
		case 0x202a <= r && r <= 0x202e, 0x2066 <= r && r <= 0x2069:
			return &fieldError{field, fmt.Sprintf("must not contain bidirectional control %U (at byte %d)", r, i)}
		}
	}
	return nil
}

// checkTime refuses a missing time or one outside [minEventTime, maxEventTime).
func checkTime(field string, t time.Time) error {
	if t.IsZero() {
		return &fieldError{field, "is required"}
	}
	if t.Before(minEventTime) || !t.Before(maxEventTime) {
		return &fieldError{field, fmt.Sprintf("must be between %d and %d, got %s", minEventTime.Year(), maxEventTime.Year(), t.Format(time.RFC3339))}
	}
	return nil
}

// normalizeRewards checks that s is a JSON object or array within the size and depth caps
// and without duplicate object keys (which parsers resolve differently, so a client and the
// server could disagree on a reward), and returns it compacted. An empty s means {}.
func normalizeRewards(s string) (string, error) {
	if len(s) > maxRewardsBytes {
		return "", &fieldError{"rewards", fmt.Sprintf("must be at most %d bytes, got %d", maxRewardsBytes, len(s))}
	}
	if strings.TrimSpace(s) == "" {
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
	if err := checkJSONShape(buf.Bytes()); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// checkJSONShape walks valid JSON and refuses nesting deeper than maxRewardsDepth and an
// object that repeats a key.
func checkJSONShape(data []byte) error {
	type container struct {
		keys    map[string]bool // nil for an array
		wantKey bool            // in an object: the next string is a key, not a value
	}
	var stack []container
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &fieldError{"rewards", "must be valid JSON"}
		}
		var top *container
		if len(stack) > 0 {
			top = &stack[len(stack)-1]
		}
		if s, ok := tok.(string); ok && top != nil && top.keys != nil && top.wantKey {
			if top.keys[s] {
				return &fieldError{"rewards", fmt.Sprintf("has the key %q twice in one object", s)}
			}
			top.keys[s] = true
			top.wantKey = false
			continue
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			continue
		}
		// Anything else is a value; in an object, a key comes next.
		if top != nil && top.keys != nil {
			top.wantKey = true
		}
		if d, ok := tok.(json.Delim); ok {
			if len(stack) == maxRewardsDepth {
				return &fieldError{"rewards", fmt.Sprintf("must not nest deeper than %d levels", maxRewardsDepth)}
			}
			c := container{}
			if d == '{' {
				c = container{keys: map[string]bool{}, wantKey: true}
			}
			stack = append(stack, c)
		}
	}
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
