package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestBearerToken(t *testing.T) {
	const key = "lo_user_abc_def"
	tests := []struct {
		name    string
		values  []string
		want    string
		wantErr error
	}{
		{"bearer", []string{"Bearer " + key}, key, nil},
		{"lowercase scheme", []string{"bearer " + key}, key, nil},
		{"uppercase scheme", []string{"BEARER " + key}, key, nil},
		{"bare key", []string{key}, key, nil},
		{"surrounding space", []string{"  Bearer   " + key + "  "}, key, nil},
		{"no header", nil, "", errNoKey},
		{"empty header", []string{""}, "", errNoKey},
		{"scheme only", []string{"Bearer "}, "", errNoKey},
		{"two headers", []string{"Bearer " + key, "Bearer " + key}, "", errTwoKeys},
		{"basic scheme", []string{"Basic dXNlcjpwYXNz"}, "", errBadScheme},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bearerToken(tt.values)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Fatalf("bearerToken(%q) = %q, %v; want %q, %v", tt.values, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestKeyFormat(t *testing.T) {
	now := time.Now()
	for _, r := range []role{roleHTTPUser, roleGRPCAdmin} {
		secret, k, err := newKey(r, "n", now, 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := "lo_" + roleTags[r] + "_"; !strings.HasPrefix(secret, want) {
			t.Errorf("%s key %q does not start with %q", r, secret, want)
		}
		if !checkKeyFormat(secret) {
			t.Errorf("checkKeyFormat(%q) = false for a fresh key", secret)
		}
		if k.Role != r || len(k.ID) != 12 || !k.ExpiresAt.IsZero() {
			t.Errorf("record = %+v", k)
		}
		other, _, _ := newKey(r, "n", now, 0)
		if other == secret {
			t.Errorf("two keys are the same")
		}
	}
	if _, _, err := newKey("root", "", now, 0); err == nil {
		t.Error("newKey accepted an unknown role")
	}

	secret, _, _ := newKey(roleGRPCAdmin, "", now, 0)
	flip := func(i int) string {
		b := []byte(secret)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	bad := map[string]string{
		"empty":              "",
		"random digit typo":  flip(len("lo_admin_") + 5),
		"checksum typo":      flip(len(secret) - 1),
		"truncated":          secret[:len(secret)-1],
		"extended":           secret + "A",
		"wrong prefix":       "xx" + secret[2:],
		"unknown role tag":   strings.Replace(secret, "_admin_", "_root_", 1),
		"tag swapped":        strings.Replace(secret, "_admin_", "_user_", 1),
		"non-base62 char":    secret[:12] + "-" + secret[13:],
		"missing separators": strings.ReplaceAll(secret, "_", ""),
	}
	for name, s := range bad {
		if checkKeyFormat(s) {
			t.Errorf("%s: checkKeyFormat(%q) = true; want false", name, s)
		}
	}
}

func TestKeyringAuthenticate(t *testing.T) {
	ctx := context.Background()
	st := newTestStore(t)
	clock := t0
	kr, err := newKeyring(ctx, st, func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	live, liveKey, _ := newKey(roleHTTPUser, "live", t0, 0)
	revoked, revokedKey, _ := newKey(roleHTTPUser, "revoked", t0, 0)
	expiring, expiringKey, _ := newKey(roleGRPCAdmin, "expiring", t0, time.Hour)
	unknown, _, _ := newKey(roleHTTPUser, "never stored", t0, 0)
	for _, k := range []apiKey{liveKey, revokedKey, expiringKey} {
		if err := st.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.RevokeKey(ctx, revokedKey.ID); err != nil {
		t.Fatal(err)
	}
	if err := kr.reload(ctx); err != nil {
		t.Fatal(err)
	}

	check := func(name, secret string, want error) {
		t.Helper()
		k, err := kr.authenticate(ctx, secret, true)
		if !errors.Is(err, want) || (err == nil) != (k != nil) {
			t.Errorf("%s: authenticate = %v, %v; want %v", name, k, err, want)
		}
	}
	check("live key", live, nil)
	check("revoked key", revoked, errRevokedKey)
	check("unknown key", unknown, errInvalidKey)
	check("malformed key", "lo_user_short_x", errInvalidKey)
	check("expiring key before expiry", expiring, nil)

	// A key created after the last reload (say by `keys create` in another process) works
	// at once, without waiting for the next reload.
	fresh, freshKey, _ := newKey(roleHTTPUser, "fresh", t0, 0)
	if err := st.CreateKey(ctx, freshKey); err != nil {
		t.Fatal(err)
	}
	check("key created after the last reload", fresh, nil)

	clock = t0.Add(time.Hour)
	check("expiring key at expiry", expiring, errExpiredKey)

	// A revoke seen on reload takes effect.
	if err := st.RevokeKey(ctx, liveKey.ID); err != nil {
		t.Fatal(err)
	}
	check("live key before reload", live, nil)
	if err := kr.reload(ctx); err != nil {
		t.Fatal(err)
	}
	check("live key after revoke and reload", live, errRevokedKey)
}

func TestKeyUsageIsFlushed(t *testing.T) {
	ctx := context.Background()
	st := newTestStore(t)
	clock := t0
	kr, _ := newKeyring(ctx, st, func() time.Time { return clock })
	secret, k, _ := newKey(roleHTTPUser, "", t0, 0)
	_, idle, _ := newKey(roleHTTPUser, "", t0, 0)
	st.CreateKey(ctx, k)
	st.CreateKey(ctx, idle)
	kr.reload(ctx)

	for range 100 {
		e, err := kr.authenticate(ctx, secret, true)
		if err != nil {
			t.Fatal(err)
		}
		e.markUsed() // as an admitted request does
	}
	// Requests never write: until the flush, the database has no record of the use.
	if keys, _ := st.Keys(ctx); !keys[0].LastUsedAt.IsZero() {
		t.Fatalf("last_used_at written on the request path: %v", keys[0].LastUsedAt)
	}
	// A reload between use and flush must not lose the use.
	kr.reload(ctx)
	clock = t0.Add(time.Minute)
	if err := kr.flushUsage(ctx); err != nil {
		t.Fatal(err)
	}
	lastUsed := func() map[string]time.Time {
		keys, _ := st.Keys(ctx)
		m := map[string]time.Time{}
		for _, k := range keys {
			m[k.ID] = k.LastUsedAt
		}
		return m
	}
	if got := lastUsed(); !got[k.ID].Equal(clock) || !got[idle.ID].IsZero() {
		t.Fatalf("last_used_at = %v; want %v for the used key and nothing for the idle one", got, clock)
	}
	// Nothing used since: a later flush changes nothing.
	clock = t0.Add(2 * time.Minute)
	kr.flushUsage(ctx)
	if got := lastUsed(); !got[k.ID].Equal(t0.Add(time.Minute)) {
		t.Fatalf("an idle minute moved last_used_at to %v", got[k.ID])
	}
}

func TestRedactKeys(t *testing.T) {
	for in, want := range map[string]string{
		"/events":                        "/events",
		"/events/lo_user_abc_def":        "/events/[redacted]",
		"/lo_admin_x/y/lo_user_z":        "/[redacted]/y/[redacted]",
		"/liveops.v1.EventService/lo_ab": "/liveops.v1.EventService/[redacted]",
	} {
		if got := redactKeys(in); got != want {
			t.Errorf("redactKeys(%q) = %q; want %q", in, got, want)
		}
	}
}
