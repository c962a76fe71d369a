package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds the players' encoded answers: the bytes, their gzip form and ETags, the
// answer cache that lets every request asking the same thing share them, and serving them
// with conditional requests and max-age.

// answer is an encoded answer for one query variant, valid for one snapshot generation,
// within one second of server time (the server_time it carries) and before until, the next
// instant one of its events changes.
type answer struct {
	gen    int64
	second int64
	until  time.Time
	resp   *cachedResponse
	// reused is set when a request other than the one that made it was answered with it.
	reused atomic.Bool
	// shown is what a targeted answer lists, kept to make the next second's answer from
	// (see selectionCache.current); nil for others.
	shown []shown
}

func (a *answer) validAt(gen int64, now time.Time) bool {
	return a != nil && a.gen == gen && a.second == now.Unix() && now.Before(a.until)
}

// answerCache holds the answers of the current snapshot, one per query variant (a key the
// handler makes from the normalised query), so that requests asking the same thing share
// one set of bytes instead of each encoding its own. It is bounded in entries and bytes:
// past either bound an answer is still made and served, but not kept.
//
// Readers load the map without locking. Building an answer happens under mu, so that a
// burst of requests for one variant encodes it once, and a flood of variants encodes one
// at a time.
//
// Half of each bound is kept for answers that have been asked for more than once (warm):
// a flood of one-off variants (a new player context every request, say) fills only the
// other half, and never takes the place of the answers that many players share.
type answerCache struct {
	maxEntries int
	maxBytes   int

	answers atomic.Pointer[map[string]*answer]
	mu      sync.Mutex
	warm    warmKeys // under mu
}

func newAnswerCache(maxEntries, maxBytes int) *answerCache {
	c := &answerCache{maxEntries: maxEntries, maxBytes: maxBytes}
	c.answers.Store(&map[string]*answer{})
	return c
}

