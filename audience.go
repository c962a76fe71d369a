package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file holds targeting: which players an event is for (its audience and rollout), the
// client context a player's request declares, and how the two are matched. None of it is
// a secret or a permission: a client can claim any platform or country, so targeting
// decides what a client is shown, never what it may read.

// Audience restricts an event to clients whose declared context matches. Every field set
// must match (a client matches a field when its value is one of those listed, or within
// the version range); an empty field matches anyone. Exclude, of the same shape, then
// removes the clients that match every field it sets.
type Audience struct {
	Platforms  []string // from platforms; sorted, distinct
	MinVersion string   // a semantic version; "" for no lower bound (inclusive)
	MaxVersion string   // a semantic version; "" for no upper bound (inclusive)
	Countries  []string // ISO 3166-1 alpha-2, upper case; sorted, distinct
	Languages  []string // BCP 47 primary language subtags, lower case; sorted, distinct
	Exclude    *Audience
}

// platforms are the platforms a client may declare and an audience may name.
var platforms = []string{"android", "ios", "linux", "macos", "playstation", "switch", "web", "windows", "xbox"}

const (
	maxAudienceValues = 250 // per list: every country fits
	maxPlayerIDLen    = 128
)

// isEmpty reports whether a restricts nothing.
func (a *Audience) isEmpty() bool {
	return a == nil || len(a.Platforms) == 0 && a.MinVersion == "" && a.MaxVersion == "" &&
		len(a.Countries) == 0 && len(a.Languages) == 0 && a.Exclude.isEmpty()
}

