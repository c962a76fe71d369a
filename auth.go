package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// role is what an API key may do. Every HTTP route and RPC needs exactly one role, or
// rolePublic for the few that need no key at all.
type role string

const (
	rolePublic    role = ""
	roleHTTPUser  role = "http_user"
	roleGRPCAdmin role = "grpc_admin"
)

// routeRoles says which role each HTTP route needs. addRoutes refuses to register a route
// missing from it, so a new route cannot ship without a decision about who may call it.
var routeRoles = map[string]role{
	"GET /healthz":     rolePublic,
	"GET /events":      roleHTTPUser,
	"GET /events/{id}": roleHTTPUser,
	// The catch-alls only ever answer 404 or 405.
	"/":            rolePublic,
	"/healthz":     rolePublic,
	"/events":      rolePublic,
	"/events/{id}": rolePublic,
}

// rpcRoles says which role each gRPC method needs. A method missing from it, including one
// no service implements, needs grpc_admin: unknown calls without a key get UNAUTHENTICATED,
// never UNIMPLEMENTED, so the API cannot be enumerated without a key.
var rpcRoles = map[string]role{
	"/liveops.v1.EventService/CreateEvent": roleGRPCAdmin,
	"/liveops.v1.EventService/GetEvent":    roleGRPCAdmin,
	"/liveops.v1.EventService/UpdateEvent": roleGRPCAdmin,
	"/liveops.v1.EventService/DeleteEvent": roleGRPCAdmin,
	"/liveops.v1.EventService/ListEvents":  roleGRPCAdmin,

	"/liveops.v1.EventService/ListEventRevisions": roleGRPCAdmin,
	"/liveops.v1.EventService/ListAuditLog":       roleGRPCAdmin,
	"/liveops.v1.EventService/RestoreEvent":       roleGRPCAdmin,

	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      roleGRPCAdmin,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": roleGRPCAdmin,

	// Load balancers and orchestrators probe health without credentials.
	"/grpc.health.v1.Health/Check": rolePublic,
	"/grpc.health.v1.Health/List":  rolePublic,
	"/grpc.health.v1.Health/Watch": rolePublic,
}

func rpcRole(method string) role {
	if r, ok := rpcRoles[method]; ok {
		return r
	}
	return roleGRPCAdmin
}

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

// keyLen is the longest a key can be: an admin key.
const keyLen = len(keyPrefix+"admin_") + keyRandomLen + 1 + keyChecksumLen

var roleTags = map[role]string{roleHTTPUser: "user", roleGRPCAdmin: "admin"}

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
		return "", apiKey{}, fmt.Errorf("unknown role %q: want http_user or grpc_admin", r)
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

// crc32String is crc32.ChecksumIEEE for a string. The crc32 package takes only []byte, and
// converting a request's key to one would cost an allocation on every request.
func crc32String(s string) uint32 {
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc = crcTable[byte(crc)^s[i]] ^ crc>>8
	}
	return ^crc
}

var crcTable = crc32.MakeTable(crc32.IEEE)

func checksum(body string) string {
	sum := crc32.ChecksumIEEE([]byte(body))
	var out [keyChecksumLen]byte
	for i := keyChecksumLen - 1; i >= 0; i-- {
		out[i] = base62[sum%62]
		sum /= 62
	}
	return string(out[:])
}