// get returns the answer for key at now from snapshot generation gen, calling build to
// make it when the cache holds none that is valid. build returns the body, the part of it
// the ETag is made from, and until when the answer holds.
func (c *answerCache) get(key string, gen int64, now time.Time, build func() (body, tagged []byte, until time.Time)) *answer {
	if a := (*c.answers.Load())[key]; a.validAt(gen, now) {
		if !a.reused.Load() {
			a.reused.Store(true)
		}
		return a
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := *c.answers.Load()
	if a := cur[key]; a.validAt(gen, now) {
		a.reused.Store(true)
		return a // another request made it while this one waited
	}
	body, tagged, until := build()
	a := &answer{gen: gen, second: now.Unix(), until: until, resp: newCachedResponse(body, tagged)}

	// Keep the answers still valid, and this one if it fits.
	next := make(map[string]*answer, len(cur)+1)
	size := 0
	for k, old := range cur {
		if old.reused.Load() {
			c.warm.add(k, c.maxEntries)
		}
		if k != key && old.validAt(gen, now) {
			next[k] = old
			size += old.resp.size()
		}
	}
	if entries, bytes := c.warm.bounds(key, c.maxEntries, c.maxBytes); len(next) < entries && size+a.resp.size() <= bytes {
		next[key] = a
	}
	c.answers.Store(&next)
	return a
}

// warmKeys are the keys of a cache's answers that were reused once made: the half of the
// cache's bounds kept from one-off answers is theirs.
type warmKeys map[string]bool

// add marks key as warm. The set is bounded like the cache (of maxEntries): when full, it
// starts over, and the answers reused since earn their place again.
func (w *warmKeys) add(key string, maxEntries int) {
	if *w == nil || len(*w) >= 2*maxEntries {
		*w = warmKeys{}
	}
	(*w)[key] = true
}

// bounds returns how many answers, and bytes, a cache so bounded may hold when it keeps
// key's answer: all of them for a warm key, half for another.
func (w warmKeys) bounds(key string, maxEntries, maxBytes int) (int, int) {
	if w[key] {
		return maxEntries, maxBytes
	}
	return maxEntries / 2, maxBytes / 2
}

// cachedResponse is a JSON body ready to send, with its ETag, made once; its gzip form is
// made on the first request that accepts gzip.
type cachedResponse struct {
	body         []byte
	etag, length string // header values, made once

	gzOnce           sync.Once
	gz               []byte // nil when compression would not pay
	gzEtag, gzLength string
}

// minGzipSize is the body size below which gzip is not worth its header and CPU.
const minGzipSize = 1024

// newCachedResponse prepares body for sending. Its ETag is made from tagged, the part of
// the body that says something about the events: everything but server_time, which
// differs from second to second. Two bodies with one ETag are therefore equivalent but not
// byte for byte the same, which is what a weak ETag (W/"...") says.
func newCachedResponse(body, tagged []byte) *cachedResponse {
	sum := sha256.Sum256(tagged)
	tag := base64.RawURLEncoding.EncodeToString(sum[:18])
	return &cachedResponse{body: body, etag: `W/"` + tag + `"`, length: strconv.Itoa(len(body)),
		// The gzip form is another representation, so it gets its own ETag.
		gzEtag: `W/"` + tag + `-gz"`}
}

// size is roughly the memory the response holds.
func (c *cachedResponse) size() int { return 2 * len(c.body) }

// gzipWriters are reused: a gzip.Writer holds hundreds of kilobytes of state.
var gzipWriters = sync.Pool{New: func() any { return gzip.NewWriter(nil) }}

// gzipped returns the gzip form of the body, or nil when it would not be smaller.
func (c *cachedResponse) gzipped() []byte {
	c.gzOnce.Do(func() {
		if len(c.body) < minGzipSize {
			return
		}
		var buf bytes.Buffer
		zw := gzipWriters.Get().(*gzip.Writer)
		zw.Reset(&buf)
		zw.Write(c.body)
		zw.Close()
		gzipWriters.Put(zw)
		if buf.Len() < len(c.body) {
			c.gz, c.gzLength = buf.Bytes(), strconv.Itoa(buf.Len())
		}
	})
	return c.gz
}

// maxCacheAge caps Cache-Control max-age, so that clients and CDNs come back often enough
// to notice a new event.
const maxCacheAge = 30 * time.Second

// maxAges and sharedMaxAges hold the Cache-Control values, indexed by seconds, so that a
// request formats none.
var maxAges, sharedMaxAges = cacheControls("max-age=%d"), cacheControls("public, max-age=%d, s-maxage=%d")

func cacheControls(format string) []string {
	out := make([]string, int(maxCacheAge/time.Second)+1)
	for i := range out {
		out[i] = strings.ReplaceAll(format, "%d", strconv.Itoa(i))
	}
	return out
}

// serveCached writes c, honouring If-None-Match (304) and Accept-Encoding (gzip), with a
// Cache-Control max-age that does not run past fresh, the time until the answer can change.
//
// With shared above 0 the answer may also be kept by shared caches (a proxy in front of
// several instances, a CDN), for no longer than shared: Cache-Control: public, s-maxage.
// public is what lets a shared cache keep an answer to a request that carried an
// Authorization header at all (RFC 9111, section 3.5). Vary: Authorization still keeps one
// key's answers apart from another's and from requests without a key; what a shared cache
// adds is time: for up to shared, an admin's edit is not yet seen and a key revoked
// meanwhile is still answered from the cache. Errors never come here, and keep no-store.
func serveCached(w http.ResponseWriter, r *http.Request, c *cachedResponse, fresh, shared time.Duration) {
	body, etag, length := c.body, c.etag, c.length
	gzipped := false
	if len(c.body) >= minGzipSize && acceptsGzip(r.Header["Accept-Encoding"]) {
		if gz := c.gzipped(); gz != nil {
			body, etag, length, gzipped = gz, c.gzEtag, c.gzLength, true
		}
	}
	// One array holds this response's header values: one allocation instead of one a
	// header, and no slice shared with another response.
	v := make([]string, 6)
	age := min(max(fresh, 0), maxCacheAge)
	cacheControl := maxAges[age/time.Second]
	if shared > 0 {
		cacheControl = sharedMaxAges[min(age, shared)/time.Second]
	}
	v[0], v[1], v[2] = "application/json", "Authorization, Accept-Encoding", cacheControl
	v[3], v[4], v[5] = etag, length, "gzip"
	h := w.Header()
	h["Content-Type"], h["Cache-Control"], h["Etag"] = v[0:1:1], v[2:3:3], v[3:4:4]
	// Vary adds to what is there: with CORS on, Origin is already in it.
	if vary := h["Vary"]; len(vary) > 0 {
		h["Vary"] = append(vary, v[1])
	} else {
		h["Vary"] = v[1:2:2]
	}
	if gzipped {
		h["Content-Encoding"] = v[5:6:6]
	}
	if inm := r.Header["If-None-Match"]; len(inm) > 0 && etagListMatches(inm, etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Length"] = v[4:5:5]
	w.Write(body)
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip: it names gzip (or *)
// without q=0.
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			name, params, _ := strings.Cut(item, ";")
			name = strings.TrimSpace(name)
			if !strings.EqualFold(name, "gzip") && name != "*" {
				continue
			}
			q := strings.TrimSpace(params)
			if q, ok := strings.CutPrefix(q, "q="); ok && strings.Trim(q, "0.") == "" {
				return false // q=0, q=0.0, q=0.000: explicitly refused
			}
			return true
		}
	}
	return false
}

// etagListMatches reports whether an If-None-Match header matches etag, with the weak
// comparison RFC 9110 asks for: W/ prefixes are ignored, and * matches anything.
func etagListMatches(values []string, etag string) bool {
	etag = strings.TrimPrefix(etag, "W/")
	for _, v := range values {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			item = strings.TrimSpace(item)
			if item == "*" || strings.TrimPrefix(item, "W/") == etag {
				return true
			}
		}
	}
	return false
}

