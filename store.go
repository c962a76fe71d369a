package main

import (
	"bytes"
	"cmp"
	"context"
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
	"sync/atomic"
	"time"
)

// store keeps events, their revisions and API keys in one SQLite file. Every SQL statement
// liveops runs is in this file, keystore.go (keys) or revisions.go (reading history).
//
// Times are stored as Unix nanoseconds in UTC, so that comparisons in SQL are integer
// comparisons and a protobuf Timestamp survives a round trip unchanged. Writes take their
// time from now and their actor from the context (see actorFrom).
type store struct {
	db  *db
	now func() time.Time
	// pg is set for PostgreSQL, and SQLite otherwise.
	pg bool
	// probe opens a new connection for every use (it keeps none idle), so that
	// CheckWritable sees the database as a new connection would.
	probe *db
	// readOnly is set while CheckWritable finds that a new connection cannot write. Writes
	// then fail at once, as they would on any connection opened since, rather than
	// succeeding now and then on one opened before the fault.
	readOnly atomic.Bool
	stats    *storeMetrics
}

// Errors the store returns. Each protocol maps them to its own status in one place.
var (
	// errNotFound: the event, revision or key asked for does not exist. The error returned
	// is a *notFoundError that says which, and is errNotFound under errors.Is.
	errNotFound = errors.New("not found")
	// errStale: the caller's etag is not the event's current one.
	errStale = errors.New("etag does not match: the event changed since it was read; read it again and retry")
	// errRequestReused: a create's request_id was used before for a different request.
	errRequestReused = errors.New("request_id was already used for a different request")
	// errBusy: another writer held the database for longer than busy_timeout.
	errBusy = errors.New("the database is busy; retry shortly")
	// errFull: the disk (or the database's page limit) is full.
	errFull = errors.New("storage is full; the write was not saved")
	// errRequestRaced: another create with the same request_id committed during this one.
	errRequestRaced = errors.New("a create with this request_id committed meanwhile")
	// errReadOnly: the database file or its directory cannot be written.
	errReadOnly = errors.New("the database cannot be written (read-only file or directory, or an I/O error); the write was not saved")
	// errUnavailable: the database server cannot be reached.
	errUnavailable = errors.New("the database cannot be reached; retry shortly")
)

// notFoundError says what was not found, in words a caller can act on.
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string        { return e.msg }
func (e *notFoundError) Is(target error) bool { return target == errNotFound }

// openStore opens the database path names, a SQLite file (created if needed) or a
// postgres:// URL, and migrates it to the current schema. Extra pragmas, such as
// "busy_timeout(200)", run on every SQLite connection after the defaults and so override
// them.
func openStore(ctx context.Context, path string, now func() time.Time, pragmas ...string) (*store, error) {
	return openStoreAs(ctx, path, now, true, pragmas...)
}

// openExistingStore opens a database that must already exist, so that a mistyped -db is an
// error rather than a new, empty database, and whose schema must be this binary's: the
// commands that use it never migrate, so running a newer binary's `export` against
// production cannot stop the server from starting.
func openExistingStore(ctx context.Context, path string) (*store, error) {
	if _, err := os.Stat(path); err != nil && !isPostgres(path) {
		return nil, fmt.Errorf("database %s does not exist (check -db or LIVEOPS_DB)", path)
	}
	return openStoreAs(ctx, path, time.Now, false)
}

// openStoreAs opens the database, migrating it when migrate is set and otherwise refusing
// a schema other than this binary's.
func openStoreAs(ctx context.Context, path string, now func() time.Time, migrate bool, pragmas ...string) (*store, error) {
	if isPostgres(path) {
		return openPostgres(ctx, path, now, migrate)
	}
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

	st, err := newStore("sqlite", dsn, now)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if migrate {
		err = st.migrate(ctx)
	} else {
		var version int
		if err = st.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err == nil && version != len(migrations) {
			err = fmt.Errorf("schema version %d, but this binary uses %d: start the matching server once to migrate it", version, len(migrations))
		}
	}
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return st, nil
}

