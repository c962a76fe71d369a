package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"
)

// This file holds what an API key looks like: its format, checksum and parsing from an
// Authorization header, and how keys are kept out of log lines.

// An API key looks like lo_admin_<43 base62 characters>_<6 base62 characters>:
// a fixed prefix secret scanners can match, a tag naming the role so a leaked admin key is
// recognisable, 256 bits from crypto/rand, and a CRC32 of everything before it, so a
// mistyped or truncated key is refused before it is hashed or looked up.
const (
	keyPrefix      = "lo_"
	keyRandomLen   = 43 // 43 base62 digits carry 256 bits
	keyChecksumLen = 6  // 62^6 > 2^32
	base62         = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// keyLen is the longest a key can be: a metrics key.
const keyLen = len(keyPrefix+"metrics_") + keyRandomLen + 1 + keyChecksumLen

var roleTags = map[role]string{roleHTTPUser: "user", roleGRPCAdmin: "admin", roleMetrics: "metrics"}

// isBase62 answers "is this byte a base62 digit?" for checkKeyFormat, without a search.
var isBase62 = func() (t [256]bool) {
	for i := range len(base62) {
		t[base62[i]] = true
	}
	return t
}()

// apiKey is the stored record of a key. The key itself is never stored: only its SHA-256.
type apiKey struct {
	ID         string
	Hash       [sha256.Size]byte
	Role       role
	Name       string
	CreatedAt  time.Time
	LastUsedAt time.Time // zero if never used
	RevokedAt  time.Time // zero if not revoked
	ExpiresAt  time.Time // zero if it never expires
}

// newKey makes a fresh key for r and the record to store for it. The returned secret is
// shown to the user once and then forgotten.
func newKey(r role, name string, now time.Time, ttl time.Duration) (secret string, k apiKey, err error) {
	tag, ok := roleTags[r]
	if !ok {
		return "", apiKey{}, fmt.Errorf("unknown role %q: want http_user, grpc_admin or metrics", r)
	}
	var b strings.Builder
	b.WriteString(keyPrefix + tag + "_")
	b.WriteString(randomBase62(keyRandomLen))
	body := b.String()
	secret = body + "_" + checksum(body)

	var id [6]byte
	rand.Read(id[:])
	k = apiKey{ID: hex.EncodeToString(id[:]), Hash: sha256.Sum256([]byte(secret)), Role: r, Name: name, CreatedAt: now}
	if ttl > 0 {
		k.ExpiresAt = now.Add(ttl)
	}
	return secret, k, nil
}

// randomBase62 returns n base62 digits drawn uniformly from crypto/rand.
func randomBase62(n int) string {
	out := make([]byte, 0, n)
	var buf [64]byte
	for len(out) < n {
		rand.Read(buf[:])
		for _, c := range buf {
			// 248 = 4*62: rejecting larger bytes keeps every digit equally likely.
			if c < 248 && len(out) < n {
				out = append(out, base62[c%62])
			}
		}
	}
	return string(out)
}

// checksum returns the base62 CRC32 that ends a key whose text before it is body.
func checksum(body string) string {
	sum := crc32OfKeyText(body)
	var out [keyChecksumLen]byte
	for i := keyChecksumLen - 1; i >= 0; i-- {
		out[i] = base62[sum%62]
		sum /= 62
	}
	return string(out[:])
}

// crc32OfKeyText is crc32.ChecksumIEEE of s, which is no longer than a key. Copying s
// into a stack buffer spares the heap allocation a []byte(s) conversion would make on
// every request.
func crc32OfKeyText(s string) uint32 {
	var buf [keyLen]byte
	return crc32.ChecksumIEEE(append(buf[:0], s...))
}

// checkKeyFormat reports whether s is shaped like a liveops key with a correct checksum,
// without looking it up. It does not allocate.
func checkKeyFormat(s string) bool {
	if !strings.HasPrefix(s, keyPrefix) {
		return false
	}
	rest := s[len(keyPrefix):]
	tag, rest, ok := strings.Cut(rest, "_")
	if !ok || (tag != "user" && tag != "admin" && tag != "metrics") {
		return false
	}
	if len(rest) != keyRandomLen+1+keyChecksumLen || rest[keyRandomLen] != '_' {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if i != keyRandomLen && !isBase62[rest[i]] {
			return false
		}
	}
	sum := crc32OfKeyText(s[:len(s)-keyChecksumLen-1])
	for i := len(s) - 1; i >= len(s)-keyChecksumLen; i-- {
		if s[i] != base62[sum%62] {
			return false
		}
		sum /= 62
	}
	return true
}

// Errors that authentication returns. Their text is shown to callers, so it never contains
// the key.
var (
	errNoKey        = errors.New("missing API key: send it as 'Authorization: Bearer <key>'")
	errTwoKeys      = errors.New("more than one Authorization header: send exactly one")
	errBadScheme    = errors.New("unsupported authorization scheme: use 'Bearer <key>'")
	errInvalidKey   = errors.New("invalid API key")
	errRevokedKey   = errors.New("API key has been revoked")
	errExpiredKey   = errors.New("API key has expired")
	errWrongRoleFmt = "this endpoint needs a %s key; this key's role is %s"
)

// bearerToken extracts the key from the values of an Authorization header (or gRPC
// authorization metadata): "Bearer <key>" with any case of "Bearer", or the bare key.
// Two values are refused rather than picking one.
func bearerToken(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", errNoKey
	case 1:
	default:
		return "", errTwoKeys
	}
	v := strings.TrimSpace(values[0])
	if v == "" || strings.EqualFold(v, "Bearer") {
		return "", errNoKey
	}
	scheme, token, ok := strings.Cut(v, " ")
	if !ok {
		return v, nil // a bare key
	}
	if !strings.EqualFold(scheme, "Bearer") {
		return "", errBadScheme
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", errNoKey
	}
	return token, nil
}

// redactKeys hides anything in s that looks like an API key, for log lines that carry
// client-chosen text (a URL path, an RPC name), so a key sent in the wrong place is not
// logged. It over-redacts any text containing "lo_", which costs nothing but a less
// readable line.
func redactKeys(s string) string {
	if !strings.Contains(s, keyPrefix) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, keyPrefix)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString("[redacted]")
		s = s[i:]
		if j := strings.IndexAny(s, "/?"); j >= 0 {
			s = s[j:]
		} else {
			s = ""
		}
	}
}
