package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// This file holds the SQL that reads event history: the revisions every write records (see
// recordWrite), for one event or, as the audit log, for all.

// revision is one recorded write to an event.
type revision struct {
	EventID  string
	Revision int64
	Action   string // create, update, delete or restore
	KeyID    string // the key that wrote, or "import"
	KeyName  string // that key's name, when it has one
	At       time.Time
	Event    Event // as it stood after the write; before it, for a delete
}

// revisionSelect reads revisions with the name of the key that wrote each.
const revisionSelect = `SELECT r.event_id, r.revision, r.action, r.key_id, coalesce(k.name, ''), r.at, r.event
	FROM event_revisions r LEFT JOIN api_keys k ON k.id = r.key_id`

func scanRevision(s scanner) (revision, error) {
	var r revision
	var at int64
	var doc string
	if err := s.Scan(&r.EventID, &r.Revision, &r.Action, &r.KeyID, &r.KeyName, &at, &doc); err != nil {
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
