package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
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
	roleMetrics   role = "metrics" // reads /metrics: for Prometheus
)

// routeRoles says which role each HTTP route needs. addRoutes refuses to register a route
// missing from it, so a new route cannot ship without a decision about who may call it.
var routeRoles = map[string]role{
	"GET /livez":       rolePublic,
	"GET /readyz":      rolePublic,
	"GET /healthz":     rolePublic,
	"GET /events":      roleHTTPUser,
	"GET /events/{id}": roleHTTPUser,
	"GET /metrics":     roleMetrics,
	// CORS preflights: browsers never send a key with them (see cors.go). With CORS off
	// they answer 405 as the catch-alls do.
	"OPTIONS /events":      rolePublic,
	"OPTIONS /events/{id}": rolePublic,
	// The catch-alls only ever answer 404 or 405.
	"/":            rolePublic,
	"/livez":       rolePublic,
	"/readyz":      rolePublic,
	"/healthz":     rolePublic,
	"/events":      rolePublic,
	"/events/{id}": rolePublic,
	"/metrics":     rolePublic,
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
	"/liveops.v1.EventService/PreviewPlayerView":  roleGRPCAdmin,

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
//
// It returns errInvalidKey for a key the database does not hold either, and the store's
// error when the database could not say: a valid key must not be refused as invalid
// (and counted as a guess) because the database was busy.
func (kr *keyring) learn(ctx context.Context, digest [sha256.Size]byte) (*keyEntry, error) {
	k, err := kr.st.KeyByHash(ctx, digest)
	if errors.Is(err, errNotFound) {
		return nil, errInvalidKey
	}
	if err != nil {
		return nil, err
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	cur := *kr.keys.Load()
	if e, ok := cur[digest]; ok {
		return e, nil
	}
	next := maps.Clone(cur)
	e := &keyEntry{apiKey: k, used: new(atomic.Bool)}
	next[digest] = e
	kr.keys.Store(&next)
	return e, nil
}

// authenticate returns the live key whose text is secret. A key this keyring does not hold
// is looked up in the database only when mayLearn is set.
func (kr *keyring) authenticate(ctx context.Context, secret string, mayLearn bool) (*keyEntry, error) {
	if !checkKeyFormat(secret) {
		return nil, errInvalidKey
	}
	// Copying into a stack buffer spares the allocation a []byte(secret) conversion makes.
	var buf [keyLen]byte
	digest := sha256.Sum256(append(buf[:0], secret...))
	e, ok := (*kr.keys.Load())[digest]
	if !ok {
		if !mayLearn {
			return nil, errInvalidKey
		}
		var err error
		if e, err = kr.learn(ctx, digest); err != nil {
			return nil, err
		}
	}
	// The map lookup found the entry by its digest; comparing the digests again in constant
	// time keeps the final decision free of timing differences whatever the map does.
	if subtle.ConstantTimeCompare(e.Hash[:], digest[:]) != 1 {
		return nil, errInvalidKey
	}
	if !e.RevokedAt.IsZero() {
		return nil, errRevokedKey
	}
	if !e.ExpiresAt.IsZero() && !kr.now().Before(e.ExpiresAt) {
		return nil, errExpiredKey
	}
	return e, nil
}

// markUsed records that k served a request, for the next flush of last_used_at. Callers
// call it once the request is admitted, so a request refused for other reasons (too many
// in flight, say) does not count as a use.
func (k *keyEntry) markUsed() {
	// Load before Store, so concurrent requests with one key do not all write the same
	// cache line.
	if !k.used.Load() {
		k.used.Store(true)
	}
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

// authError is why a request was refused. Each protocol's error mapper turns its kind into
// a status: authUnauthenticated is 401 / UNAUTHENTICATED, authForbidden 403 /
// PERMISSION_DENIED and authThrottled 429 / RESOURCE_EXHAUSTED.
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

// guard decides whether a request may go on: it reads the key from the Authorization
// values, checks it and its role, and throttles addresses that keep sending bad keys.
type guard struct {
	keys    *keyring
	limiter *failureLimiter
	stats   *authMetrics
}

// authorize returns the caller's key when it may call something that needs role need.
// addr is the client's IP address; authorization holds the values of the Authorization
// header (or gRPC authorization metadata). The key is returned with an authForbidden error
// too, so that the refusal can be logged with the key id.
//
// The failure limiter refuses only requests whose key is not good: a player with a valid
// key is never locked out because someone behind the same address (a carrier NAT, an
// office router) is guessing keys. A throttled address gets no database look-ups either,
// so a scan costs it a hash and a map look-up per guess; the one exception that follows is
// a key made by another process in the last -reload-interval, which such an address can
// use once the keyring has reloaded.
func (g *guard) authorize(ctx context.Context, addr string, authorization []string, need role) (*keyEntry, error) {
	wait := g.limiter.blockedFor(addr)
	secret, err := bearerToken(authorization)
	var k *keyEntry
	if err == nil {
		k, err = g.keys.authenticate(ctx, secret, wait == 0)
	}
	switch {
	case err == nil:
	case !isKeyRefusal(err):
		return nil, err // the database could not say: not the caller's fault, and not a guess
	case wait > 0 && err != errNoKey:
		g.stats.refused(errThrottled)
		return nil, &authError{authThrottled, "too many failed authentications from this address; retry later", wait}
	default:
		g.stats.refused(err)
		// A request with no key at all is a misconfigured client, not a guess: only keys
		// that were presented and refused count towards the limit.
		if err != errNoKey {
			g.limiter.fail(addr)
		}
		return nil, &authError{kind: authUnauthenticated, msg: err.Error()}
	}
	if k.Role != need {
		g.stats.refused(errWrongRole)
		return k, &authError{kind: authForbidden, msg: fmt.Sprintf(errWrongRoleFmt, need, k.Role)}
	}
	return k, nil
}

// withCaller returns ctx carrying k as the caller, for both protocols: in the request's
// requestInfo, made here when ctx has none.
func withCaller(ctx context.Context, k *keyEntry) context.Context {
	info := infoFrom(ctx)
	if info == nil {
		ctx, info = withRequestInfo(ctx)
	}
	info.setCaller(k)
	return ctx
}

// callerFrom returns the key that authenticated the request with context ctx, or nil.
func callerFrom(ctx context.Context) *keyEntry {
	if info := infoFrom(ctx); info != nil {
		info.mu.Lock()
		defer info.mu.Unlock()
		return info.caller
	}
	return nil
}

// requireRole wraps next so that it runs only for a request carrying a live key of role
// need, with that key in its context. Refusals go through writeError: 401 for a missing,
// unknown, revoked or expired key, 403 for a key of another role, 429 for an address that
// failed too often.
func (g *guard) requireRole(need role, next http.Handler) http.Handler {
	if need == rolePublic {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k, err := g.authorize(r.Context(), remoteIP(r.RemoteAddr), r.Header["Authorization"], need)
		ctx := r.Context()
		if k != nil {
			// The request's context has its requestInfo (see logRequests), so this adds
			// no context layer of its own.
			ctx = withCaller(ctx, k)
		}
		if err != nil {
			writeError(w, r.WithContext(ctx), err)
			return
		}
		k.markUsed()
		if ctx != r.Context() {
			r = r.WithContext(ctx)
		}
		next.ServeHTTP(w, r)
	})
}

// remoteIP returns the IP part of a host:port address.
func remoteIP(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// isKeyRefusal reports whether err is a verdict on the key the caller sent, rather than a
// failure to reach one.
func isKeyRefusal(err error) bool {
	switch err {
	case errNoKey, errTwoKeys, errBadScheme, errInvalidKey, errRevokedKey, errExpiredKey:
		return true
	}
	return false
}