// openPostgres opens a PostgreSQL database and migrates it (or, without migrate, checks
// its schema is this binary's). The URL is never repeated in an error: it may hold a
// password.
func openPostgres(ctx context.Context, url string, now func() time.Time, migrate bool) (*store, error) {
	st, err := newStore("pgx", url, now)
	if err == nil {
		err = st.migratePostgres(ctx, migrate)
		if err != nil {
			st.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open PostgreSQL database: %w", err)
	}
	return st, nil
}

// newStore opens the connection pools of a store; it connects to nothing yet.
func newStore(driver, dsn string, now func() time.Time) (*store, error) {
	pg := driver == "pgx"
	main, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	probe, err := sql.Open(driver, dsn)
	if err != nil {
		main.Close()
		return nil, err
	}
	probe.SetMaxIdleConns(0)
	return &store{db: &db{DB: main, pg: pg}, now: now, pg: pg, probe: &db{DB: probe, pg: pg}, stats: newStoreMetrics(main)}, nil
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

// Close closes the database.
func (st *store) Close() error {
	st.probe.Close()
	return st.db.Close()
}

// CheckWritable reports whether a new connection could write now: nil, or an error that
// says why not (errReadOnly, errBusy). It takes the write lock and starts an update, which
// is where a read-only file is found out, then rolls back: nothing is written, and other
// processes see no change.
func (st *store) CheckWritable(ctx context.Context) error {
	tx, err := st.probe.BeginTx(ctx, nil)
	if err == nil {
		_, err = tx.ExecContext(ctx, `UPDATE meta SET value = value WHERE name = 'events_generation'`)
		tx.Rollback()
	}
	err = st.storeError("check writable", err)
	st.readOnly.Store(errors.Is(err, errReadOnly))
	return err
}

// DiscardIdleConnections closes the pool's idle connections, so that the next statement
// opens a new one. A connection opened while the file could not be written is read-only
// for good; without this, writes would keep failing after the fault cleared.
func (st *store) DiscardIdleConnections() {
	st.db.SetMaxIdleConns(0)
	st.db.SetMaxIdleConns(defaultMaxIdleConns)
}

// defaultMaxIdleConns is database/sql's default, restored after DiscardIdleConnections.
const defaultMaxIdleConns = 2

// inTx runs fn in a write transaction and commits it when fn succeeds. Every error comes
// back through storeError, wrapped with op. After a read-only or I/O failure the idle
// connections are dropped, so that writes recover by themselves once the fault clears.
// In a traced request the transaction is a span of its own.
func (st *store) inTx(ctx context.Context, op string, fn func(tx *dbTx) error) (err error) {
	ctx, endSpan := txSpan(ctx, st.pg, op)
	defer endSpan(&err)
	if st.readOnly.Load() {
		return st.storeError(op, errReadOnly)
	}
	start := time.Now()
	tx, err := st.db.BeginTx(ctx, nil)
	if err == nil {
		if err = fn(tx); err == nil {
			err = tx.Commit()
		} else {
			tx.Rollback()
		}
		st.stats.observeTx(op, time.Since(start))
	}
	err = st.storeError(op, err)
	if errors.Is(err, errReadOnly) {
		st.DiscardIdleConnections()
	}
	return err
}

// storeError wraps err with op, turning the engine's busy, full, read-only and unreachable
// conditions into errBusy, errFull, errReadOnly and errUnavailable (see classify), so that
// callers can answer UNAVAILABLE or RESOURCE_EXHAUSTED, and counts those conditions. The
// engine's error stays in the chain too, for errors.Is and errors.As. A nil err stays nil.
func (st *store) storeError(op string, err error) error {
	if err == nil {
		return nil
	}
	if known := classify(err); known != nil && !errors.Is(err, known) {
		err = fmt.Errorf("%s: %w (%w)", op, known, err)
	} else {
		err = fmt.Errorf("%s: %w", op, err)
	}
	st.stats.countError(err)
	return err
}

// ping reports whether the database answers a query that reads a table.
func (st *store) ping(ctx context.Context) error {
	var gen int64
	return st.db.QueryRowContext(ctx, generationQuery).Scan(&gen)
}

// Backup writes a consistent copy of the database to path, which must not exist, while
// other connections keep reading and writing.
func (st *store) Backup(ctx context.Context, path string) error {
	if st.pg {
		return errors.New("backup copies SQLite files; for PostgreSQL use pg_dump (e.g. pg_dump -Fc -f liveops.dump DATABASE_URL)")
	}
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("backup: %s already exists", path)
	}
	if err := checkDatabaseDir(path); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	_, err := st.db.ExecContext(ctx, `VACUUM INTO ?`, path)
	return st.storeError("backup", err)
}

// dataVersion returns a number that changes whenever another connection, in this process or
// another, commits a change to the database. conn must be the same connection every time.
func dataVersion(ctx context.Context, conn *sql.Conn) (int64, error) {
	var v int64
	err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v)
	return v, err
}

