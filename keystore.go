package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// This file holds the SQL for API keys. Only a key's SHA-256 is ever stored, never the key.

// CreateKey stores a new API key record.
func (st *store) CreateKey(ctx context.Context, k apiKey) error {
	return st.inTx(ctx, "create key", func(tx *dbTx) error {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO api_keys (id, hash, role, name, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
			k.ID, k.Hash[:], string(k.Role), k.Name, k.CreatedAt.UnixNano(), nullNanos(k.ExpiresAt)); err != nil {
			return err
		}
		return notifyChange(ctx, tx)
	})
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
		return nil, st.storeError("list keys", err)
	}
	defer rows.Close()
	var keys []apiKey
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, st.storeError("list keys", err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, st.storeError("list keys", err)
	}
	return keys, nil
}

// KeyByHash returns the key whose SHA-256 is hash, or errNotFound.
func (st *store) KeyByHash(ctx context.Context, hash [sha256.Size]byte) (apiKey, error) {
	k, err := scanKey(st.db.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE hash = ?`, hash[:]))
	if errors.Is(err, sql.ErrNoRows) {
		return apiKey{}, &notFoundError{"no such key"}
	}
	if err != nil {
		return apiKey{}, st.storeError("get key", err)
	}
	return k, nil
}

// HasKeys reports whether any API key, revoked or not, exists.
func (st *store) HasKeys(ctx context.Context) (bool, error) {
	var n int
	if err := st.db.QueryRowContext(ctx, `SELECT count(*) FROM api_keys`).Scan(&n); err != nil {
		return false, st.storeError("count keys", err)
	}
	return n > 0, nil
}

// RevokeKey marks the key revoked now. Revoking a revoked key keeps the first time. It
// returns errNotFound when no key has that id.
func (st *store) RevokeKey(ctx context.Context, id string) error {
	return st.inTx(ctx, "revoke key", func(tx *dbTx) error {
		res, err := tx.ExecContext(ctx,
			`UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`, st.now().UnixNano(), id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return &notFoundError{fmt.Sprintf("no key with id %q (see liveops keys list)", id)}
		}
		return notifyChange(ctx, tx)
	})
}

// TouchKeys records when keys were last used, in one transaction. A time older than the
// stored one is ignored, so out-of-order flushes never move last_used_at backwards.
func (st *store) TouchKeys(ctx context.Context, used map[string]time.Time) error {
	return st.inTx(ctx, "touch keys", func(tx *dbTx) error {
		// In id order, so that two instances flushing the same keys never deadlock.
		for _, id := range slices.Sorted(maps.Keys(used)) {
			t := used[id]
			if _, err := tx.ExecContext(ctx,
				`UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)`,
				t.UnixNano(), id, t.UnixNano()); err != nil {
				return err
			}
		}
		return nil
	})
}