// checkKeyFormat reports whether s is shaped like a liveops key with a correct checksum,
// without looking it up. It does not allocate.
func checkKeyFormat(s string) bool {
	if !strings.HasPrefix(s, keyPrefix) {
		return false
	}
	rest := s[len(keyPrefix):]
	tag, rest, ok := strings.Cut(rest, "_")
	if !ok || (tag != "user" && tag != "admin") {
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
	sum := crc32String(s[:len(s)-keyChecksumLen-1])
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

// keyEntry is a key held in memory by the keyring.
type keyEntry struct {
	apiKey
	// used says the key was used since the last flush, which writes the flush time as
	// last_used_at: requests never wait on a write, nor even read the clock for it. The
	// flag is shared by the entries one key gets across reloads, so no use is lost.
	used *atomic.Bool
}

// keyring answers "which key is this?" from memory. It reloads from the database when the
// database changes (see watch), which is how a key revoked by `liveops keys revoke` in
// another process stops working here within a poll interval.
//
// Readers load the map without locking; writers (reload, learn) build a new map under mu and
// swap it in.
type keyring struct {
	st   *store
	now  func() time.Time
	mu   sync.Mutex
	keys atomic.Pointer[map[[sha256.Size]byte]*keyEntry]
}

func newKeyring(ctx context.Context, st *store, now func() time.Time) (*keyring, error) {
	kr := &keyring{st: st, now: now}
	if err := kr.reload(ctx); err != nil {
		return nil, err
	}
	return kr, nil
}

// reload replaces the in-memory keys with the database's, carrying over usage not yet flushed.
func (kr *keyring) reload(ctx context.Context) error {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	keys, err := kr.st.Keys(ctx)
	if err != nil {
		return err
	}
	old := kr.keys.Load()
	next := make(map[[sha256.Size]byte]*keyEntry, len(keys))
	for _, k := range keys {
		e := &keyEntry{apiKey: k, used: new(atomic.Bool)}
		if old != nil {
			if prev, ok := (*old)[k.Hash]; ok {
				e.used = prev.used
			}
		}
		next[k.Hash] = e
	}
	kr.keys.Store(&next)
	return nil
}

// learn looks up a key the keyring does not hold yet, such as one `liveops keys create`
// made in another process since the last reload, and adds it. Only well-formed keys with a
// correct checksum get here, so random guesses never reach the database.
func (kr *keyring) learn(ctx context.Context, digest [sha256.Size]byte) (*keyEntry, bool) {
	k, err := kr.st.KeyByHash(ctx, digest)
	if err != nil {
		return nil, false
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	cur := *kr.keys.Load()
	if e, ok := cur[digest]; ok {
		return e, true
	}
	next := maps.Clone(cur)
	e := &keyEntry{apiKey: k, used: new(atomic.Bool)}
	next[digest] = e
	kr.keys.Store(&next)
	return e, true
}

// authenticate returns the live key whose text is secret.
func (kr *keyring) authenticate(ctx context.Context, secret string) (*keyEntry, error) {
	if !checkKeyFormat(secret) {
		return nil, errInvalidKey
	}
	// Copying into a stack buffer spares the allocation a []byte(secret) conversion makes.
	var buf [keyLen]byte
	digest := sha256.Sum256(append(buf[:0], secret...))
	e, ok := (*kr.keys.Load())[digest]
	if !ok {
		e, ok = kr.learn(ctx, digest)
	}
	// The map lookup found the entry by its digest; comparing the digests again in constant
	// time keeps the final decision free of timing differences whatever the map does.
	if !ok || subtle.ConstantTimeCompare(e.Hash[:], digest[:]) != 1 {
		return nil, errInvalidKey
	}
	if !e.RevokedAt.IsZero() {
		return nil, errRevokedKey
	}
	if !e.ExpiresAt.IsZero() && !kr.now().Before(e.ExpiresAt) {
		return nil, errExpiredKey
	}
	// Load before Store, so concurrent requests with one key do not all write the same
	// cache line.
	if !e.used.Load() {
		e.used.Store(true)
	}
	return e, nil
}

// flushUsage records the keys used since the last flush as last used now.
func (kr *keyring) flushUsage(ctx context.Context) error {
	now := kr.now()
	used := map[string]time.Time{}
	var entries []*keyEntry
	for _, e := range *kr.keys.Load() {
		if e.used.Swap(false) {
			used[e.ID] = now
			entries = append(entries, e)
		}
	}
	if len(used) == 0 {
		return nil
	}
	if err := kr.st.TouchKeys(ctx, used); err != nil {
		for _, e := range entries {
			e.used.Store(true) // try again next flush
		}
		return err
	}
	return nil
}

// authError is why a request was refused. Each protocol maps its kind to a status:
// authUnauthenticated is 401 / UNAUTHENTICATED, authForbidden 403 / PERMISSION_DENIED and
// authThrottled 429 / RESOURCE_EXHAUSTED.
type authError struct {
	kind       authKind
	msg        string
	retryAfter time.Duration // with authThrottled
}

type authKind int

const (
	authUnauthenticated authKind = iota
	authForbidden
	authThrottled
)

func (e *authError) Error() string { return e.msg }

// guard decides whether a request may go on: it throttles addresses that keep failing,
// reads the key from the Authorization values, checks it, and checks its role.
type guard struct {
	keys    *keyring
	limiter *failureLimiter
}

// authorize returns the caller's key when it may call something that needs role need.
// addr is the client's IP address; authorization holds the values of the Authorization
// header (or gRPC authorization metadata). The key is returned with an authForbidden error
// too, so the refusal can be logged with the key id.
func (g *guard) authorize(ctx context.Context, addr string, authorization []string, need role) (*keyEntry, *authError) {
	if wait := g.limiter.blockedFor(addr); wait > 0 {
		return nil, &authError{authThrottled, "too many failed authentications from this address; retry later", wait}
	}
	secret, err := bearerToken(authorization)
	var k *keyEntry
	if err == nil {
		k, err = g.keys.authenticate(ctx, secret)
	}
	if err != nil {
		// A request with no key at all is a misconfigured client, not a guess: only keys
		// that were presented and refused count towards the limit.
		if err != errNoKey {
			g.limiter.fail(addr)
		}
		return nil, &authError{kind: authUnauthenticated, msg: err.Error()}
	}
	if k.Role != need {
		return k, &authError{kind: authForbidden, msg: fmt.Sprintf(errWrongRoleFmt, need, k.Role)}
	}
	return k, nil
}

// requireRole wraps next so that it runs only for a request carrying a live key of role
// need. It answers 401 (with WWW-Authenticate) for a missing, unknown, revoked or expired
// key, 403 for a key of another role, and 429 for an address that failed too often.
func (g *guard) requireRole(need role, next http.Handler) http.Handler {
	if need == rolePublic {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k, err := g.authorize(r.Context(), remoteIP(r.RemoteAddr), r.Header["Authorization"], need)
		if rec, ok := w.(*responseRecorder); ok && k != nil {
			rec.keyID = k.ID
		}
		if err != nil {
			switch err.kind {
			case authThrottled:
				w.Header().Set("Retry-After", strconv.Itoa(int(err.retryAfter.Seconds()+0.999)))
				writeError(w, http.StatusTooManyRequests, err.msg)
			case authForbidden:
				writeError(w, http.StatusForbidden, err.msg)
			default:
				w.Header().Set("WWW-Authenticate", `Bearer realm="liveops"`)
				writeError(w, http.StatusUnauthorized, err.msg)
			}
			return
		}
		next.ServeHTTP(w, r)
	})
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

// remoteIP returns the IP part of a host:port address.
func remoteIP(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// failureLimiter counts failed authentications per client IP address in fixed windows.
// An address with more than limit failures in one window is refused for block, whatever
// key it sends, so nobody can try keys at full speed. Only addresses that failed are
// tracked; while there are none, blockedFor takes no lock.
type failureLimiter struct {
	limit  int
	window time.Duration
	block  time.Duration
	now    func() time.Time

	tracked   atomic.Int64 // len(clients), read without the lock
	mu        sync.Mutex
	clients   map[string]*failures
	lastSweep time.Time
}

type failures struct {
	windowStart  time.Time
	count        int
	blockedUntil time.Time
}

// maxTrackedAddrs bounds the limiter's memory when failures come from very many addresses.
const maxTrackedAddrs = 100_000

func newFailureLimiter(limit int, window, block time.Duration, now func() time.Time) *failureLimiter {
	return &failureLimiter{limit: limit, window: window, block: block, now: now, clients: map[string]*failures{}}
}

// clientKey is what the limiter counts failures against: an IPv4 address, or the /64 an
// IPv6 address is in, since one IPv6 host usually holds a whole /64 to rotate through.
func clientKey(addr string) string {
	if !strings.Contains(addr, ":") {
		return addr // IPv4: as it is, without allocating
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Is4In6() {
		return addr
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return addr
	}
	return p.String()
}

// blockedFor returns how much longer addr is refused, or 0.
func (l *failureLimiter) blockedFor(addr string) time.Duration {
	if l.tracked.Load() == 0 {
		return 0
	}
	addr = clientKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweepEveryWindow(now)
	f, ok := l.clients[addr]
	if !ok {
		return 0
	}
	if d := f.blockedUntil.Sub(now); d > 0 {
		return d
	}
	return 0
}

// fail records a failed authentication from addr.
func (l *failureLimiter) fail(addr string) {
	addr = clientKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweepEveryWindow(now)
	f, ok := l.clients[addr]
	if !ok {
		if len(l.clients) >= maxTrackedAddrs && !l.evictSome(now) {
			return // every tracked address is blocked: stay within the memory bound
		}
		f = &failures{windowStart: now}
		l.clients[addr] = f
		l.tracked.Store(int64(len(l.clients)))
	}
	if now.Sub(f.windowStart) >= l.window {
		f.windowStart, f.count = now, 0
	}
	f.count++
	if f.count > l.limit {
		f.blockedUntil = now.Add(l.block)
	}
}

// sweepEveryWindow sweeps once a window, so the table empties (and blockedFor stops
// locking) soon after failures stop. l.mu must be held.
func (l *failureLimiter) sweepEveryWindow(now time.Time) {
	if now.Sub(l.lastSweep) >= l.window {
		l.sweep(now)
	}
}

// sweep forgets addresses whose window and block are over. l.mu must be held.
func (l *failureLimiter) sweep(now time.Time) {
	l.lastSweep = now
	for addr, f := range l.clients {
		if now.Sub(f.windowStart) >= l.window && !now.Before(f.blockedUntil) {
			delete(l.clients, addr)
		}
	}
	l.tracked.Store(int64(len(l.clients)))
}

// evictSome makes room in a full table by forgetting up to 256 addresses that are not
// blocked, looking at no more than 1024 (map order makes the choice arbitrary), so that a
// flood of new addresses costs a bounded amount of work each. It reports whether it freed
// any. l.mu must be held.
func (l *failureLimiter) evictSome(now time.Time) bool {
	freed, looked := 0, 0
	for addr, f := range l.clients {
		if !now.Before(f.blockedUntil) {
			delete(l.clients, addr)
			freed++
		}
		if looked++; freed == 256 || looked == 1024 {
			break
		}
	}
	l.tracked.Store(int64(len(l.clients)))
	return freed > 0
}
