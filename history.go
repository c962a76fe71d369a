package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"
)

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
	CreatedAt   *time.Time      `json:"created_at,omitempty"`
	UpdatedAt   *time.Time      `json:"updated_at,omitempty"`
	Version     int64           `json:"version,omitempty"`
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
	if bookkeeping {
		c, u := e.CreatedAt, e.UpdatedAt
		d.CreatedAt, d.UpdatedAt, d.Version = &c, &u, e.Version
	}
	return d
}

// event turns a document back into an event (not validated).
func (d eventDoc) event() Event {
	e := Event{ID: d.ID, Title: d.Title, Description: d.Description, Start: d.StartTime.UTC(), End: d.EndTime.UTC(),
		Priority: d.Priority, Labels: d.Labels, State: d.State, Rewards: string(d.Rewards), Version: d.Version}
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

// revision is one recorded write to an event.
type revision struct {
	EventID  string
	Revision int64
	Action   string // create, update, delete or restore
	KeyID    string // the key that wrote, or "import"
	At       time.Time
	Event    Event // as it stood after the write; before it, for a delete
}

// writeRevision records a write to e in tx, numbering it after the event's last revision.
func writeRevision(ctx context.Context, tx *sql.Tx, action, actor string, at time.Time, e Event) error {
	doc, err := json.Marshal(toDoc(e, true))
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx,
		`INSERT INTO event_revisions (event_id, revision, action, key_id, at, event)
		SELECT ?, coalesce(max(revision), 0) + 1, ?, ?, ?, ? FROM event_revisions WHERE event_id = ?`,
		e.ID, action, actor, at.UnixNano(), string(doc), e.ID)
	return err
}

const revisionColumns = "event_id, revision, action, key_id, at, event"

func scanRevision(s scanner) (revision, error) {
	var r revision
	var at int64
	var doc string
	if err := s.Scan(&r.EventID, &r.Revision, &r.Action, &r.KeyID, &at, &doc); err != nil {
		return revision{}, err
	}
	r.At = fromNanos(at)
	var d eventDoc
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		return revision{}, fmt.Errorf("revision %d of %s: %w", r.Revision, r.EventID, err)
	}
	r.Event = d.event()
	return r, nil
}

