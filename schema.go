package main

import (
	"context"
	"fmt"
)

// This file holds the schema and how a database is brought up to it.

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
	// 6: the events generation of each revision, so that a server can catch up on the
	// writes since the generation it holds without reading every event.
	`ALTER TABLE event_revisions ADD COLUMN generation INTEGER;
	CREATE INDEX event_revisions_by_generation ON event_revisions (generation);`,
	// 7: each revision's event version in a column of its own, so that finding an event's
	// highest version needs no JSON function (which each engine spells differently).
	`ALTER TABLE event_revisions ADD COLUMN version INTEGER;
	UPDATE event_revisions SET version = json_extract(event, '$.version');`,
	// 8: a third role, metrics, for Prometheus. SQLite cannot alter a CHECK constraint, so
	// the table is rebuilt, as https://sqlite.org/lang_altertable.html describes.
	`CREATE TABLE api_keys_new (
		id           TEXT PRIMARY KEY,
		hash         BLOB NOT NULL UNIQUE,
		role         TEXT NOT NULL CHECK (role IN ('http_user', 'grpc_admin', 'metrics')),
		name         TEXT NOT NULL DEFAULT '',
		created_at   INTEGER NOT NULL,
		last_used_at INTEGER,
		revoked_at   INTEGER,
		expires_at   INTEGER
	);
	INSERT INTO api_keys_new SELECT id, hash, role, name, created_at, last_used_at, revoked_at, expires_at FROM api_keys;
	DROP TABLE api_keys;
	ALTER TABLE api_keys_new RENAME TO api_keys;`,
	// 9: the trace each write came from, so the audit log can name it ('' when unknown).
	`ALTER TABLE event_revisions ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';`,
	// 10: targeting. audience and localizations are JSON (see audienceDoc, localizationDoc),
	// NULL for none; the defaults leave every existing event shown to everyone, as before.
	`ALTER TABLE events ADD COLUMN audience TEXT;
	ALTER TABLE events ADD COLUMN rollout_percent INTEGER NOT NULL DEFAULT 100 CHECK (rollout_percent BETWEEN 1 AND 100);
	ALTER TABLE events ADD COLUMN time_mode TEXT NOT NULL DEFAULT 'UTC' CHECK (time_mode IN ('UTC', 'PLAYER_LOCAL'));
	ALTER TABLE events ADD COLUMN localizations TEXT;`,
}

// migrate brings the schema up to date inside one write transaction, so two processes
// starting at once cannot both apply the same migration.
func (st *store) migrate(ctx context.Context) error {
	if st.pg {
		return st.migratePostgres(ctx, true)
	}
	return st.inTx(ctx, "migrate", func(tx *dbTx) error {
		var version int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		if version > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", version, len(migrations))
		}
		for i := version; i < len(migrations); i++ {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return fmt.Errorf("step %d: %w", i+1, err)
			}
		}
		// PRAGMA takes no bound parameters; the value is an integer we control.
		_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations)))
		return err
	})
}
