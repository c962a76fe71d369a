package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// This file holds PostgreSQL's change feed. Every write notifies on changeChannel inside
// its own transaction, so the notification fires on commit; each instance listens, and
// catches up at once instead of at its next poll. The poll stays the fallback that alone
// is enough for correctness: a notification lost while a connection was down, or a
// deployment without LISTEN (CockroachDB), only waits for it.

// changeChannel is the channel writes notify on: events and keys alike.
const changeChannel = "liveops_changes"

// notifyChange queues a notification that fires when tx commits. It does nothing on SQLite,
// where PRAGMA data_version tells other processes for free.
func notifyChange(ctx context.Context, tx *dbTx) error {
	if !tx.pg {
		return nil
	}
	_, err := tx.ExecContext(ctx, `SELECT pg_notify('`+changeChannel+`', '')`)
	return err
}

// listenForChanges sends on nudge (without blocking) whenever another connection's write
// commits, until ctx ends. When the connection fails it listens again after pause, until
// it can; writes missed meanwhile are found by the next poll. It logs once when the feed
// is lost and once when it is back, not at every retry, so that an outage of the database
// does not fill the log.
func listenForChanges(ctx context.Context, st *store, nudge chan<- struct{}, log *logger, pause time.Duration) {
	lost := false
	listening := func() {
		if lost {
			log.Info("change feed restored")
			lost = false
		}
	}
	for ctx.Err() == nil {
		err := listenOnce(ctx, st, nudge, listening)
		if ctx.Err() != nil {
			return
		}
		if !lost {
			log.Warn("change feed lost; listening again until it is back (polls catch up meanwhile)", "retry", pause.String(), "err", err)
			lost = true
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

// listenOnce holds one connection listening on changeChannel until it fails or ctx ends,
// calling listening once LISTEN has taken effect.
func listenOnce(ctx context.Context, st *store, nudge chan<- struct{}, listening func()) error {
	conn, err := st.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(driverConn any) error {
		c, ok := driverConn.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("listen: not a pgx connection (%T)", driverConn)
		}
		pc := c.Conn()
		if _, err := pc.Exec(ctx, `LISTEN `+changeChannel); err != nil {
			return err
		}
		listening()
		// Anything committed before LISTEN took effect is for the poll to find; nudge
		// once so that it looks now.
		select {
		case nudge <- struct{}{}:
		default:
		}
		for {
			if _, err := pc.WaitForNotification(ctx); err != nil {
				return err
			}
			select {
			case nudge <- struct{}{}:
			default: // a catch-up is already due: it will see this change too
			}
		}
	})
}