// actorKey carries, in a context, who a write is attributed to when no API key made it
// (an import from the command line).
type actorKey struct{}

func withActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// actorFrom returns who a write made with ctx is recorded as: the id of the caller's key,
// or the actor withActor set.
func actorFrom(ctx context.Context) string {
	if k := callerFrom(ctx); k != nil {
		return k.ID
	}
	actor, _ := ctx.Value(actorKey{}).(string)
	return actor
}

// The event columns, in the order eventValues and scanEvent use.
const eventColumns = "id, title, description, start_time, end_time, rewards, created_at, updated_at, version, " +
	"preview_time, recurrence, priority, labels, state, audience, rollout_percent, time_mode, localizations"

// eventValues returns e's values in eventColumns order. An event that skipped validate
// (a test's) is stored with the targeting defaults, as validate would have set them.
func eventValues(e Event) []any {
	var audience, locs sql.NullString
	if e.Audience != nil {
		audience = sql.NullString{String: string(marshalJSON(toAudienceDoc(e.Audience))), Valid: true}
	}
	if len(e.Localizations) > 0 {
		locs = sql.NullString{String: string(marshalJSON(toLocalizationDocs(e.Localizations))), Valid: true}
	}
	return []any{e.ID, e.Title, e.Description, e.Start.UnixNano(), e.End.UnixNano(), e.Rewards,
		e.CreatedAt.UnixNano(), e.UpdatedAt.UnixNano(), e.Version,
		nullNanos(e.Preview), recurrenceJSON(e.Recurrence), e.Priority, strings.Join(e.Labels, ","), e.State,
		audience, cmp.Or(e.RolloutPercent, 100), cmp.Or(e.TimeMode, timeModeUTC), locs}
}

// scanner is the part of *sql.Row and *sql.Rows that the scan functions need.
type scanner interface{ Scan(dest ...any) error }

