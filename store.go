package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"modernc.org/sqlite" // registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"
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
// current schema. Extra pragmas, such as "busy_timeout(200)", run on every connection
// after the defaults and so override them.
func openStore(ctx context.Context, path string, pragmas ...string) (*store, error) {
	return openStoreAs(ctx, path, true, pragmas...)
}

// openStoreAs opens the database, migrating it when migrate is set and otherwise refusing
// a schema other than this binary's.
func openStoreAs(ctx context.Context, path string, migrate bool, pragmas ...string) (*store, error) {
	if err := checkDatabaseDir(path); err != nil {
		return nil, err
	}
	// The pragmas go in the DSN, not in db.Exec, because database/sql pools connections and an
	// Exec reaches only one of them.
	//   journal_mode(WAL): readers never block the writer, nor the writer readers.
	//   synchronous(FULL): an acknowledged admin write survives a power cut, not only a crash.
	//   busy_timeout(5000): a writer waits up to 5 s for another writer instead of failing at once.
	//   foreign_keys(1): SQLite leaves them off unless asked.
	// _txlock=immediate makes BEGIN take the write lock up front, so two read-then-write
	// transactions cannot deadlock by both upgrading a shared lock.
	all := []string{"busy_timeout(5000)", "journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)"}
	for _, p := range pragmas {
		// The driver sorts pragmas, so an override must replace the default, not follow it.
		name, _, _ := strings.Cut(p, "(")
		all = slices.DeleteFunc(all, func(d string) bool { return strings.HasPrefix(d, name+"(") })
		all = append(all, p)
	}
	q := url.Values{"_pragma": all}
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()

	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	st := &store{db: db}
	if migrate {
		err = st.migrate(ctx)
	} else {
		var version int
		if err = db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err == nil && version != len(migrations) {
			err = fmt.Errorf("schema version %d, but this binary uses %d: start the matching server once to migrate it", version, len(migrations))
		}
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return st, nil
}

// checkDatabaseDir makes sure the directory that will hold the database exists and takes
// new files: SQLite creates the -wal and -shm files beside the database, and otherwise
// fails later with a vaguer "unable to open database file".
func checkDatabaseDir(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("database directory %s does not exist", dir)
	case err != nil:
		return fmt.Errorf("database directory %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("database directory %s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".liveops-probe-*")
	if err != nil {
		return fmt.Errorf("database directory %s is not writable", dir)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// Backup writes a consistent copy of the database to path, which must not exist, while
// other connections keep reading and writing.
func (st *store) Backup(ctx context.Context, path string) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("backup: %s already exists", path)
	}
	if err := checkDatabaseDir(path); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if _, err := st.db.ExecContext(ctx, `VACUUM INTO ?`, path); err != nil {
		return storeError("backup", err)
	}
	return nil
}

// integrityCheck runs PRAGMA integrity_check and returns its verdict: "ok" when the file is
// sound.
func (st *store) integrityCheck(ctx context.Context) (string, error) {
	rows, err := st.db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return "", err
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n"), rows.Err()
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
	// 2: etags (a version bumped on every write) and idempotent creates.
	`ALTER TABLE events ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
	CREATE TABLE create_requests (
		request_id  TEXT PRIMARY KEY,
		fingerprint BLOB NOT NULL,
		event_id    TEXT NOT NULL,
		created_at  INTEGER NOT NULL
	);
	CREATE INDEX create_requests_by_time ON create_requests (created_at);`,
	// 3: a generation counter that every event write bumps in its transaction, so a server
	// can tell whether the database holds event writes its read model has not seen.
	`CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
	INSERT INTO meta (name, value) VALUES ('events_generation', 0);`,
	// 4: scheduling: previews, recurrence (JSON, NULL for none), priority, labels (comma
	// separated, sorted) and drafts.
	`ALTER TABLE events ADD COLUMN preview_time INTEGER;
	ALTER TABLE events ADD COLUMN recurrence TEXT;
	ALTER TABLE events ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE events ADD COLUMN labels TEXT NOT NULL DEFAULT '';
	ALTER TABLE events ADD COLUMN state TEXT NOT NULL DEFAULT 'PUBLISHED' CHECK (state IN ('PUBLISHED', 'DRAFT'));`,
	// 5: history. A revision per write, kept after the event is deleted (no foreign key), with
	// the event as it stood after the write (before it, for a delete) as JSON.
	`CREATE TABLE event_revisions (
		event_id TEXT NOT NULL,
		revision INTEGER NOT NULL,
		action   TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete', 'restore')),
		key_id   TEXT NOT NULL,
		at       INTEGER NOT NULL,
		event    TEXT NOT NULL,
		PRIMARY KEY (event_id, revision)
	);
	CREATE INDEX event_revisions_by_time ON event_revisions (at, event_id, revision);
	CREATE INDEX event_revisions_by_key ON event_revisions (key_id, at);`,
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

const eventColumns = "id, title, description, start_time, end_time, rewards, created_at, updated_at, version, " +
	"preview_time, recurrence, priority, labels, state"

// eventValues returns e's values in eventColumns order.
func eventValues(e Event) []any {
	return []any{e.ID, e.Title, e.Description, e.Start.UnixNano(), e.End.UnixNano(), e.Rewards,
		e.CreatedAt.UnixNano(), e.UpdatedAt.UnixNano(), e.Version,
		nullNanos(e.Preview), recurrenceJSON(e.Recurrence), e.Priority, strings.Join(e.Labels, ","), e.State}
}

// recurrenceRow is how a recurrence is stored: JSON in one column, NULL when the event does
// not repeat.
type recurrenceRow struct {
	Interval int    `json:"interval"`
	Unit     string `json:"unit"`
	TimeZone string `json:"time_zone"`
	Until    int64  `json:"until,omitempty"` // Unix nanoseconds
	Count    int    `json:"count,omitempty"`
}

func recurrenceJSON(r Recurrence) sql.NullString {
	if !r.repeats() {
		return sql.NullString{}
	}
	row := recurrenceRow{Interval: r.Interval, Unit: r.Unit, TimeZone: r.TimeZone, Count: r.Count}
	if !r.Until.IsZero() {
		row.Until = r.Until.UnixNano()
	}
	b, _ := json.Marshal(row) // a struct of ints and strings always encodes
	return sql.NullString{String: string(b), Valid: true}
}

func parseRecurrence(s sql.NullString) (Recurrence, error) {
	if !s.Valid {
		return Recurrence{}, nil
	}
	var row recurrenceRow
	if err := json.Unmarshal([]byte(s.String), &row); err != nil {
		return Recurrence{}, fmt.Errorf("malformed recurrence %q: %w", s.String, err)
	}
	r := Recurrence{Interval: row.Interval, Unit: row.Unit, TimeZone: row.TimeZone, Count: row.Count}
	if row.Until != 0 {
		r.Until = fromNanos(row.Until)
	}
	return r, nil
}

// scanner is the part of *sql.Row and *sql.Rows that scanEvent needs.
type scanner interface{ Scan(dest ...any) error }

func scanEvent(s scanner) (Event, error) {
	var e Event
	var start, end, created, updated int64
	var preview sql.NullInt64
	var recurrence sql.NullString
	var labels string
	if err := s.Scan(&e.ID, &e.Title, &e.Description, &start, &end, &e.Rewards, &created, &updated, &e.Version,
		&preview, &recurrence, &e.Priority, &labels, &e.State); err != nil {
		return Event{}, err
	}
	e.Start, e.End = fromNanos(start), fromNanos(end)
	e.CreatedAt, e.UpdatedAt = fromNanos(created), fromNanos(updated)
	e.Preview = fromNullNanos(preview)
	if labels != "" {
		e.Labels = strings.Split(labels, ",")
	}
	var err error
	e.Recurrence, err = parseRecurrence(recurrence)
	return e, err
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

// Errors from event writes, beyond errNotFound.
var (
	// errStale: the caller's etag is not the event's current one.
	errStale = errors.New("etag does not match: the event changed since it was read")
	// errRequestReused: a create's request_id was used before for a different request.
	errRequestReused = errors.New("request_id was already used for a different request")
	// errBusy: another writer held the database for longer than busy_timeout.
	errBusy = errors.New("database is busy")
	// errFull: the disk (or the database's page limit) is full.
	errFull = errors.New("database or disk is full")
)

// storeError turns SQLite's busy and full conditions into errBusy and errFull, so callers
// can answer UNAVAILABLE or RESOURCE_EXHAUSTED, and wraps everything with op.
func storeError(op string, err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%s: %w (%v)", op, errBusy, err)
		case sqlite3.SQLITE_FULL:
			return fmt.Errorf("%s: %w (%v)", op, errFull, err)
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// bumpGeneration increments the events generation inside tx and returns the new value.
// Every write to events calls it before committing.
func bumpGeneration(ctx context.Context, tx *sql.Tx) (int64, error) {
	var gen int64
	err := tx.QueryRowContext(ctx,
		`UPDATE meta SET value = value + 1 WHERE name = 'events_generation' RETURNING value`).Scan(&gen)
	return gen, err
}

// Generation returns the events generation: it grows by one with every committed event
// write, by any process.
func (st *store) Generation(ctx context.Context) (int64, error) {
	var gen int64
	err := st.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'events_generation'`).Scan(&gen)
	if err != nil {
		return 0, storeError("read generation", err)
	}
	return gen, nil
}

// createRequestTTL is how long a create's request_id is remembered. The promise to clients
// is 24 hours; keeping them a week costs little and covers a retry queue stuck over a weekend.
const createRequestTTL = 7 * 24 * time.Hour

// CreateEvent stores a new event. The caller has validated it and set its id and times.
//
// A non-empty requestID makes the create idempotent: when it was seen before with the same
// fingerprint (a hash of the request), CreateEvent stores nothing and returns the event that
// request created, with created false; with another fingerprint it returns errRequestReused.
//
// gen is the events generation after the write; 0 when nothing was written.
//
// actor is the id of the key that asked, for the revision the write records.
func (st *store) CreateEvent(ctx context.Context, e Event, requestID string, fingerprint []byte, actor string) (got Event, gen int64, err error) {
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		return Event{}, 0, storeError("create event", err)
	}
	defer tx.Rollback()

	if requestID != "" {
		var seen []byte
		var eventID string
		err := tx.QueryRowContext(ctx, `SELECT fingerprint, event_id FROM create_requests WHERE request_id = ?`, requestID).Scan(&seen, &eventID)
		switch {
		case err == nil && !bytes.Equal(seen, fingerprint):
			return Event{}, 0, errRequestReused
		case err == nil:
			e, err := scanEvent(tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`, eventID))
			if errors.Is(err, sql.ErrNoRows) {
				return Event{}, 0, errNotFound // created, then deleted
			}
			if err != nil {
				return Event{}, 0, storeError("create event", err)
			}
			return e, 0, nil
		case !errors.Is(err, sql.ErrNoRows):
			return Event{}, 0, storeError("create event", err)
		}
	}

	e.Version = 1
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO events (`+eventColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		eventValues(e)...); err != nil {
		return Event{}, 0, storeError("create event", err)
	}
	if requestID != "" {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO create_requests (request_id, fingerprint, event_id, created_at) VALUES (?, ?, ?, ?)`,
			requestID, fingerprint, e.ID, e.CreatedAt.UnixNano()); err != nil {
			return Event{}, 0, storeError("create event", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM create_requests WHERE created_at < ?`,
			e.CreatedAt.Add(-createRequestTTL).UnixNano()); err != nil {
			return Event{}, 0, storeError("create event", err)
		}
	}
	if err := writeRevision(ctx, tx, "create", actor, e.CreatedAt, e); err != nil {
		return Event{}, 0, storeError("create event", err)
	}
	if gen, err = bumpGeneration(ctx, tx); err != nil {
		return Event{}, 0, storeError("create event", err)
	}
	if err := tx.Commit(); err != nil {
		return Event{}, 0, storeError("create event", err)
	}
	return e, gen, nil
}

// Event returns the event with the given id, or errNotFound.
func (st *store) Event(ctx context.Context, id string) (Event, error) {
	e, err := scanEvent(st.db.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Event{}, errNotFound
	}
	if err != nil {
		return Event{}, storeError("get event", err)
	}
	return e, nil
}

// UpdateEvent changes the event with the given id: change receives the event as stored and
// edits it in place (returning an error to refuse). When etag is not empty it must be the
// event's current one, or UpdateEvent returns errStale and changes nothing. It returns the
// event as stored after the write, with a new version, and the events generation; or
// errNotFound.
//
// With dryRun, UpdateEvent checks everything (existence, etag, change) and returns the event
// as it would be, but writes nothing; the generation is 0.
func (st *store) UpdateEvent(ctx context.Context, id, etag string, now time.Time, dryRun bool, actor string, change func(*Event) error) (Event, int64, error) {
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		return Event{}, 0, storeError("update event", err)
	}
	defer tx.Rollback()

	e, err := scanEvent(tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Event{}, 0, errNotFound
	}
	if err != nil {
		return Event{}, 0, storeError("update event", err)
	}
	if etag != "" && etag != e.ETag() {
		return Event{}, 0, errStale
	}
	read, created := e.Version, e.CreatedAt
	if err := change(&e); err != nil {
		return Event{}, 0, err
	}
	e.ID, e.CreatedAt, e.UpdatedAt, e.Version = id, created, now, read+1
	if dryRun {
		return e, 0, nil // the deferred Rollback ends the transaction
	}
	// The write lock is held since BEGIN IMMEDIATE, so the version cannot have moved; the
	// condition is still in the UPDATE so that it alone would be enough.
	res, err := tx.ExecContext(ctx,
		`UPDATE events SET title = ?, description = ?, start_time = ?, end_time = ?, rewards = ?, updated_at = ?, version = ?,
		preview_time = ?, recurrence = ?, priority = ?, labels = ?, state = ?
		WHERE id = ? AND version = ?`,
		e.Title, e.Description, e.Start.UnixNano(), e.End.UnixNano(), e.Rewards, e.UpdatedAt.UnixNano(), e.Version,
		nullNanos(e.Preview), recurrenceJSON(e.Recurrence), e.Priority, strings.Join(e.Labels, ","), e.State, id, read)
	if err != nil {
		return Event{}, 0, storeError("update event", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return Event{}, 0, errStale
	}
	if err := writeRevision(ctx, tx, "update", actor, now, e); err != nil {
		return Event{}, 0, storeError("update event", err)
	}
	gen, err := bumpGeneration(ctx, tx)
	if err != nil {
		return Event{}, 0, storeError("update event", err)
	}
	if err := tx.Commit(); err != nil {
		return Event{}, 0, storeError("update event", err)
	}
	return e, gen, nil
}

// DeleteEvent removes the event, or returns errNotFound. When etag is not empty it must be
// the event's current one, or DeleteEvent returns errStale and deletes nothing. It returns
// the events generation after the write.
func (st *store) DeleteEvent(ctx context.Context, id, etag string, now time.Time, actor string) (int64, error) {
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, storeError("delete event", err)
	}
	defer tx.Rollback()
	e, err := scanEvent(tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return 0, errNotFound
	}
	if err != nil {
		return 0, storeError("delete event", err)
	}
	if etag != "" && etag != e.ETag() {
		return 0, errStale
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM events WHERE id = ? AND version = ?`, id, e.Version); err != nil {
		return 0, storeError("delete event", err)
	}
	if err := writeRevision(ctx, tx, "delete", actor, now, e); err != nil {
		return 0, storeError("delete event", err)
	}
	gen, err := bumpGeneration(ctx, tx)
	if err != nil {
		return 0, storeError("delete event", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, storeError("delete event", err)
	}
	return gen, nil
}

// Events returns every event, ordered by start time, then id, and the events generation
// they reflect, read in one transaction.
func (st *store) Events(ctx context.Context) ([]Event, int64, error) {
	// A read-only transaction is a plain (deferred) BEGIN: it takes no write lock.
	tx, err := st.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, 0, storeError("list events", err)
	}
	defer tx.Rollback()
	var gen int64
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'events_generation'`).Scan(&gen); err != nil {
		return nil, 0, storeError("list events", err)
	}
	// A plain table scan reads pages in order; ORDER BY would walk the start-time index and
	// fetch every row from the table at random, several times slower for a large table.
	rows, err := tx.QueryContext(ctx, `SELECT `+eventColumns+` FROM events`)
	if err != nil {
		return nil, 0, storeError("list events", err)
	}
	defer rows.Close()
	events := []Event{}
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, 0, storeError("list events", err)
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, storeError("list events", err)
	}
	slices.SortFunc(events, func(a, b Event) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return events, gen, nil
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
