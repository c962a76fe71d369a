package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// This file lets game clients running in a browser (an HTML5 game, a Unity WebGL build)
// read the player routes from pages on other origins: CORS, for the origins the operator
// lists with -cors-origins and no others. Without the flag none of it is switched on.

// cors is the CORS policy of the player routes: the origins whose pages may call them.
// With no origins it is off, and the server answers as if it knew nothing of CORS.
type cors struct {
	origins []string
}

// The CORS answers. Allow-Headers names what a game client sends: its key, and the ETag
// of the answer it holds. Expose-Headers names what it reads beyond the CORS-safelisted
// headers (Cache-Control, Content-Type and Content-Length already are): the ETag to send
// back, and Retry-After on a 429. Max-Age lets a browser reuse a preflight for ten minutes
// instead of sending one before every poll.
const (
	corsAllowHeaders  = "Authorization, If-None-Match"
	corsExposeHeaders = "ETag, Retry-After"
	corsMaxAge        = "600"
)

// allows reports whether a page from origin may read the player routes. Origins are
// compared exactly: parseCORSOrigins has made each listed one look as a browser writes it.
func (c cors) allows(origin string) bool {
	return origin != "" && slices.Contains(c.origins, origin)
}

// share wraps a player route so that its answers, errors included, can be read by pages
// from the allowed origins. A 401 or 429 must be readable too, or a browser game could not
// tell a revoked key from a network failure.
//
// No Access-Control-Allow-Credentials: keys travel in Authorization, never in cookies, so
// the browser has no credentials of its own to send.
func (c cors) share(next http.Handler) http.Handler {
	if len(c.origins) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Every answer of these routes depends on Origin once CORS is on, those to a
		// request without one included: a cache must not hand an answer made for one
		// origin (or none) to a page of another.
		h.Add("Vary", "Origin")
		if origin := r.Header.Get("Origin"); c.allows(origin) {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		}
		next.ServeHTTP(w, r)
	})
}

// preflight answers OPTIONS on a player route, where allow lists the methods the route
// serves. A browser sends the preflight, without the key, before a cross-origin GET that
// carries Authorization, and sends the GET only if the answer allows it.
//
// A preflight from an origin not on the list gets 403 naming the origin, not the 405 that
// OPTIONS got before CORS: the browser refuses the call either way, but whoever reads the
// network panel learns that the origin is what is wrong, not the method. It tells the page
// nothing it could not learn from the missing Access-Control-Allow-Origin. An OPTIONS that
// is no preflight (no Origin, or no Access-Control-Request-Method), and every OPTIONS when
// CORS is off, still gets that 405.
func (c cors) preflight(allow string) http.Handler {
	notAllowed := handleMethodNotAllowed(allow)
	if len(c.origins) == 0 {
		return notAllowed
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" || r.Header.Get("Access-Control-Request-Method") == "" {
			notAllowed.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
		if !c.allows(origin) {
			writeError(w, r, &httpError{http.StatusForbidden,
				"origin " + origin + " is not allowed to call this server from a browser; the server's -cors-origins lists the origins that are"})
			return
		}
		// The answer is the same whatever method and headers were asked for: the browser
		// compares them with these lists and refuses the call itself if they do not fit.
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Methods", allow)
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", corsMaxAge)
		w.WriteHeader(http.StatusNoContent)
	})
}

// parseCORSOrigins reads -cors-origins: a comma-separated list of origins such as
// https://play.example.com,http://localhost:3000. Each must be written as a browser writes
// it in the Origin header (lower case, no default port, no path), because that header is
// compared with the list byte for byte; an entry written otherwise would never match, so
// it is refused with the spelling that would.
func parseCORSOrigins(list string) ([]string, error) {
	var origins []string
	for entry := range strings.SplitSeq(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		if strings.Contains(entry, "*") {
			return nil, errors.New("-cors-origins: * is not allowed: players' keys travel in the Authorization header, " +
				"so a wildcard would let any web site a player visits use that player's key; list the origins of your game's pages")
		}
		origin, err := canonicalOrigin(entry)
		if err != nil {
			return nil, fmt.Errorf("-cors-origins: %q %w; want an origin such as https://play.example.com or http://localhost:3000", entry, err)
		}
		if origin != entry {
			return nil, fmt.Errorf("-cors-origins: %q is not how a browser writes that origin; write %q", entry, origin)
		}
		origins = append(origins, origin)
	}
	return origins, nil
}

// canonicalOrigin returns s as a browser serializes the origin it names, or an error
// saying why s names none. Hosts must be ASCII: a browser sends an internationalized
// name in its xn-- form, and converting it here would take a dependency.
func canonicalOrigin(s string) (string, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "", errors.New("does not parse as a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return "", errors.New("needs the scheme http:// or https://")
	case u.Host == "" || u.Hostname() == "":
		return "", errors.New("has no host")
	case u.User != nil:
		return "", errors.New("has user information, which an origin never has")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", errors.New("has a query or fragment, which an origin never has")
	case u.Opaque != "" || (u.Path != "" && u.Path != "/"):
		return "", errors.New("has a path, which an origin never has")
	}
	for _, c := range []byte(u.Host) {
		if c >= 0x80 {
			return "", errors.New("has a non-ASCII host; write it in its xn-- form, as a browser sends it")
		}
	}
	host := strings.ToLower(u.Host)
	if port := u.Port(); port == "" || (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		host = strings.TrimSuffix(host, ":"+port)
	}
	return u.Scheme + "://" + host, nil
}