// validate checks and normalises a, reporting problems under the field name prefix
// (audience or audience.exclude). An empty audience becomes nil.
func (a *Audience) validate(prefix string) (*Audience, error) {
	if a.isEmpty() {
		return nil, nil
	}
	var errs fieldErrors
	var err error
	if a.Platforms, err = normalizeList(prefix+".platforms", a.Platforms, strings.ToLower, func(p string) error {
		if !slices.Contains(platforms, p) {
			return fmt.Errorf("unknown platform %q; want one of %s", p, strings.Join(platforms, ", "))
		}
		return nil
	}); err != nil {
		errs.add(err)
	}
	var lo, hi semver
	var loOK, hiOK bool
	if a.MinVersion != "" {
		if lo, loOK = parseSemver(a.MinVersion); !loOK {
			errs.add(&fieldError{prefix + ".min_version", fmt.Sprintf("%q is not a semantic version such as 1.4.0", a.MinVersion)})
		}
	}
	if a.MaxVersion != "" {
		if hi, hiOK = parseSemver(a.MaxVersion); !hiOK {
			errs.add(&fieldError{prefix + ".max_version", fmt.Sprintf("%q is not a semantic version such as 2.0.0", a.MaxVersion)})
		}
	}
	if loOK && hiOK && lo.compare(hi) > 0 {
		errs.add(&fieldError{prefix + ".max_version", fmt.Sprintf("%s is below min_version %s", a.MaxVersion, a.MinVersion)})
	}
	if a.Countries, err = normalizeList(prefix+".countries", a.Countries, strings.ToUpper, func(c string) error {
		if !isCountry(c) {
			return fmt.Errorf("unknown country code %q; want an ISO 3166-1 alpha-2 code such as FR", c)
		}
		return nil
	}); err != nil {
		errs.add(err)
	}
	if a.Languages, err = normalizeList(prefix+".languages", a.Languages, strings.ToLower, func(l string) error {
		if !isLanguageSubtag(l) {
			return fmt.Errorf("%q is not a BCP 47 primary language subtag such as en or pt", l)
		}
		return nil
	}); err != nil {
		errs.add(err)
	}
	if a.Exclude != nil {
		if prefix != "audience" {
			errs.add(&fieldError{prefix + ".exclude", "an exclude cannot have an exclude of its own"})
		} else if ex, err := a.Exclude.validate(prefix + ".exclude"); err != nil {
			errs.add(err)
		} else {
			a.Exclude = ex
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return a, nil
}

// normalizeList applies norm to every value, checks each with check, and returns them
// sorted without repeats.
func normalizeList(field string, values []string, norm func(string) string, check func(string) error) ([]string, error) {
	if len(values) > maxAudienceValues {
		return nil, &fieldError{field, fmt.Sprintf("must list at most %d values, got %d", maxAudienceValues, len(values))}
	}
	if len(values) == 0 {
		return nil, nil
	}
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = norm(strings.TrimSpace(v))
		if err := check(out[i]); err != nil {
			return nil, &fieldError{field, err.Error()}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// clientContext is what a player's request declares about the client. Every part is
// optional; a zero part is undeclared.
type clientContext struct {
	platform string // one of platforms
	version  semver
	hasVer   bool
	country  string   // ISO 3166-1 alpha-2, upper case
	langs    []string // the client's languages, best first, as normalised BCP 47 tags
	playerID string
	loc      *time.Location // the player's zone; nil for UTC
	// defaultLocale is the locale of events' own title and description (-default-locale),
	// against which the client's languages are matched too.
	defaultLocale string
}

// declaresNothing reports whether c is the context of a player who declared nothing.
func (c *clientContext) declaresNothing() bool {
	return c.platform == "" && !c.hasVer && c.country == "" && len(c.langs) == 0 && c.playerID == "" && c.loc == nil
}

// verdict says why a client with context c is not in audience a: "audience" when it does
// not match, "excluded" when its exclude does; "" when it is in.
func (a *Audience) verdict(c *clientContext) string {
	switch {
	case a == nil:
		return ""
	case !a.includes(c, false):
		return "audience"
	case a.Exclude != nil && a.Exclude.includes(c, true):
		return "excluded"
	}
	return ""
}

// matches reports whether a client with context c is in audience a (nil: everyone).
func (a *Audience) matches(c *clientContext) bool {
	if a == nil {
		return true
	}
	if !a.includes(c, false) {
		return false
	}
	return a.Exclude == nil || !a.Exclude.includes(c, true)
}

// includes reports whether c matches every field a sets. A field c does not declare
// matches nothing when including (a client that does not say its platform is not shown a
// platform-restricted event), and, when excluding, is not grounds to exclude: exclusion
// needs every field it names to be known to match.
func (a *Audience) includes(c *clientContext, excluding bool) bool {
	if excluding && a.isEmptyCriteria() {
		return false
	}
	if len(a.Platforms) > 0 && (c.platform == "" || !slices.Contains(a.Platforms, c.platform)) {
		return false
	}
	if a.MinVersion != "" || a.MaxVersion != "" {
		if !c.hasVer {
			return false
		}
		if lo, ok := parseSemver(a.MinVersion); ok && c.version.compare(lo) < 0 {
			return false
		}
		if hi, ok := parseSemver(a.MaxVersion); ok && c.version.compare(hi) > 0 {
			return false
		}
	}
	if len(a.Countries) > 0 && (c.country == "" || !slices.Contains(a.Countries, c.country)) {
		return false
	}
	if len(a.Languages) > 0 && !slices.ContainsFunc(c.langs, func(tag string) bool {
		return slices.Contains(a.Languages, primarySubtag(tag))
	}) {
		return false
	}
	return true
}

func (a *Audience) isEmptyCriteria() bool {
	return len(a.Platforms) == 0 && a.MinVersion == "" && a.MaxVersion == "" && len(a.Countries) == 0 && len(a.Languages) == 0
}

// inRollout reports whether player is among the percent of players who see event id. The
// choice hashes the event id and the player id, so it is the same on every instance and
// every request (sticky), and a player in at some percentage stays in at any higher one.
// A request without a player id sees only events at 100%. 0 is read as 100, as for events
// written before rollouts existed.
func inRollout(eventID, player string, percent int32) bool {
	if percent <= 0 || percent >= 100 {
		return true
	}
	if player == "" {
		return false
	}
	return rolloutBucket(eventID, player) < uint64(percent)*100
}

// rolloutBucket places a player, for one event, in one of 10,000 buckets, uniformly: FNV-1a
// over the two ids, then a 64-bit finaliser, since FNV's low bits alone are poorly mixed
// for inputs that differ only at the end.
func rolloutBucket(eventID, player string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(eventID); i++ {
		h = (h ^ uint64(eventID[i])) * prime
	}
	h = (h ^ 0xff) * prime // a separator no UUID or id byte sequence can fake at this place
	for i := 0; i < len(player); i++ {
		h = (h ^ uint64(player[i])) * prime
	}
	// splitmix64's finaliser.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h % 10000
}

// semver is a semantic version, MAJOR.MINOR.PATCH with an optional pre-release; build
// metadata (+...) is accepted and ignored, as semver.org says precedence does.
type semver struct {
	major, minor, patch uint64
	pre                 string // "" for a release
}

// parseSemver reads a semantic version. "1.2" and "1" are read as 1.2.0 and 1.0.0, since
// game clients often report versions that way. A leading "v" is allowed.
func parseSemver(s string) (semver, bool) {
	if s == "" || len(s) > 64 {
		return semver{}, false
	}
	s = strings.TrimPrefix(s, "v")
	s, _, _ = strings.Cut(s, "+")
	core, pre, hasPre := strings.Cut(s, "-")
	if hasPre && !validPrerelease(pre) {
		return semver{}, false
	}
	parts := strings.Split(core, ".")
	if len(parts) > 3 {
		return semver{}, false
	}
	var n [3]uint64
	for i, p := range parts {
		if p == "" || len(p) > 1 && p[0] == '0' {
			return semver{}, false
		}
		v, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return semver{}, false
		}
		n[i] = v
	}
	return semver{n[0], n[1], n[2], pre}, true
}

func validPrerelease(pre string) bool {
	for _, id := range strings.Split(pre, ".") {
		if id == "" {
			return false
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-') {
				return false
			}
		}
	}
	return true
}

// compare orders versions by semver.org's precedence: a pre-release comes before its
// release, and pre-release identifiers compare numerically when both are numbers.
func (v semver) compare(w semver) int {
	for _, d := range [][2]uint64{{v.major, w.major}, {v.minor, w.minor}, {v.patch, w.patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case v.pre == w.pre:
		return 0
	case v.pre == "":
		return 1
	case w.pre == "":
		return -1
	}
	a, b := strings.Split(v.pre, "."), strings.Split(w.pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] == b[i] {
			continue
		}
		x, errX := strconv.ParseUint(a[i], 10, 64)
		y, errY := strconv.ParseUint(b[i], 10, 64)
		switch {
		case errX == nil && errY == nil:
			if x < y {
				return -1
			}
			return 1
		case errX == nil:
			return -1 // numeric identifiers come first
		case errY == nil:
			return 1
		case a[i] < b[i]:
			return -1
		default:
			return 1
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

// isLanguageSubtag reports whether s is shaped like a BCP 47 primary language subtag: two
// or three lower-case letters (ISO 639).
func isLanguageSubtag(s string) bool {
	if len(s) < 2 || len(s) > 3 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return true
}

// primarySubtag returns a normalised tag's language: "pt" for "pt-BR".
func primarySubtag(tag string) string {
	lang, _, _ := strings.Cut(tag, "-")
	return lang
}

// isCountry reports whether c is an officially assigned ISO 3166-1 alpha-2 code.
func isCountry(c string) bool {
	if len(c) != 2 {
		return false
	}
	i := strings.Index(countryCodes, c)
	return i >= 0 && i%3 == 0
}

// countryCodes lists the officially assigned ISO 3166-1 alpha-2 codes, each followed by a
// space, so that a match at a multiple of three is one code.
const countryCodes = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ " +
	"CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR " +
	"GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP " +
	"KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ " +
	"NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW " +
	"SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ " +
	"UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW "
