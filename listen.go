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
// commits, until ctx ends. When the connection fails it logs once and listens again after
// a pause; writes missed meanwhile are found by the next poll.
func listenForChanges(ctx context.Context, st *store, nudge chan<- struct{}, log *logger) {
	for ctx.Err() == nil {
		err := listenOnce(ctx, st, nudge)
		if ctx.Err() != nil {
			return
		}
		log.Warn("change feed lost; listening again in a second (polls catch up meanwhile)", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// listenOnce holds one connection listening on changeChannel until it fails or ctx ends.
func listenOnce(ctx context.Context, st *store, nudge chan<- struct{}) error {
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
