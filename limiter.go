package main

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// failureLimiter counts failed authentications per client IP address in fixed windows.
// An address with more than limit failures in one window is blocked for block: its
// requests without a valid key are refused unlooked-at (see guard.authorize), so nobody
// can try keys at full speed. Only addresses that failed are tracked; while there are
// none, blockedFor takes no lock.
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

// inFlight bounds the requests being served at once, over every connection: each holds a
// goroutine and a write buffer until its answer is written, and a client that stops
// reading (a zero flow-control window) can hold them for as long as it likes. Past max,
// new requests are refused at once with a status that says to retry, never queued.
type inFlight struct {
	n   atomic.Int64
	max int64
}

// errTooBusy is the refusal's message.
var errTooBusy = errors.New("too many requests in flight on this server; retry shortly")

func (f *inFlight) acquire() bool {
	if f.n.Add(1) > f.max {
		f.n.Add(-1)
		return false
	}
	return true
}

func (f *inFlight) release() { f.n.Add(-1) }