func (st *store) queryRevisions(ctx context.Context, query string, args ...any) ([]revision, error) {
	rows, err := st.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, storeError("list revisions", err)
	}
	defer rows.Close()
	var out []revision
	for rows.Next() {
		r, err := scanRevision(rows)
		if err != nil {
			return nil, storeError("list revisions", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, storeError("list revisions", err)
	}
	return out, nil
}

// Revisions returns up to limit revisions of an event, newest first, older than before
// (0 for the newest).
func (st *store) Revisions(ctx context.Context, eventID string, before int64, limit int) ([]revision, error) {
	if before == 0 {
		before = 1 << 62
	}
	return st.queryRevisions(ctx, `SELECT `+revisionColumns+` FROM event_revisions
		WHERE event_id = ? AND revision < ? ORDER BY revision DESC LIMIT ?`, eventID, before, limit)
}

// auditCursor is where a page of the audit log ended.
type auditCursor struct {
	At       int64  `json:"t"`
	EventID  string `json:"e"`
	Revision int64  `json:"r"`
	Filter   string `json:"f"`
}

// AuditLog returns up to limit revisions across all events, newest first, written at or
// after since (zero for all), by keyID (empty for any), after the cursor (nil for the start).
func (st *store) AuditLog(ctx context.Context, since time.Time, keyID string, after *auditCursor, limit int) ([]revision, error) {
	q := `SELECT ` + revisionColumns + ` FROM event_revisions WHERE at >= ?`
	args := []any{since.UnixNano()}
	if since.IsZero() {
		args[0] = int64(-1 << 62)
	}
	if keyID != "" {
		q += ` AND key_id = ?`
		args = append(args, keyID)
	}
	if after != nil {
		q += ` AND (at, event_id, revision) < (?, ?, ?)`
		args = append(args, after.At, after.EventID, after.Revision)
	}
	q += ` ORDER BY at DESC, event_id DESC, revision DESC LIMIT ?`
	return st.queryRevisions(ctx, q, append(args, limit)...)
}

// errNoRevision: the revision asked for does not exist.
var errNoRevision = errors.New("no such revision")

// RestoreEvent makes the event look as it did at a revision again, as a new revision,
// bringing a deleted event back under its old id. When etag is not empty it must be the
// event's current one (a deleted event has none, so any etag is stale). It returns the
// event as stored and the events generation.
func (st *store) RestoreEvent(ctx context.Context, id string, rev int64, etag string, now time.Time, actor string) (Event, int64, error) {
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		return Event{}, 0, storeError("restore event", err)
	}
	defer tx.Rollback()
	target, err := scanRevision(tx.QueryRowContext(ctx,
		`SELECT `+revisionColumns+` FROM event_revisions WHERE event_id = ? AND revision = ?`, id, rev))
	if errors.Is(err, sql.ErrNoRows) {
		return Event{}, 0, errNoRevision
	}
	if err != nil {
		return Event{}, 0, storeError("restore event", err)
	}
	cur, err := scanEvent(tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`, id))
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return Event{}, 0, storeError("restore event", err)
	}
	if etag != "" && (!exists || etag != cur.ETag()) {
		return Event{}, 0, errStale
	}
	// Versions only grow, across a delete too, so an old etag can never match again.
	var lastVersion int64
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(json_extract(event, '$.version')), 0) FROM event_revisions WHERE event_id = ?`, id).Scan(&lastVersion); err != nil {
		return Event{}, 0, storeError("restore event", err)
	}
	e := target.Event
	e.ID, e.UpdatedAt, e.Version = id, now, max(lastVersion, cur.Version)+1
	vals := eventValues(e)
	err = nil
	if exists {
		_, err = tx.ExecContext(ctx, `DELETE FROM events WHERE id = ?`, id)
	}
	if err == nil {
		_, err = tx.ExecContext(ctx, `INSERT INTO events (`+eventColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, vals...)
	}
	if err == nil {
		err = writeRevision(ctx, tx, "restore", actor, now, e)
	}
	var gen int64
	if err == nil {
		gen, err = bumpGeneration(ctx, tx)
	}
	if err == nil {
		err = tx.Commit()
	}
	if err != nil {
		return Event{}, 0, storeError("restore event", err)
	}
	return e, gen, nil
}

// exportFile is the shape of an export: every event's definition, sorted by id.
type exportFile struct {
	Events []eventDoc `json:"events"`
}

