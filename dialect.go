package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"modernc.org/sqlite"               // registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"
)

// This file holds the few places where SQLite and PostgreSQL differ, so that the store
// writes every statement once: how a -db value names an engine, placeholders, the
// schema, locking a row for a write, and what each engine's errors mean.

// isPostgres reports whether a -db value names a PostgreSQL database rather than a file.
func isPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// redactDSN returns a -db value fit for a log line: a PostgreSQL URL without its password.
func redactDSN(dsn string) string {
	if !isPostgres(dsn) {
		return dsn
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	return u.Redacted()
}

// db is a *sql.DB that speaks the store's dialect: statements are written once, with ?
// placeholders, and rebound to $1, $2... for PostgreSQL.
type db struct {
	*sql.DB
	pg bool
}

func (d *db) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return d.DB.ExecContext(ctx, rebind(d.pg, q), args...)
}

func (d *db) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return d.DB.QueryContext(ctx, rebind(d.pg, q), args...)
}

func (d *db) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return d.DB.QueryRowContext(ctx, rebind(d.pg, q), args...)
}

func (d *db) Exec(q string, args ...any) (sql.Result, error) {
	return d.ExecContext(context.Background(), q, args...)
}

func (d *db) BeginTx(ctx context.Context, opts *sql.TxOptions) (*dbTx, error) {
	t, err := d.DB.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &dbTx{Tx: t, pg: d.pg}, nil
}

// dbTx is a *sql.Tx that speaks the store's dialect, like db.
type dbTx struct {
	*sql.Tx
	pg bool
}

func (t *dbTx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.Tx.ExecContext(ctx, rebind(t.pg, q), args...)
}

func (t *dbTx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.Tx.QueryContext(ctx, rebind(t.pg, q), args...)
}

func (t *dbTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return t.Tx.QueryRowContext(ctx, rebind(t.pg, q), args...)
}

// consistentRead returns the options of a read-only transaction that reads several things that must agree,
// such as the events generation and the events: on PostgreSQL, REPEATABLE READ, so that
// every statement sees the same snapshot (READ COMMITTED gives each its own). SQLite's
// read transactions see one snapshot already.
func (st *store) consistentRead() *sql.TxOptions {
	if st.pg {
		return &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead}
	}
	return &sql.TxOptions{ReadOnly: true}
}

// forUpdate is what a read that a write depends on ends with: PostgreSQL locks the row
// until the transaction ends, so that two writers of one event queue rather than both
// reading the same version. SQLite's BEGIN IMMEDIATE already holds the database's one
// write lock.
func (t *dbTx) forUpdate() string {
	if t.pg {
		return " FOR UPDATE"
	}
	return ""
}

// rebound caches statements rebound for PostgreSQL: they are a fixed set.
var rebound sync.Map // string -> string

