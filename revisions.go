package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// This file holds the SQL that reads event history: the revisions every write records (see
// recordWrite), for one event, as the audit log for all, and as the changes a server
// catches up on.

// revision is one recorded write to an event.
type revision struct {
	EventID  string
	Revision int64
	Action   string // create, update, delete or restore
	KeyID    string // the key that wrote, or "import"
	KeyName  string // that key's name, when it has one
	At       time.Time
	Event    Event  // as it stood after the write; before it, for a delete
	TraceID  string // the trace of the request that wrote; empty for an import
}

// revisionSelect reads revisions with the name of the key that wrote each.
const revisionSelect = `SELECT r.event_id, r.revision, r.action, r.key_id, coalesce(k.name, ''), r.at, r.event, r.trace_id
	FROM event_revisions r LEFT JOIN api_keys k ON k.id = r.key_id`

func scanRevision(s scanner) (revision, error) {
	var r revision
	var at int64
	var doc string
	if err := s.Scan(&r.EventID, &r.Revision, &r.Action, &r.KeyID, &r.KeyName, &at, &doc, &r.TraceID); err != nil {
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

func (st *store) queryRevisions(ctx context.Context, where string, args ...any) ([]revision, error) {
	rows, err := st.db.QueryContext(ctx, revisionSelect+" "+where, args...)
	if err != nil {
		return nil, st.storeError("list revisions", err)
	}
	defer rows.Close()
	var out []revision
	for rows.Next() {
		r, err := scanRevision(rows)
		if err != nil {
			return nil, st.storeError("list revisions", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, st.storeError("list revisions", err)
	}
	return out, nil
}

// Revisions returns up to limit revisions of an event, newest first, older than before
// (0 for the newest).
func (st *store) Revisions(ctx context.Context, eventID string, before int64, limit int) ([]revision, error) {
	if before == 0 {
		before = 1 << 62
	}
	return st.queryRevisions(ctx, `WHERE r.event_id = ? AND r.revision < ? ORDER BY r.revision DESC LIMIT ?`, eventID, before, limit)
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
	where := `WHERE r.at >= ?`
	args := []any{since.UnixNano()}
	if since.IsZero() {
		args[0] = int64(-1 << 62)
	}
	if keyID != "" {
		where += ` AND r.key_id = ?`
		args = append(args, keyID)
	}
	if after != nil {
		where += ` AND (r.at, r.event_id, r.revision) < (?, ?, ?)`
		args = append(args, after.At, after.EventID, after.Revision)
	}
	where += ` ORDER BY r.at DESC, r.event_id DESC, r.revision DESC LIMIT ?`
	return st.queryRevisions(ctx, where, append(args, limit)...)
}

// errGap: the revisions since a generation do not account for every write since, as
// for writes made before revisions carried their generation. The caller reloads.
var errGap = errors.New("the revision log does not cover every change since that generation")

// maxChanges is the most changes ChangesSince reads one by one; past it, reloading every
// event is as cheap.
const maxChanges = 1000

// change is an event written since some generation: as it is now, or deleted.
type change struct {
	id      string
	event   *Event    // nil: deleted
	lastGen int64     // the generation of the last write to it
	at      time.Time // when that write was made, by the writer's clock
}

// ChangesSince returns the events written after generation since, as they stand now, and
// the generation they bring a snapshot to: a cost in proportion to the writes, not to the
// events. It returns errGap when it cannot account for every write since.
func (st *store) ChangesSince(ctx context.Context, since int64) ([]change, int64, error) {
	tx, err := st.db.BeginTx(ctx, st.consistentRead())
	if err != nil {
		return nil, 0, st.storeError("read changes", err)
	}
	defer tx.Rollback()
	var gen int64
	if err := tx.QueryRowContext(ctx, generationQuery).Scan(&gen); err != nil {
		return nil, 0, st.storeError("read changes", err)
	}
	if gen-since > maxChanges || gen < since {
		return nil, 0, errGap
	}
	rows, err := tx.QueryContext(ctx,
		`SELECT generation, event_id, at FROM event_revisions WHERE generation > ? ORDER BY generation`, since)
	if err != nil {
		return nil, 0, st.storeError("read changes", err)
	}
	defer rows.Close()
	var changes []change
	last := map[string]int{} // id -> index in changes
	seen := since
	for rows.Next() {
		var g, at int64
		var id string
		if err := rows.Scan(&g, &id, &at); err != nil {
			return nil, 0, st.storeError("read changes", err)
		}
		if g != seen+1 {
			return nil, 0, errGap
		}
		seen = g
		if i, ok := last[id]; ok {
			changes[i].lastGen, changes[i].at = g, fromNanos(at)
			continue
		}
		last[id] = len(changes)
		changes = append(changes, change{id: id, lastGen: g, at: fromNanos(at)})
	}
	if err := rows.Err(); err != nil {
		return nil, 0, st.storeError("read changes", err)
	}
	if seen != gen {
		return nil, 0, errGap
	}
	for i := range changes {
		e, err := getEvent(ctx, tx, changes[i].id)
		switch {
		case err == nil:
			changes[i].event = &e
		case !errors.Is(err, errNotFound):
			return nil, 0, st.storeError("read changes", err)
		}
	}
	slices.SortFunc(changes, func(a, b change) int { return cmp.Compare(a.lastGen, b.lastGen) })
	return changes, gen, nil
}

// generationQuery reads the events generation.
const generationQuery = `SELECT value FROM meta WHERE name = 'events_generation'`

// Generation returns the events generation: it grows with every committed event write, by
// any process.
func (st *store) Generation(ctx context.Context) (int64, error) {
	var gen int64
	err := st.db.QueryRowContext(ctx, generationQuery).Scan(&gen)
	return gen, st.storeError("read generation", err)
}
