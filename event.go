package main

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
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
	// Audience restricts who is shown the event; nil is everyone (see audience.go).
	Audience *Audience
	// RolloutPercent is the share of players shown it, 1 to 100, chosen per player.
	RolloutPercent int32
	// TimeMode is timeModeUTC, or timeModePlayerLocal: the times are then wall-clock
	// times in each player's own zone, written as if in UTC.
	TimeMode string
	// Localizations are the title and description in other locales, by BCP 47 tag.
	Localizations map[string]Localization
	CreatedAt     time.Time
	UpdatedAt     time.Time
	Version       int64 // 1 on create, one more on every update
}

// The time modes of an event.
const (
	timeModeUTC         = "UTC"
	timeModePlayerLocal = "PLAYER_LOCAL"
)

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
	fields := []string{e.Title, e.Description, e.Start.Format(time.RFC3339Nano), e.End.Format(time.RFC3339Nano), e.Rewards,
		e.Preview.Format(time.RFC3339Nano), r.Unit, strconv.Itoa(r.Interval), r.TimeZone, r.Until.Format(time.RFC3339Nano),
		strconv.Itoa(r.Count), strconv.Itoa(int(e.Priority)), strings.Join(e.Labels, ","), e.State}
	// Targeting joins the fingerprint only when used, so an untargeted event's stays what
	// it was before targeting existed.
	if e.Audience != nil || e.RolloutPercent != 100 || e.TimeMode != timeModeUTC || len(e.Localizations) > 0 {
		fields = append(fields, string(marshalJSON(e.Audience)), strconv.Itoa(int(e.RolloutPercent)), e.TimeMode,
			string(marshalJSON(e.Localizations)))
	}
	for _, s := range fields {
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

// fieldErrors is every problem found in one request or document, in field order.
type fieldErrors []*fieldError

func (errs fieldErrors) Error() string {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// add appends err's problems; a nil err adds nothing.
func (errs *fieldErrors) add(err error) {
	*errs = append(*errs, fieldProblems(err)...)
}

// fieldProblems returns the field problems err carries (a *fieldError or fieldErrors,
// possibly wrapped), or nil when it carries none.
func fieldProblems(err error) fieldErrors {
	var list fieldErrors
	if errors.As(err, &list) {
		return list
	}
	var one *fieldError
	if errors.As(err, &one) {
		return fieldErrors{one}
	}
	return nil
}

// validate checks the fields an admin supplies and normalises them: text is trimmed of
// surrounding white space and rewards are compacted. It reports every field that is
// wrong, as fieldErrors, not just the first.
func (e *Event) validate() error {
	var errs fieldErrors
	e.Title = strings.TrimSpace(e.Title)
	e.Description = strings.TrimSpace(e.Description)
	if e.Title == "" {
		errs.add(&fieldError{"title", "is required"})
	} else {
		errs.add(checkText("title", e.Title, maxTitleRunes, false))
	}
	errs.add(checkText("description", e.Description, maxDescriptionRunes, true))
	startErr, endErr := checkTime("start_time", e.Start), checkTime("end_time", e.End)
	errs.add(startErr)
	errs.add(endErr)
	if startErr == nil && endErr == nil && !e.End.After(e.Start) {
		errs.add(&fieldError{"end_time", "must be after start_time"})
	}
	if !e.Preview.IsZero() {
		if err := checkTime("preview_time", e.Preview); err != nil {
			errs.add(err)
		} else if startErr == nil && !e.Preview.Before(e.Start) {
			errs.add(&fieldError{"preview_time", "must be before start_time"})
		}
	}
	if startErr == nil && endErr == nil {
		errs.add(e.Recurrence.validate(e.End.Sub(e.Start), e.Start))
	}
	if labels, err := normalizeLabels(e.Labels); err != nil {
		errs.add(err)
	} else {
		e.Labels = labels
	}
	if st, err := parseState(e.State); err != nil {
		errs.add(err)
	} else {
		e.State = st
	}
	if rewards, err := normalizeRewards(e.Rewards); err != nil {
		errs.add(err)
	} else {
		e.Rewards = rewards
	}
	if e.Audience != nil {
		if a, err := e.Audience.validate("audience"); err != nil {
			errs.add(err)
		} else {
			e.Audience = a
		}
	}
	switch {
	case e.RolloutPercent == 0:
		e.RolloutPercent = 100
	case e.RolloutPercent < 1 || e.RolloutPercent > 100:
		errs.add(&fieldError{"rollout_percent", fmt.Sprintf("must be between 1 and 100, got %d", e.RolloutPercent)})
	}
	if mode, err := parseTimeMode(e.TimeMode); err != nil {
		errs.add(err)
	} else {
		e.TimeMode = mode
		if mode == timeModePlayerLocal && e.Recurrence.TimeZone != "" && e.Recurrence.TimeZone != "UTC" {
			errs.add(&fieldError{"recurrence.time_zone", fmt.Sprintf("must be empty for a PLAYER_LOCAL event, whose occurrences follow each player's own zone; got %q", e.Recurrence.TimeZone)})
		}
	}
	if locs, err := validateLocalizations(e.Localizations); err != nil {
		errs.add(err)
	} else {
		e.Localizations = locs
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// parseState reads an event state in either spelling the APIs use: DRAFT as export files
// write it, or EVENT_STATE_DRAFT as gRPC's JSON prints it. Empty means published.
func parseState(s string) (string, error) {
	switch strings.TrimPrefix(strings.ToUpper(s), "EVENT_STATE_") {
	case "", statePublished:
		return statePublished, nil
	case stateDraft:
		return stateDraft, nil
	}
	return "", &fieldError{"state", fmt.Sprintf("must be PUBLISHED or DRAFT (or EVENT_STATE_PUBLISHED, EVENT_STATE_DRAFT), got %q", s)}
}

// parseTimeMode reads a time mode in either spelling (PLAYER_LOCAL, or TIME_MODE_PLAYER_LOCAL
// as gRPC's JSON prints it). Empty means UTC.
func parseTimeMode(s string) (string, error) {
	switch strings.TrimPrefix(strings.ToUpper(s), "TIME_MODE_") {
	case "", "UNSPECIFIED", timeModeUTC:
		return timeModeUTC, nil
	case timeModePlayerLocal:
		return timeModePlayerLocal, nil
	}
	return "", &fieldError{"time_mode", fmt.Sprintf("must be UTC or PLAYER_LOCAL (or TIME_MODE_UTC, TIME_MODE_PLAYER_LOCAL), got %q", s)}
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
		return "", &fieldError{"rewards", "must be valid JSON: " + jsonErrorAt(s, json.Unmarshal([]byte(s), new(any)))}
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

// jsonErrorAt describes a JSON syntax error in s with the line and column where it is, as
// an editor counts them.
func jsonErrorAt(s string, err error) string {
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		return err.Error()
	}
	before := s[:min(int(se.Offset), len(s))]
	line := strings.Count(before, "\n") + 1
	col := utf8.RuneCountInString(before[strings.LastIndexByte(before, '\n')+1:])
	return fmt.Sprintf("%v (line %d, column %d)", se, line, col)
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

// checkID returns a *fieldError for field when id is not a canonical UUID.
func checkID(field, id string) error {
	if id == "" {
		return &fieldError{field, "is required"}
	}
	if !validID(id) {
		return &fieldError{field, "must be a lowercase UUID such as 0b7d3c3e-4f1a-4a53-9c5e-2f9a8d6b1e20"}
	}
	return nil
}

// eventDoc is an event's definition as JSON, with the HTTP API's field names: the form of
// revisions and of export and import files. An export leaves out the bookkeeping
// (created_at, updated_at, version), so a file says only what an admin decided and moves
// between databases unchanged.
type eventDoc struct {
	ID          string          `json:"id"`
	Title       string          `json:"title"`
	Description string          `json:"description"`
	StartTime   time.Time       `json:"start_time"`
	EndTime     time.Time       `json:"end_time"`
	PreviewTime *time.Time      `json:"preview_time,omitempty"`
	Recurrence  *recurrenceDoc  `json:"recurrence,omitempty"`
	Priority    int32           `json:"priority"`
	Labels      []string        `json:"labels"`
	State       string          `json:"state"`
	Rewards     json.RawMessage `json:"rewards"`
	// The targeting fields are left out at their defaults (everyone, 100, UTC, none), so
	// the file of an untargeted event is what it was before targeting existed, and an
	// older liveops still imports it.
	Audience       *audienceDoc               `json:"audience,omitempty"`
	RolloutPercent int32                      `json:"rollout_percent,omitempty"`
	TimeMode       string                     `json:"time_mode,omitempty"`
	Localizations  map[string]localizationDoc `json:"localizations,omitempty"`
	CreatedAt      *time.Time                 `json:"created_at,omitempty"`
	UpdatedAt      *time.Time                 `json:"updated_at,omitempty"`
	Version        int64                      `json:"version,omitempty"`
}

// audienceDoc is an audience as JSON, in documents and in the events table's audience column.
type audienceDoc struct {
	Platforms  []string     `json:"platforms,omitempty"`
	MinVersion string       `json:"min_version,omitempty"`
	MaxVersion string       `json:"max_version,omitempty"`
	Countries  []string     `json:"countries,omitempty"`
	Languages  []string     `json:"languages,omitempty"`
	Exclude    *audienceDoc `json:"exclude,omitempty"`
}

// localizationDoc is one locale's text as JSON, in documents and in the events table's
// localizations column.
type localizationDoc struct {
	Title       string `json:"title,omitempty"`
	Description string `json:"description,omitempty"`
}

func toAudienceDoc(a *Audience) *audienceDoc {
	if a == nil {
		return nil
	}
	return &audienceDoc{Platforms: a.Platforms, MinVersion: a.MinVersion, MaxVersion: a.MaxVersion,
		Countries: a.Countries, Languages: a.Languages, Exclude: toAudienceDoc(a.Exclude)}
}

func (d *audienceDoc) audience() *Audience {
	if d == nil {
		return nil
	}
	return &Audience{Platforms: d.Platforms, MinVersion: d.MinVersion, MaxVersion: d.MaxVersion,
		Countries: d.Countries, Languages: d.Languages, Exclude: d.Exclude.audience()}
}

func toLocalizationDocs(locs map[string]Localization) map[string]localizationDoc {
	if len(locs) == 0 {
		return nil
	}
	out := make(map[string]localizationDoc, len(locs))
	for tag, l := range locs {
		out[tag] = localizationDoc(l)
	}
	return out
}

func fromLocalizationDocs(docs map[string]localizationDoc) map[string]Localization {
	if len(docs) == 0 {
		return nil
	}
	out := make(map[string]Localization, len(docs))
	for tag, d := range docs {
		out[tag] = Localization(d)
	}
	return out
}

type recurrenceDoc struct {
	Interval int        `json:"interval"`
	Unit     string     `json:"unit"`
	TimeZone string     `json:"time_zone"`
	Until    *time.Time `json:"until,omitempty"`
	Count    int        `json:"count,omitempty"`
}

// toDoc turns e into a document; with bookkeeping, the times and version are included.
func toDoc(e Event, bookkeeping bool) eventDoc {
	d := eventDoc{ID: e.ID, Title: e.Title, Description: e.Description, StartTime: e.Start, EndTime: e.End,
		Priority: e.Priority, Labels: e.Labels, State: e.State, Rewards: json.RawMessage(e.Rewards)}
	if d.Labels == nil {
		d.Labels = []string{}
	}
	if !e.Preview.IsZero() {
		p := e.Preview
		d.PreviewTime = &p
	}
	if r := e.Recurrence; r.repeats() {
		d.Recurrence = &recurrenceDoc{Interval: r.Interval, Unit: r.Unit, TimeZone: r.TimeZone, Count: r.Count}
		if !r.Until.IsZero() {
			u := r.Until
			d.Recurrence.Until = &u
		}
	}
	d.Audience, d.Localizations = toAudienceDoc(e.Audience), toLocalizationDocs(e.Localizations)
	if e.RolloutPercent != 100 {
		d.RolloutPercent = e.RolloutPercent
	}
	if e.TimeMode != timeModeUTC {
		d.TimeMode = e.TimeMode
	}
	if bookkeeping {
		c, u := e.CreatedAt, e.UpdatedAt
		d.CreatedAt, d.UpdatedAt, d.Version = &c, &u, e.Version
	}
	return d
}

// event turns a document back into an event (not validated). A document without the
// targeting fields (or older than them) gets their defaults.
func (d eventDoc) event() Event {
	e := Event{ID: d.ID, Title: d.Title, Description: d.Description, Start: d.StartTime.UTC(), End: d.EndTime.UTC(),
		Priority: d.Priority, Labels: d.Labels, State: d.State, Rewards: string(d.Rewards), Version: d.Version,
		Audience: d.Audience.audience(), RolloutPercent: cmp.Or(d.RolloutPercent, 100),
		TimeMode: cmp.Or(d.TimeMode, timeModeUTC), Localizations: fromLocalizationDocs(d.Localizations)}
	if len(e.Labels) == 0 {
		e.Labels = nil
	}
	if d.PreviewTime != nil {
		e.Preview = d.PreviewTime.UTC()
	}
	if r := d.Recurrence; r != nil {
		e.Recurrence = Recurrence{Interval: r.Interval, Unit: r.Unit, TimeZone: r.TimeZone, Count: r.Count}
		if r.Until != nil {
			e.Recurrence.Until = r.Until.UTC()
		}
	}
	if d.CreatedAt != nil {
		e.CreatedAt = d.CreatedAt.UTC()
	}
	if d.UpdatedAt != nil {
		e.UpdatedAt = d.UpdatedAt.UTC()
	}
	return e
}

// diffEvents lists the definition fields that differ between old and new, as
// "field: old -> new".
func diffEvents(old, new Event) []string {
	a, b := toDoc(old, false), toDoc(new, false)
	// A document leaves these out at their defaults; a diff says them.
	for _, d := range []*eventDoc{&a, &b} {
		d.RolloutPercent, d.TimeMode = cmp.Or(d.RolloutPercent, 100), cmp.Or(d.TimeMode, timeModeUTC)
	}
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []string
	for i := range va.NumField() {
		name, _, _ := strings.Cut(va.Type().Field(i).Tag.Get("json"), ",")
		x, y := marshalJSON(va.Field(i).Interface()), marshalJSON(vb.Field(i).Interface())
		if !bytes.Equal(x, y) {
			out = append(out, fmt.Sprintf("%s: %s -> %s", name, x, y))
		}
	}
	return out
}

// marshalJSON encodes v the one way every JSON liveops writes is encoded: compact, with
// <, > and & left as they are (the output is JSON, never HTML). v is one of liveops's own
// plain types, which always encode.
func marshalJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
