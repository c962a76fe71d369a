package main

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// This file holds localized text: an event's title and description per locale, BCP 47
// tags, and choosing the locale a client gets.

// Localization is an event's text in one locale. The event's own Title and Description
// are its text in the default locale.
type Localization struct {
	Title       string
	Description string
}

const (
	maxLocalizations = 50
	maxLocaleLen     = 35
	maxClientLangs   = 10 // of Accept-Language: more is noise, or an attack
)

// normalizeLocale checks that tag is a well-formed BCP 47 tag of the common shape
// (language[-script][-region][-variant...]) and returns it in its canonical case: "pt-BR",
// "zh-Hant-TW", "sr-Latn". '_' is read as '-', as Android and Java write locales.
func normalizeLocale(tag string) (string, error) {
	if isCanonicalLocale(tag) {
		return tag, nil // what clients send most: no copy
	}
	if tag == "" || len(tag) > maxLocaleLen {
		return "", fmt.Errorf("locale %q must be a BCP 47 tag of 2 to %d characters such as fr or pt-BR", tag, maxLocaleLen)
	}
	parts := strings.Split(strings.ReplaceAll(tag, "_", "-"), "-")
	if !isLanguageSubtag(strings.ToLower(parts[0])) {
		return "", fmt.Errorf("locale %q must start with a 2- or 3-letter language such as fr or pt-BR", tag)
	}
	parts[0] = strings.ToLower(parts[0])
	for i := 1; i < len(parts); i++ {
		p := parts[i]
		switch {
		case i == 1 && len(p) == 4 && isAlpha(p): // script
			parts[i] = strings.ToUpper(p[:1]) + strings.ToLower(p[1:])
		case len(p) == 2 && isAlpha(p), len(p) == 3 && isDigits(p): // region
			parts[i] = strings.ToUpper(p)
		case len(p) >= 4 && len(p) <= 8 && isAlnum(p): // variant
			parts[i] = strings.ToLower(p)
		default:
			return "", fmt.Errorf("locale %q has a malformed subtag %q; want a BCP 47 tag such as fr or pt-BR", tag, p)
		}
	}
	return strings.Join(parts, "-"), nil
}

// isCanonicalLocale reports whether tag is already a normalised language or
// language-REGION tag, such as "fr" or "pt-BR".
func isCanonicalLocale(tag string) bool {
	lang, region, hasRegion := strings.Cut(tag, "-")
	if !isLanguageSubtag(lang) {
		return false
	}
	if !hasRegion {
		return true
	}
	return len(region) == 2 && 'A' <= region[0] && region[0] <= 'Z' && 'A' <= region[1] && region[1] <= 'Z'
}

func isAlpha(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i] | 0x20; c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9') && !isAlpha(s[i:i+1]) {
			return false
		}
	}
	return true
}

// validateLocalizations checks and normalises an event's localizations: each key a BCP 47
// tag (two spellings of one tag are refused), each text held to the rules of the default
// text. An empty title falls back to the default title.
func validateLocalizations(in map[string]Localization) (map[string]Localization, error) {
	if len(in) == 0 {
		return nil, nil
	}
	var errs fieldErrors
	if len(in) > maxLocalizations {
		return nil, &fieldError{"localizations", fmt.Sprintf("must have at most %d locales, got %d", maxLocalizations, len(in))}
	}
	out := make(map[string]Localization, len(in))
	for _, tag := range slices.Sorted(maps.Keys(in)) {
		l := in[tag]
		norm, err := normalizeLocale(tag)
		if err != nil {
			errs.add(&fieldError{"localizations", err.Error()})
			continue
		}
		field := "localizations[" + strconv.Quote(norm) + "]"
		if _, dup := out[norm]; dup {
			errs.add(&fieldError{field, fmt.Sprintf("is given twice (as %q and another spelling)", tag)})
			continue
		}
		l.Title, l.Description = strings.TrimSpace(l.Title), strings.TrimSpace(l.Description)
		if l.Title == "" && l.Description == "" {
			errs.add(&fieldError{field, "needs a title or a description"})
			continue
		}
		errs.add(checkText(field+".title", l.Title, maxTitleRunes, false))
		errs.add(checkText(field+".description", l.Description, maxDescriptionRunes, true))
		out[norm] = l
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}

// chooseLocale returns the locale of e's text that best fits a client asking for langs
// (normalised tags, best first), and "" for the default text: for each language in turn,
// an exact match, then a locale of the same primary language (the bare language first);
// the default text when none fits, or when the default locale does first.
func chooseLocale(locales map[string]Localization, langs []string, defaultLocale string) string {
	if len(locales) == 0 {
		return ""
	}
	for _, want := range langs {
		if want == defaultLocale {
			return ""
		}
		if _, ok := locales[want]; ok {
			return want
		}
		lang := primarySubtag(want)
		if _, ok := locales[lang]; ok {
			return lang
		}
		if primarySubtag(defaultLocale) == lang {
			return ""
		}
		best := ""
		for tag := range locales {
			if primarySubtag(tag) == lang && (best == "" || tag < best) {
				best = tag
			}
		}
		if best != "" {
			return best
		}
	}
	return ""
}

// parseAcceptLanguage reads an Accept-Language header into normalised tags, most wanted
// first. Malformed entries and "*" are skipped, not refused: browsers and engines send
// this header unasked. At most maxClientLangs are kept.
func parseAcceptLanguage(values []string) []string {
	if len(values) == 1 && isCanonicalLocale(values[0]) {
		return []string{values[0]} // one plain tag, as the language parameter usually is
	}
	type weighted struct {
		tag string
		q   float64
		i   int
	}
	var ws []weighted
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			tag, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			q := 1.0
			if p, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
				f, err := strconv.ParseFloat(p, 64)
				if err != nil || f < 0 || f > 1 {
					continue
				}
				q = f
			}
			norm, err := normalizeLocale(strings.TrimSpace(tag))
			if err != nil || q == 0 {
				continue
			}
			ws = append(ws, weighted{norm, q, len(ws)})
			if len(ws) == maxClientLangs {
				break
			}
		}
	}
	slices.SortStableFunc(ws, func(a, b weighted) int {
		switch {
		case a.q > b.q:
			return -1
		case a.q < b.q:
			return 1
		}
		return 0
	})
	out := make([]string, 0, len(ws))
	for _, w := range ws {
		if !slices.Contains(out, w.tag) {
			out = append(out, w.tag)
		}
	}
	return out
}