// querier is the part of db and tx that getEvent needs.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func scanEvent(s scanner) (Event, error) {
	var e Event
	var start, end, created, updated int64
	var preview sql.NullInt64
	var recurrence sql.NullString
	var labels string
	var audience, locs sql.NullString
	if err := s.Scan(&e.ID, &e.Title, &e.Description, &start, &end, &e.Rewards, &created, &updated, &e.Version,
		&preview, &recurrence, &e.Priority, &labels, &e.State, &audience, &e.RolloutPercent, &e.TimeMode, &locs); err != nil {
		return Event{}, err
	}
	if audience.Valid {
		var d *audienceDoc
		if err := json.Unmarshal([]byte(audience.String), &d); err != nil {
			return Event{}, fmt.Errorf("event %s: malformed audience %q: %w", e.ID, audience.String, err)
		}
		e.Audience = d.audience()
	}
	if locs.Valid {
		var d map[string]localizationDoc
		if err := json.Unmarshal([]byte(locs.String), &d); err != nil {
			return Event{}, fmt.Errorf("event %s: malformed localizations %q: %w", e.ID, locs.String, err)
		}
		e.Localizations = fromLocalizationDocs(d)
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
	return sql.NullString{String: string(marshalJSON(row)), Valid: true}
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

// getEvent returns the event with the given id, or a *notFoundError that says whether it
// was deleted.
func getEvent(ctx context.Context, q querier, id string) (Event, error) {
	return getEventSuffix(ctx, q, id, "")
}

// getEventToWrite is getEvent for a write that depends on what it reads: the row stays
// locked until the transaction ends.
func getEventToWrite(ctx context.Context, t *dbTx, id string) (Event, error) {
	return getEventSuffix(ctx, t, id, t.forUpdate())
}

func getEventSuffix(ctx context.Context, q querier, id, suffix string) (Event, error) {
	e, err := scanEvent(q.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE id = ?`+suffix, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Event{}, missingEvent(ctx, q, id)
	}
	return e, err
}

// WhyMissing returns a *notFoundError that says why there is no event with id: it never
// existed, or it was deleted and can be restored.
func (st *store) WhyMissing(ctx context.Context, id string) error {
	return st.storeError("get event", missingEvent(ctx, st.db, id))
}

// missingEvent explains why there is no event with id: it never existed, or it was deleted
// and can be restored.
func missingEvent(ctx context.Context, q querier, id string) error {
	var action string
	err := q.QueryRowContext(ctx, `SELECT action FROM event_revisions WHERE event_id = ? ORDER BY revision DESC LIMIT 1`, id).Scan(&action)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return &notFoundError{"no event with id " + id}
	case err != nil:
		return err
	case action == "delete":
		return &notFoundError{"event " + id + " was deleted; RestoreEvent with a revision from ListEventRevisions brings it back"}
	}
	return &notFoundError{"no event with id " + id}
}

// putEvent inserts e, or replaces the stored event with its id when that one is still at
// version prev (0 for an event that does not exist). Otherwise it writes nothing and
// returns errStale, so that it alone guarantees no write is lost, whatever lock the
// transaction holds.
func putEvent(ctx context.Context, tx *dbTx, e Event, prev int64) error {
	res, err := tx.ExecContext(ctx, `INSERT INTO events (`+eventColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET title = excluded.title, description = excluded.description,
			start_time = excluded.start_time, end_time = excluded.end_time, rewards = excluded.rewards,
			created_at = excluded.created_at, updated_at = excluded.updated_at, version = excluded.version,
			preview_time = excluded.preview_time, recurrence = excluded.recurrence, priority = excluded.priority,
			labels = excluded.labels, state = excluded.state, audience = excluded.audience,
			rollout_percent = excluded.rollout_percent, time_mode = excluded.time_mode, localizations = excluded.localizations
		WHERE events.version = ?`, append(eventValues(e), prev)...)
	return oneRowOrStale(res, err)
}

// removeEvent deletes the event with id when it is still at version prev, else returns errStale.
func removeEvent(ctx context.Context, tx *dbTx, id string, prev int64) error {
	res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE id = ? AND version = ?`, id, prev)
	return oneRowOrStale(res, err)
}

// oneRowOrStale turns a conditional write's result into errStale when its condition
// matched no row.
func oneRowOrStale(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return errStale
	}
	return nil
}

// lastVersion returns the highest version the event with id ever had, deleted or not, so
// that versions only grow and an old etag never matches again.
func lastVersion(ctx context.Context, tx *dbTx, id string) (int64, error) {
	var v int64
	err := tx.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM event_revisions WHERE event_id = ?`, id).Scan(&v)
	return v, err
}

// lockGeneration comes first in every transaction that writes events. On PostgreSQL it
// locks the events generation's row until commit, so that event writers take turns and
// take their locks in one order. Otherwise an import, which locks its events one by one
// and bumps the generation after each, and an update that has locked one of those events
// and waits for the generation would each wait for the other, and one would fail with a
// deadlock. SQLite's BEGIN IMMEDIATE already makes writers take turns.
func lockGeneration(ctx context.Context, tx *dbTx) error {
	if !tx.pg {
		return nil
	}
	var gen int64
	return tx.QueryRowContext(ctx, generationQuery+` FOR UPDATE`).Scan(&gen)
}

// recordWrite records a write to e made at at: a revision, numbered after the event's last
// one and attributed to the actor in ctx and to its trace, holding e as JSON; and one more
// events generation, which it returns. Every write to events calls it before committing.
//
// The revision carries the generation, so that a server holding an older snapshot can
// read what changed since (see ChangesSince) instead of every event.
//
// Writers take turns at the generation (see lockGeneration), so revision numbers and
// generations never collide.
func recordWrite(ctx context.Context, tx *dbTx, action string, at time.Time, e Event) (int64, error) {
	var gen int64
	if err := tx.QueryRowContext(ctx,
		`UPDATE meta SET value = value + 1 WHERE name = 'events_generation' RETURNING value`).Scan(&gen); err != nil {
		return 0, err
	}
	if err := notifyChange(ctx, tx); err != nil {
		return 0, err
	}
	// The casts tell PostgreSQL the types of placeholders that stand in a SELECT list.
	_, err := tx.ExecContext(ctx,
		`INSERT INTO event_revisions (event_id, revision, action, key_id, at, event, generation, version, trace_id)
		SELECT CAST(? AS TEXT), coalesce(max(revision), 0) + 1, CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT),
			CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT)
		FROM event_revisions WHERE event_id = ?`,
		e.ID, action, actorFrom(ctx), at.UnixNano(), string(marshalJSON(toDoc(e, true))), gen, e.Version, traceIDFrom(ctx), e.ID)
	return gen, err
}

// createRequestTTL is how long a create's request_id is remembered. The promise to clients
// is 24 hours; keeping them a week costs little and covers a retry queue stuck over a weekend.
const createRequestTTL = 7 * 24 * time.Hour

// CreateEvent stores a new event, which the caller has validated and given an id. It sets
// the event's times and version, and returns it as stored with the events generation.
//
// A non-empty requestID makes the create idempotent: when it was seen before for the same
// event content (see Event.fingerprint), CreateEvent stores nothing and returns the event
// that request created, with generation 0; for other content it returns errRequestReused.
func (st *store) CreateEvent(ctx context.Context, e Event, requestID string) (Event, int64, error) {
	now := st.now().UTC()
	e.CreatedAt, e.UpdatedAt, e.Version = now, now, 1
	fingerprint := e.fingerprint()
	var gen int64
	create := func(tx *dbTx) error {
		if err := lockGeneration(ctx, tx); err != nil {
			return err
		}
		if requestID != "" {
			var seen []byte
			var eventID string
			err := tx.QueryRowContext(ctx, `SELECT fingerprint, event_id FROM create_requests WHERE request_id = ?`, requestID).Scan(&seen, &eventID)
			switch {
			case err == nil && !bytes.Equal(seen, fingerprint):
				return errRequestReused
			case err == nil:
				e, err = getEvent(ctx, tx, eventID) // not found: created, then deleted
				return err
			case !errors.Is(err, sql.ErrNoRows):
				return err
			}
			// Two creates with one request_id at once: the second waits here for the
			// first to commit, then inserts nothing, and answers as a retry would.
			res, err := tx.ExecContext(ctx,
				`INSERT INTO create_requests (request_id, fingerprint, event_id, created_at) VALUES (?, ?, ?, ?)
				ON CONFLICT (request_id) DO NOTHING`,
				requestID, fingerprint, e.ID, now.UnixNano())
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return errRequestRaced
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM create_requests WHERE created_at < ?`,
				now.Add(-createRequestTTL).UnixNano()); err != nil {
				return err
			}
		}
		if err := putEvent(ctx, tx, e, 0); err != nil {
			return err
		}
		var err error
		gen, err = recordWrite(ctx, tx, "create", now, e)
		return err
	}
	err := st.inTx(ctx, "create event", create)
	if errors.Is(err, errRequestRaced) {
		err = st.inTx(ctx, "create event", create) // the other create has committed: answer as a retry
	}
	if err != nil {
		return Event{}, 0, err
	}
	return e, gen, nil
}

// applyChange returns cur changed by change, as the next version, after checking etag
// against it (an empty etag matches any version). The update and its dry run share it.
func applyChange(cur Event, etag string, now time.Time, change func(*Event) error) (Event, error) {
	if etag != "" && etag != cur.ETag() {
		return Event{}, errStale
	}
	e := cur
	if err := change(&e); err != nil {
		return Event{}, err
	}
	e.ID, e.CreatedAt, e.UpdatedAt, e.Version = cur.ID, cur.CreatedAt, now, cur.Version+1
	return e, nil
}

// UpdateEvent changes the event with the given id: change receives a copy of the event as
// stored and edits it (returning an error to refuse). When etag is not empty it must be the
// event's current one, or UpdateEvent returns errStale and changes nothing. It returns the
// event as stored after the write, with the next version, and the events generation.
func (st *store) UpdateEvent(ctx context.Context, id, etag string, change func(*Event) error) (Event, int64, error) {
	now := st.now().UTC()
	var e Event
	var gen int64
	err := st.inTx(ctx, "update event", func(tx *dbTx) error {
		if err := lockGeneration(ctx, tx); err != nil {
			return err
		}
		cur, err := getEventToWrite(ctx, tx, id)
		if err != nil {
			return err
		}
		if e, err = applyChange(cur, etag, now, change); err != nil {
			return err
		}
		if err := putEvent(ctx, tx, e, cur.Version); err != nil {
			return err
		}
		gen, err = recordWrite(ctx, tx, "update", now, e)
		return err
	})
	if err != nil {
		return Event{}, 0, err
	}
	return e, gen, nil
}

// DeleteEvent removes the event. When etag is not empty it must be the event's current
// one, or DeleteEvent returns errStale and deletes nothing. It returns the events
// generation after the write.
func (st *store) DeleteEvent(ctx context.Context, id, etag string) (int64, error) {
	var gen int64
	err := st.inTx(ctx, "delete event", func(tx *dbTx) error {
		if err := lockGeneration(ctx, tx); err != nil {
			return err
		}
		e, err := getEventToWrite(ctx, tx, id)
		if err != nil {
			return err
		}
		if etag != "" && etag != e.ETag() {
			return errStale
		}
		if err := removeEvent(ctx, tx, id, e.Version); err != nil {
			return err
		}
		// The revision holds the event as it stood before the delete.
		gen, err = recordWrite(ctx, tx, "delete", st.now().UTC(), e)
		return err
	})
	return gen, err
}

// RestoreEvent makes the event look as it did at a revision again, as a new revision,
// bringing a deleted event back under its old id. When etag is not empty it must be the
// event's current one (a deleted event has none, so any etag is stale). It returns the
// event as stored and the events generation.
func (st *store) RestoreEvent(ctx context.Context, id string, rev int64, etag string) (Event, int64, error) {
	now := st.now().UTC()
	var e Event
	var gen int64
	err := st.inTx(ctx, "restore event", func(tx *dbTx) error {
		if err := lockGeneration(ctx, tx); err != nil {
			return err
		}
		target, err := scanRevision(tx.QueryRowContext(ctx, revisionSelect+` WHERE r.event_id = ? AND r.revision = ?`, id, rev))
		if errors.Is(err, sql.ErrNoRows) {
			return &notFoundError{fmt.Sprintf("event %s has no revision %d (see ListEventRevisions)", id, rev)}
		}
		if err != nil {
			return err
		}
		cur, err := getEventToWrite(ctx, tx, id)
		exists := err == nil
		if err != nil && !errors.Is(err, errNotFound) {
			return err
		}
		if etag != "" && (!exists || etag != cur.ETag()) {
			return errStale
		}
		last, err := lastVersion(ctx, tx, id)
		if err != nil {
			return err
		}
		e = target.Event
		e.ID, e.UpdatedAt, e.Version = id, now, max(last, cur.Version)+1
		if err := putEvent(ctx, tx, e, cur.Version); err != nil {
			return err
		}
		gen, err = recordWrite(ctx, tx, "restore", now, e)
		return err
	})
	if err != nil {
		return Event{}, 0, err
	}
	return e, gen, nil
}

// importChange is what an import does to one event.
type importChange struct {
	ID     string
	Action string   // create, update or unchanged
	Fields []string // for an update: "field: old -> new", one a changed field
}

// Import creates or updates every event in events by id, in one transaction, recording a
// revision for each change; events already as in the file are left alone. With dryRun it
// works out the same changes and writes nothing. It returns the changes and the events
// generation (0 when nothing was written).
func (st *store) Import(ctx context.Context, events []Event, dryRun bool) ([]importChange, int64, error) {
	now := st.now().UTC()
	var changes []importChange
	var gen int64
	err := st.inTx(ctx, "import", func(tx *dbTx) error {
		if err := lockGeneration(ctx, tx); err != nil {
			return err
		}
		for _, e := range events {
			cur, err := getEventToWrite(ctx, tx, e.ID)
			exists := err == nil
			if err != nil && !errors.Is(err, errNotFound) {
				return err
			}
			c := importChange{ID: e.ID, Action: "create"}
			if exists {
				c.Action, c.Fields = "update", diffEvents(cur, e)
				if len(c.Fields) == 0 {
					c.Action = "unchanged"
				}
			}
			changes = append(changes, c)
			if dryRun || c.Action == "unchanged" {
				continue
			}
			// The event may have existed before and been deleted: carry on its versions.
			last, err := lastVersion(ctx, tx, e.ID)
			if err != nil {
				return err
			}
			e.CreatedAt, e.UpdatedAt, e.Version = now, now, max(last, cur.Version)+1
			if exists {
				e.CreatedAt = cur.CreatedAt
			}
			if err := putEvent(ctx, tx, e, cur.Version); err != nil {
				return err
			}
			if gen, err = recordWrite(ctx, tx, c.Action, now, e); err != nil {
				return err
			}
		}
		if dryRun {
			return errDryRun // rolls back
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		err = nil
	}
	if err != nil {
		return nil, 0, err
	}
	return changes, gen, nil
}

// errDryRun ends a dry run's transaction without committing it.
var errDryRun = errors.New("dry run")

// Events returns every event and the events generation they reflect, read in one
// transaction, in no particular order.
func (st *store) Events(ctx context.Context) ([]Event, int64, error) {
	// A read-only transaction is a plain (deferred) BEGIN: it takes no write lock.
	tx, err := st.db.BeginTx(ctx, st.consistentRead())
	if err != nil {
		return nil, 0, st.storeError("list events", err)
	}
	defer tx.Rollback()
	var gen int64
	if err := tx.QueryRowContext(ctx, generationQuery).Scan(&gen); err != nil {
		return nil, 0, st.storeError("list events", err)
	}
	// A plain table scan reads pages in order; ORDER BY would walk an index and fetch every
	// row from the table at random, several times slower for a large table.
	rows, err := tx.QueryContext(ctx, `SELECT `+eventColumns+` FROM events`)
	if err != nil {
		return nil, 0, st.storeError("list events", err)
	}
	defer rows.Close()
	events := []Event{}
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, 0, st.storeError("list events", err)
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, st.storeError("list events", err)
	}
	return events, gen, nil
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

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
