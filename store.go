package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// errNotFound is returned by store methods when the event or key asked for does not exist.
var errNotFound = errors.New("not found")

// store keeps events and API keys in one SQLite file.
//
// Times are stored as Unix nanoseconds in UTC, so that comparisons in SQL are integer
// comparisons and a protobuf Timestamp survives a round trip unchanged.
type store struct {
	db *sql.DB
}

// openStore opens (creating if needed) the SQLite database at path and migrates it to the
// current schema.
func openStore(ctx context.Context, path string) (*store, error) {
	// The pragmas go in the DSN, not in db.Exec, because database/sql pools connections and an
	// Exec reaches only one of them.
	//   journal_mode(WAL): readers never block the writer, nor the writer readers.
	//   synchronous(FULL): an acknowledged admin write survives a power cut, not only a crash.
	//   busy_timeout(5000): a writer waits up to 5 s for another writer instead of failing at once.
	//   foreign_keys(1): SQLite leaves them off unless asked.
	// _txlock=immediate makes BEGIN take the write lock up front, so two read-then-write
	// transactions cannot deadlock by both upgrading a shared lock.
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()

	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	st := &store{db: db}
	if err := st.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return st, nil
}

// Close closes the database.
func (st *store) Close() error { return st.db.Close() }

// migrations are applied in order; PRAGMA user_version records how many have run.
// Append new ones; never edit or reorder one that has shipped.
var migrations = []string{
	`CREATE TABLE events (
		id          TEXT PRIMARY KEY,
		title       TEXT NOT NULL,
		description TEXT NOT NULL DEFAULT '',
		start_time  INTEGER NOT NULL,
		end_time    INTEGER NOT NULL,
		rewards     TEXT NOT NULL DEFAULT '{}',
		created_at  INTEGER NOT NULL,
		updated_at  INTEGER NOT NULL,
		CHECK (end_time > start_time)
	);
	-- "Active now" is start_time <= t < end_time: the index lets SQLite skip every ended event.
	CREATE INDEX events_by_end ON events (end_time, start_time);
	CREATE INDEX events_by_start ON events (start_time, id);
	CREATE TABLE api_keys (
		id           TEXT PRIMARY KEY,
		hash         BLOB NOT NULL UNIQUE,
		role         TEXT NOT NULL CHECK (role IN ('http_user', 'grpc_admin')),
		name         TEXT NOT NULL DEFAULT '',
		created_at   INTEGER NOT NULL,
		last_used_at INTEGER,
		revoked_at   INTEGER,
		expires_at   INTEGER
	);`,
}

// migrate brings the schema up to date inside one write transaction, so two processes
// starting at once cannot both apply the same migration.
func (st *store) migrate(ctx context.Context) error {
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()

	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("migrate: database schema version %d is newer than this binary knows (%d)", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migrate: step %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no bound parameters; the value is an integer we control.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return fmt.Errorf("migrate: set schema version: %w", err)
	}
	return tx.Commit()
}

// ping reports whether the database answers a query.
func (st *store) ping(ctx context.Context) error {
	var one int
	return st.db.QueryRowContext(ctx, "SELECT 1 FROM sqlite_schema LIMIT 1").Scan(&one)
}

const eventColumns = "id, title, description, start_time, end_time, rewards, created_at, updated_at"

// scanner is the part of *sql.Row and *sql.Rows that scanEvent needs.
type scanner interface{ Scan(dest ...any) error }

