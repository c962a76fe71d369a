package main

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// This file lets game clients running in a browser (an HTML5 game, a Unity WebGL build)
// read the player routes from pages on other origins: CORS, for the origins the operator
// lists with -cors-origins and no others. Without the flag none of it is switched on.

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
