package main

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// This file reads the context a player's request declares (platform, client version,
// country, languages, player id, time zone) from GET /events's query parameters, the
// Accept-Language header and, when a trusted front sets one, a country header.

// contextParams are the query parameters that declare a player's context.
var contextParams = []string{"platform", "client_version", "country", "language", "player_id", "time_zone", "utc_offset"}

// targeting is how the server reads players' contexts: the locale of events' own text, and
// the header a trusted front (a CDN) puts the client's country in, if any.
type targeting struct {
	defaultLocale string
	countryHeader string // canonical header name; "" to trust none
	// selections holds targeted players' answers, and contexts which one each request
	// asking exactly the same (query string and the headers read) got, so that it is
	// found again without reading the context or working out the selection.
	selections *selectionCache
	contexts   *contextIndex
}

// mayDeclare reports whether r may declare a context at all: players who send neither a
// query string nor a header it is read from share one answer (see handleEvents), and are
// not indexed.
func (tg targeting) mayDeclare(r *http.Request) bool {
	return r.URL.RawQuery != "" || len(r.Header["Accept-Language"]) > 0 ||
		tg.countryHeader != "" && r.Header.Get(tg.countryHeader) != ""
}

// contextKey appends to b what a targeted answer to r can depend on besides the events:
// its query string and the headers read. A request with the same key gets the same answer
// while that answer holds.
func (tg targeting) contextKey(b []byte, r *http.Request) []byte {
	b = append(b, r.URL.RawQuery...)
	for _, v := range r.Header["Accept-Language"] {
		b = append(b, 0)
		b = append(b, v...)
	}
	if tg.countryHeader != "" {
		b = append(b, 1)
		b = append(b, r.Header.Get(tg.countryHeader)...)
	}
	return b
}

// clientContextFrom reads a player's context from a request's query values v and headers
// h. A malformed parameter is a fieldError naming it; the Accept-Language header, which
// clients send unasked, is read leniently (see parseAcceptLanguage).
func (tg targeting) clientContextFrom(v url.Values, h http.Header, z *zones) (clientContext, error) {
	country := v.Get("country")
	if tg.countryHeader != "" {
		// The front's word is better than the client's claim; an unknown country ("XX",
		// or T1 for Tor at Cloudflare) leaves the client's.
		if fc := strings.ToUpper(strings.TrimSpace(h.Get(tg.countryHeader))); isCountry(fc) {
			country = fc
		}
	}
	c, err := newClientContext(v.Get("platform"), v.Get("client_version"), country, v.Get("language"), v.Get("player_id"),
		v.Get("time_zone"), v.Get("utc_offset"), z)
	if err != nil {
		return c, err
	}
	if !v.Has("language") {
		c.langs = parseAcceptLanguage(h["Accept-Language"])
	}
	c.defaultLocale = tg.defaultLocale
	return c, nil
}

// newClientContext checks and builds a player's context from its parts, each optional;
// problems are fieldErrors named as the query parameters (and PreviewPlayerView's fields)
// are. language is a BCP 47 tag or a list of them as Accept-Language writes it.
func newClientContext(platform, clientVersion, country, language, playerID, timeZone, utcOffset string, z *zones) (clientContext, error) {
	var c clientContext
	var errs fieldErrors
	if platform != "" {
		c.platform = strings.ToLower(platform)
		if !slices.Contains(platforms, c.platform) {
			errs.add(&fieldError{"platform", fmt.Sprintf("unknown platform %q; want one of %s", platform, strings.Join(platforms, ", "))})
		}
	}
	if clientVersion != "" {
		if c.version, c.hasVer = parseSemver(clientVersion); !c.hasVer {
			errs.add(&fieldError{"client_version", fmt.Sprintf("%q is not a semantic version such as 1.4.2", clientVersion)})
		}
	}
	if country != "" {
		c.country = strings.ToUpper(country)
		if !isCountry(c.country) {
			errs.add(&fieldError{"country", fmt.Sprintf("unknown country code %q; want an ISO 3166-1 alpha-2 code such as FR", country)})
		}
	}
	if language != "" {
		var err error
		if c.langs, err = parseLanguageParam(language); err != nil {
			errs.add(err)
		}
	}
	if playerID != "" {
		if err := checkPlayerID(playerID); err != nil {
			errs.add(err)
		}
		c.playerID = playerID
	}
	switch {
	case timeZone != "" && utcOffset != "":
		errs.add(&fieldError{"utc_offset", "give time_zone or utc_offset, not both"})
	case timeZone != "":
		loc, err := z.load(timeZone)
		if err != nil || timeZone == "Local" {
			errs.add(&fieldError{"time_zone", fmt.Sprintf("unknown time zone %q; want an IANA name such as Asia/Tokyo", timeZone)})
		}
		c.loc = loc
	case utcOffset != "":
		loc, err := fixedZone(utcOffset)
		if err != nil {
			errs.add(err)
		}
		c.loc = loc
	}
	if len(errs) > 0 {
		return clientContext{}, errs
	}
	return c, nil
}

// checkPlayerID refuses a player id that is too long or not printable ASCII: it is opaque
// to liveops, but it travels in URLs and log lines.
func checkPlayerID(id string) error {
	if len(id) > maxPlayerIDLen {
		return &fieldError{"player_id", fmt.Sprintf("must be at most %d bytes, got %d", maxPlayerIDLen, len(id))}
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] >= 0x7f {
			return &fieldError{"player_id", fmt.Sprintf("must be printable ASCII without spaces (byte %d is not)", i)}
		}
	}
	return nil
}

// parseLanguageParam reads the language parameter: a BCP 47 tag, or several as
// Accept-Language lists them. Unlike the header, a malformed one is refused.
func parseLanguageParam(s string) ([]string, error) {
	for part := range strings.SplitSeq(s, ",") {
		tag, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		if _, err := normalizeLocale(strings.TrimSpace(tag)); err != nil {
			return nil, &fieldError{"language", err.Error()}
		}
	}
	return parseAcceptLanguage([]string{s}), nil
}

// fixedZones keeps one *time.Location per offset asked for, so that a PLAYER_LOCAL event's
// schedule is worked out once per offset (see entry.viewFor). There are at most 105: every
// quarter hour from -12:00 to +14:00.
var fixedZones sync.Map

// fixedZone reads a UTC offset such as +09:00, -03:30 or +0545 ('+' may arrive as a space,
// as an unescaped '+' in a query string does), between -12:00 and +14:00 in quarter hours.
func fixedZone(s string) (*time.Location, error) {
	bad := &fieldError{"utc_offset", fmt.Sprintf("%q is not a UTC offset between -12:00 and +14:00 such as +09:00 or -03:30", s)}
	t := strings.TrimSpace(s)
	if strings.HasPrefix(s, " ") {
		t = "+" + t
	}
	t = strings.Replace(t, ":", "", 1)
	if len(t) != 5 || t[0] != '+' && t[0] != '-' || !isDigits(t[1:]) {
		return nil, bad
	}
	h, m := int(t[1]-'0')*10+int(t[2]-'0'), int(t[3]-'0')*10+int(t[4]-'0')
	secs := (h*60 + m) * 60
	if t[0] == '-' {
		secs = -secs
	}
	if m%15 != 0 || secs < -12*3600 || secs > 14*3600 {
		return nil, bad
	}
	name := fmt.Sprintf("UTC%c%02d:%02d", t[0], h, m)
	if loc, ok := fixedZones.Load(name); ok {
		return loc.(*time.Location), nil
	}
	loc, _ := fixedZones.LoadOrStore(name, time.FixedZone(name, secs))
	return loc.(*time.Location), nil
}