func scanEvent(s scanner) (Event, error) {
	var e Event
	var start, end, created, updated int64
	if err := s.Scan(&e.ID, &e.Title, &e.Description, &start, &end, &e.Rewards, &created, &updated); err != nil {
		return Event{}, err
	}
	e.Start, e.End = fromNanos(start), fromNanos(end)
	e.CreatedAt, e.UpdatedAt = fromNanos(created), fromNanos(updated)
	return e, nil
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

// CreateEvent stores a new event. The caller has validated it and set its id and times.
func (st *store) CreateEvent(ctx context.Context, e Event) error {
	_, err := st.db.ExecContext(ctx,
		`INSERT INTO events (`+eventColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, e.Title, e.Description, e.Start.UnixNano(), e.End.UnixNano(), e.Rewards,
		e.CreatedAt.UnixNano(), e.UpdatedAt.UnixNano())
	if err != nil {
		return fmt.Errorf("create event: %w", err)
	}
	return nil
}

// Event returns the event with the given id, or errNotFound.
func (st *store) Event(ctx context.Context, id string) (Event, error) {
	e, err := scanEvent(st.db.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Event{}, errNotFound
	}
	if err != nil {
		return Event{}, fmt.Errorf("get event: %w", err)
	}
	return e, nil
}

// UpdateEvent replaces the event's fields but id and created_at, and returns the event as
// stored, or errNotFound.
func (st *store) UpdateEvent(ctx context.Context, e Event) (Event, error) {
	got, err := scanEvent(st.db.QueryRowContext(ctx,
		`UPDATE events SET title = ?, description = ?, start_time = ?, end_time = ?, rewards = ?, updated_at = ?
		WHERE id = ? RETURNING `+eventColumns,
		e.Title, e.Description, e.Start.UnixNano(), e.End.UnixNano(), e.Rewards, e.UpdatedAt.UnixNano(), e.ID))
	if errors.Is(err, sql.ErrNoRows) {
		return Event{}, errNotFound
	}
	if err != nil {
		return Event{}, fmt.Errorf("update event: %w", err)
	}
	return got, nil
}

// DeleteEvent removes the event, or returns errNotFound.
func (st *store) DeleteEvent(ctx context.Context, id string) error {
	res, err := st.db.ExecContext(ctx, `DELETE FROM events WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete event: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("delete event: %w", err)
	} else if n == 0 {
		return errNotFound
	}
	return nil
}

// Events returns every event, ordered by start time, then id.
func (st *store) Events(ctx context.Context) ([]Event, error) {
	return st.queryEvents(ctx, `SELECT `+eventColumns+` FROM events ORDER BY start_time, id`)
}

// ActiveEvents returns the events active at t (start_time <= t < end_time), ordered by start
// time, then id.
func (st *store) ActiveEvents(ctx context.Context, t time.Time) ([]Event, error) {
	n := t.UnixNano()
	return st.queryEvents(ctx,
		`SELECT `+eventColumns+` FROM events WHERE end_time > ? AND start_time <= ? ORDER BY start_time, id`, n, n)
}

func (st *store) queryEvents(ctx context.Context, query string, args ...any) ([]Event, error) {
	rows, err := st.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	events := []Event{}
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return events, nil
}

// CreateKey stores a new API key record. Only the key's hash is stored, never the key.
func (st *store) CreateKey(ctx context.Context, k apiKey) error {
	_, err := st.db.ExecContext(ctx,
		`INSERT INTO api_keys (id, hash, role, name, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
		k.ID, k.Hash[:], string(k.Role), k.Name, k.CreatedAt.UnixNano(), nullNanos(k.ExpiresAt))
	if err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	return nil
}

const keyColumns = "id, hash, role, name, created_at, last_used_at, revoked_at, expires_at"

func scanKey(s scanner) (apiKey, error) {
	var k apiKey
	var hash []byte
	var r string
	var created int64
	var lastUsed, revoked, expires sql.NullInt64
	if err := s.Scan(&k.ID, &hash, &r, &k.Name, &created, &lastUsed, &revoked, &expires); err != nil {
		return apiKey{}, err
	}
	if len(hash) != len(k.Hash) {
		return apiKey{}, fmt.Errorf("key %s has a malformed hash", k.ID)
	}
	copy(k.Hash[:], hash)
	k.Role = role(r)
	k.CreatedAt = fromNanos(created)
	k.LastUsedAt, k.RevokedAt, k.ExpiresAt = fromNullNanos(lastUsed), fromNullNanos(revoked), fromNullNanos(expires)
	return k, nil
}

// Keys returns every API key record, revoked ones too, oldest first.
func (st *store) Keys(ctx context.Context) ([]apiKey, error) {
	rows, err := st.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM api_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var keys []apiKey
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return keys, nil
}

// KeyByHash returns the key whose SHA-256 is hash, or errNotFound.
func (st *store) KeyByHash(ctx context.Context, hash [sha256.Size]byte) (apiKey, error) {
	k, err := scanKey(st.db.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE hash = ?`, hash[:]))
	if errors.Is(err, sql.ErrNoRows) {
		return apiKey{}, errNotFound
	}
	if err != nil {
		return apiKey{}, fmt.Errorf("get key: %w", err)
	}
	return k, nil
}

// HasKeys reports whether any API key, revoked or not, exists.
func (st *store) HasKeys(ctx context.Context) (bool, error) {
	var n int
	if err := st.db.QueryRowContext(ctx, `SELECT count(*) FROM api_keys`).Scan(&n); err != nil {
		return false, fmt.Errorf("count keys: %w", err)
	}
	return n > 0, nil
}

// RevokeKey marks the key revoked at t. Revoking a revoked key keeps the first time.
// It returns errNotFound when no key has that id.
func (st *store) RevokeKey(ctx context.Context, id string, t time.Time) error {
	res, err := st.db.ExecContext(ctx,
		`UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`, t.UnixNano(), id)
	if err != nil {
		return fmt.Errorf("revoke key: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("revoke key: %w", err)
	} else if n == 0 {
		return errNotFound
	}
	return nil
}

// TouchKeys records when keys were last used, in one transaction. A time older than the
// stored one is ignored, so out-of-order flushes never move last_used_at backwards.
func (st *store) TouchKeys(ctx context.Context, used map[string]time.Time) error {
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("touch keys: %w", err)
	}
	defer tx.Rollback()
	for id, t := range used {
		if _, err := tx.ExecContext(ctx,
			`UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?`, t.UnixNano(), id); err != nil {
			return fmt.Errorf("touch keys: %w", err)
		}
	}
	return tx.Commit()
}

// dataVersion returns a number that changes whenever another connection, in this process or
// another, commits a change to the database. conn must be the same connection every time.
func dataVersion(ctx context.Context, conn *sql.Conn) (int64, error) {
	var v int64
	err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v)
	return v, err
}

func nullNanos(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixNano(), Valid: true}
}

func fromNullNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return fromNanos(n.Int64)
}