// rebind returns q with its ? placeholders numbered $1, $2... when pg is set. No statement
// liveops runs has a ? anywhere but as a placeholder.
func rebind(pg bool, q string) string {
	if !pg || !strings.Contains(q, "?") {
		return q
	}
	if r, ok := rebound.Load(q); ok {
		return r.(string)
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	rebound.Store(q, b.String())
	return b.String()
}

// postgresSchema is the PostgreSQL schema: SQLite's after every migration, with
// PostgreSQL's types (BIGINT for nanoseconds, BYTEA for hashes). Its versions count
// separately from SQLite's, in schema_version.
var postgresSchema = []string{
	`CREATE TABLE events (
		id           TEXT PRIMARY KEY,
		title        TEXT NOT NULL,
		description  TEXT NOT NULL DEFAULT '',
		start_time   BIGINT NOT NULL,
		end_time     BIGINT NOT NULL,
		rewards      TEXT NOT NULL DEFAULT '{}',
		created_at   BIGINT NOT NULL,
		updated_at   BIGINT NOT NULL,
		version      BIGINT NOT NULL DEFAULT 1,
		preview_time BIGINT,
		recurrence   TEXT,
		priority     INTEGER NOT NULL DEFAULT 0,
		labels       TEXT NOT NULL DEFAULT '',
		state        TEXT NOT NULL DEFAULT 'PUBLISHED' CHECK (state IN ('PUBLISHED', 'DRAFT')),
		CHECK (end_time > start_time)
	);
	CREATE INDEX events_by_end ON events (end_time, start_time);
	CREATE INDEX events_by_start ON events (start_time, id);
	CREATE TABLE api_keys (
		id           TEXT PRIMARY KEY,
		hash         BYTEA NOT NULL UNIQUE,
		role         TEXT NOT NULL CHECK (role IN ('http_user', 'grpc_admin')),
		name         TEXT NOT NULL DEFAULT '',
		created_at   BIGINT NOT NULL,
		last_used_at BIGINT,
		revoked_at   BIGINT,
		expires_at   BIGINT
	);
	CREATE TABLE create_requests (
		request_id  TEXT PRIMARY KEY,
		fingerprint BYTEA NOT NULL,
		event_id    TEXT NOT NULL,
		created_at  BIGINT NOT NULL
	);
	CREATE INDEX create_requests_by_time ON create_requests (created_at);
	CREATE TABLE meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
	INSERT INTO meta (name, value) VALUES ('events_generation', 0);
	CREATE TABLE event_revisions (
		event_id   TEXT NOT NULL,
		revision   BIGINT NOT NULL,
		action     TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete', 'restore')),
		key_id     TEXT NOT NULL,
		at         BIGINT NOT NULL,
		event      TEXT NOT NULL,
		generation BIGINT,
		version    BIGINT,
		PRIMARY KEY (event_id, revision)
	);
	CREATE INDEX event_revisions_by_time ON event_revisions (at, event_id, revision);
	CREATE INDEX event_revisions_by_key ON event_revisions (key_id, at);
	CREATE INDEX event_revisions_by_generation ON event_revisions (generation);`,
	// 2: the metrics role.
	`ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
	ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('http_user', 'grpc_admin', 'metrics'));`,
	// 3: the trace each write came from.
	`ALTER TABLE event_revisions ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';`,
	// 4: targeting (see SQLite's step 10).
	`ALTER TABLE events ADD COLUMN audience TEXT;
	ALTER TABLE events ADD COLUMN rollout_percent INTEGER NOT NULL DEFAULT 100 CHECK (rollout_percent BETWEEN 1 AND 100);
	ALTER TABLE events ADD COLUMN time_mode TEXT NOT NULL DEFAULT 'UTC' CHECK (time_mode IN ('UTC', 'PLAYER_LOCAL'));
	ALTER TABLE events ADD COLUMN localizations TEXT;`,
}

// migratePostgres brings a PostgreSQL schema up to date in one transaction. An advisory
// lock held for the transaction makes instances that start at once against an empty
// database take turns: the first creates the schema, the others find it made.
func (st *store) migratePostgres(ctx context.Context, migrate bool) error {
	return st.inTx(ctx, "migrate", func(tx *dbTx) error {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(8364519274)`); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
			return err
		}
		version := 0
		err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		switch {
		case version > len(postgresSchema):
			return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", version, len(postgresSchema))
		case !migrate && version != len(postgresSchema):
			return fmt.Errorf("schema version %d, but this binary uses %d: start the matching server once to migrate it", version, len(postgresSchema))
		}
		for i := version; i < len(postgresSchema); i++ {
			if _, err := tx.ExecContext(ctx, postgresSchema[i]); err != nil {
				return fmt.Errorf("step %d: %w", i+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM schema_version`); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (?)`, len(postgresSchema))
		return err
	})
}

// classify returns the store error err stands for, or nil when it is none of them: a
// busy or locked database (or, on PostgreSQL, a serialization failure or deadlock, which
// a retry resolves), a full disk, a database that cannot be written, or one that cannot
// be reached.
func classify(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return errBusy
		case sqlite3.SQLITE_FULL:
			return errFull
		case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN:
			return errReadOnly
		}
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "40001", pe.Code == "40P01", pe.Code == "55P03": // serialization, deadlock, lock not available
			return errBusy
		case pe.Code == "53100": // disk full
			return errFull
		case pe.Code == "25006": // read-only transaction (a standby, or default_transaction_read_only)
			return errReadOnly
		case strings.HasPrefix(pe.Code, "08"), strings.HasPrefix(pe.Code, "57P"): // connection; shutdown
			return errUnavailable
		}
		return nil
	}
	// A request whose own deadline ran out, or that was canceled, says nothing about the
	// database: context.DeadlineExceeded is itself a net.Error (it has Timeout), and pgx
	// reports a deadline that cut a query or a connect as a timeout wrapping it, so without
	// this they would pass for a database that cannot be reached.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || pgconn.SafeToRetry(err) {
		return errUnavailable
	}
	return nil
}