// selectionCache holds the answers for targeted players, by the selection of events they
// are shown (see selectionKey). There are many more of those than query variants, so
// unlike answerCache it is a map under a read-write lock, changed in place: a new answer
// costs a map insert, not a copy of the map. Answers are made outside the lock (two
// requests for a new selection may both make it), and those of a past second or snapshot
// are swept once per second. It keeps answerCache's bounds and its warm half.
type selectionCache struct {
	maxEntries int
	maxBytes   int

	mu      sync.RWMutex
	answers map[string]*answer
	sizes   map[string]int // the bytes each answer is counted for
	bytes   int
	swept   int64 // the second (Unix) of the last sweep
	sweptAt int64 // and the generation
	warm    warmKeys
}

func newSelectionCache(maxEntries, maxBytes int) *selectionCache {
	return &selectionCache{maxEntries: maxEntries, maxBytes: maxBytes, answers: map[string]*answer{}, sizes: map[string]int{}}
}

// get is answerCache.get for a selection key, which it copies only to keep a new answer.
// The answer keeps a copy of shown, what it lists.
func (c *selectionCache) get(key []byte, gen int64, now time.Time, shown []shown, build func() (body, tagged []byte, until time.Time)) *answer {
	if a := c.lookup(key, gen, now); a != nil {
		return a
	}
	body, tagged, until := build()
	return c.put(key, &answer{gen: gen, second: now.Unix(), until: until, resp: newCachedResponse(body, tagged),
		shown: slices.Clone(shown)}, gen, now, true)
}

// current returns the answer kept under key valid at now: the one kept, or, when that
// is of a past second but its events still hold, one made from them for this second.
// It returns nil when there is none of this generation that still holds.
func (c *selectionCache) current(key string, gen int64, now time.Time, defaultLocale string) *answer {
	c.mu.RLock()
	a := c.answers[key]
	c.mu.RUnlock()
	switch {
	case a.validAt(gen, now):
		if !a.reused.Load() {
			a.reused.Store(true)
		}
		return a
	case a == nil || a.shown == nil || a.gen != gen || !now.Before(a.until):
		return nil
	}
	body, tagged := playerListBody(now, a.shown, defaultLocale)
	next := &answer{gen: gen, second: now.Unix(), until: a.until, resp: newCachedResponse(body, tagged), shown: a.shown}
	next.reused.Store(true) // asked for again, across seconds: warm
	return c.put([]byte(key), next, gen, now, true)
}

// contextIndex remembers, for what a targeted request asked (see targeting.contextKey),
// the selection its player was shown and in which frame: asked again while that frame
// holds, the same selection is the answer, without reading the context again. It is
// bounded: when full, it starts over.
type contextIndex struct {
	max int
	mu  sync.RWMutex
	m   map[string]indexedContext
}

type indexedContext struct {
	gen       int64
	frame     uint64
	selection string
}

func newContextIndex(max int) *contextIndex {
	return &contextIndex{max: max, m: map[string]indexedContext{}}
}

func (x *contextIndex) get(key []byte) (indexedContext, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	ic, ok := x.m[string(key)]
	return ic, ok
}

func (x *contextIndex) put(key []byte, ic indexedContext) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.m) >= x.max {
		x.m = make(map[string]indexedContext, x.max)
	}
	x.m[string(key)] = ic
}

// lookup returns the answer kept under key, if it is valid at now in generation gen.
func (c *selectionCache) lookup(key []byte, gen int64, now time.Time) *answer {
	c.mu.RLock()
	a := c.answers[string(key)]
	c.mu.RUnlock()
	if !a.validAt(gen, now) {
		return nil
	}
	if !a.reused.Load() {
		a.reused.Store(true)
	}
	return a
}

// put keeps a under key if it fits, counting its bytes when owned (an index of answers
// kept elsewhere counts only entries), and returns the answer kept under key: a, or one
// another request put meanwhile.
func (c *selectionCache) put(key []byte, a *answer, gen int64, now time.Time, owned bool) *answer {
	size := 0
	if owned {
		size = a.resp.size()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.swept != now.Unix() || c.sweptAt != gen {
		c.sweep(gen, now)
	}
	if old, ok := c.answers[string(key)]; ok {
		if old.validAt(gen, now) {
			return old // another request made it meanwhile
		}
		c.bytes -= c.sizes[string(key)]
		delete(c.answers, string(key))
		delete(c.sizes, string(key))
	}
	if entries, bytes := c.warm.bounds(string(key), c.maxEntries, c.maxBytes); len(c.answers) < entries && c.bytes+size <= bytes {
		c.answers[string(key)] = a
		c.sizes[string(key)] = size
		c.bytes += size
	}
	return a
}

// sweep drops the answers no longer valid at now, remembering those that were reused as
// warm. c.mu must be held.
func (c *selectionCache) sweep(gen int64, now time.Time) {
	for k, a := range c.answers {
		if a.reused.Load() {
			c.warm.add(k, c.maxEntries)
		}
		if !a.validAt(gen, now) {
			c.bytes -= c.sizes[k]
			delete(c.answers, k)
			delete(c.sizes, k)
		}
	}
	c.swept, c.sweptAt = now.Unix(), gen
}