// Export writes every event's definition as stable, indented JSON sorted by id.
func (st *store) Export(ctx context.Context) ([]byte, error) {
	events, _, err := st.Events(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(events, func(a, b Event) int { return strings.Compare(a.ID, b.ID) })
	f := exportFile{Events: make([]eventDoc, len(events))}
	for i, e := range events {
		f.Events[i] = toDoc(e, false)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// importProblem is one thing wrong with an import file.
type importProblem struct {
	EventID string
	Field   string
	Reason  string
}

func (p importProblem) String() string {
	if p.EventID == "" {
		return p.Field + ": " + p.Reason
	}
	return fmt.Sprintf("event %s: %s: %s", p.EventID, p.Field, p.Reason)
}

// importChange is what an import does to one event.
type importChange struct {
	ID     string
	Action string   // create, update or unchanged
	Fields []string // for an update: "field: old -> new", one a changed field
	event  Event
}

// parseImport reads and checks an import file. It reports every problem it finds, not just
// the first.
func parseImport(data []byte) ([]Event, []importProblem) {
	var f exportFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, []importProblem{{Field: "file", Reason: err.Error()}}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, []importProblem{{Field: "file", Reason: "holds more than one JSON value"}}
	}
	var problems []importProblem
	var events []Event
	seen := map[string]bool{}
	for i, d := range f.Events {
		id := d.ID
		if !validID(id) {
			problems = append(problems, importProblem{fmt.Sprintf("#%d (%q)", i+1, id), "id", "must be a lowercase UUID"})
			continue
		}
		if seen[id] {
			problems = append(problems, importProblem{id, "id", "appears more than once in the file"})
			continue
		}
		seen[id] = true
		if d.CreatedAt != nil || d.UpdatedAt != nil || d.Version != 0 {
			problems = append(problems, importProblem{id, "created_at/updated_at/version", "are set by the server; leave them out"})
			continue
		}
		e := d.event()
		if err := e.validate(); err != nil {
			var fe *fieldError
			if errors.As(err, &fe) {
				problems = append(problems, importProblem{id, fe.Field, fe.Reason})
			} else {
				problems = append(problems, importProblem{id, "event", err.Error()})
			}
			continue
		}
		events = append(events, e)
	}
	return events, problems
}

// diffEvents lists the definition fields that differ between old and new, as
// "field: old -> new".
func diffEvents(old, new Event) []string {
	a, b := toDoc(old, false), toDoc(new, false)
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []string
	for i := range va.NumField() {
		name := strings.Split(va.Type().Field(i).Tag.Get("json"), ",")[0]
		x, _ := json.Marshal(va.Field(i).Interface())
		y, _ := json.Marshal(vb.Field(i).Interface())
		if !bytes.Equal(x, y) {
			out = append(out, fmt.Sprintf("%s: %s -> %s", name, x, y))
		}
	}
	return out
}

// Import creates or updates every event in events by id, in one transaction, recording a
// revision attributed to "import" for each change; events already as in the file are left
// alone. With dryRun it works out the same changes and writes nothing. It returns the
// changes and the events generation (0 when nothing was written).
func (st *store) Import(ctx context.Context, events []Event, now time.Time, dryRun bool) ([]importChange, int64, error) {
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, storeError("import", err)
	}
	defer tx.Rollback()
	var changes []importChange
	written := false
	for _, e := range events {
		cur, err := scanEvent(tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`, e.ID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			e.CreatedAt, e.UpdatedAt, e.Version = now, now, 1
			changes = append(changes, importChange{ID: e.ID, Action: "create", event: e})
			if dryRun {
				continue
			}
			// The event may have existed before and been deleted: carry on its versions.
			var last int64
			if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(json_extract(event, '$.version')), 0) FROM event_revisions WHERE event_id = ?`, e.ID).Scan(&last); err != nil {
				return nil, 0, storeError("import", err)
			}
			e.Version = last + 1
			if _, err := tx.ExecContext(ctx, `INSERT INTO events (`+eventColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, eventValues(e)...); err != nil {
				return nil, 0, storeError("import", err)
			}
			if err := writeRevision(ctx, tx, "create", importActor, now, e); err != nil {
				return nil, 0, storeError("import", err)
			}
			written = true
		case err != nil:
			return nil, 0, storeError("import", err)
		default:
			diff := diffEvents(cur, e)
			if len(diff) == 0 {
				changes = append(changes, importChange{ID: e.ID, Action: "unchanged"})
				continue
			}
			e.CreatedAt, e.UpdatedAt, e.Version = cur.CreatedAt, now, cur.Version+1
			changes = append(changes, importChange{ID: e.ID, Action: "update", Fields: diff, event: e})
			if dryRun {
				continue
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM events WHERE id = ?`, e.ID); err != nil {
				return nil, 0, storeError("import", err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO events (`+eventColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, eventValues(e)...); err != nil {
				return nil, 0, storeError("import", err)
			}
			if err := writeRevision(ctx, tx, "update", importActor, now, e); err != nil {
				return nil, 0, storeError("import", err)
			}
			written = true
		}
	}
	if dryRun || !written {
		return changes, 0, nil
	}
	gen, err := bumpGeneration(ctx, tx)
	if err != nil {
		return nil, 0, storeError("import", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, 0, storeError("import", err)
	}
	return changes, gen, nil
}

// importActor is the key id imports are attributed to.
const importActor = "import"
