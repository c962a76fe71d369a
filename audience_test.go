package main

import (
	"fmt"
	"strings"
	"testing"
)

func ctxOf(platform, version, country string, langs ...string) *clientContext {
	c := &clientContext{platform: platform, country: country, langs: langs}
	if version != "" {
		v, ok := parseSemver(version)
		if !ok {
			panic("bad version " + version)
		}
		c.version, c.hasVer = v, true
	}
	return c
}

func TestAudienceMatching(t *testing.T) {
	ios := &Audience{Platforms: []string{"ios"}}
	versions := &Audience{MinVersion: "1.4.0", MaxVersion: "2.0.0"}
	fr := &Audience{Countries: []string{"FR", "BE"}}
	french := &Audience{Languages: []string{"fr"}}
	mobileNotCN := &Audience{Platforms: []string{"android", "ios"}, Exclude: &Audience{Countries: []string{"CN"}}}
	exclIOSinJP := &Audience{Exclude: &Audience{Platforms: []string{"ios"}, Countries: []string{"JP"}}}
	both := &Audience{Platforms: []string{"ios"}, Countries: []string{"FR"}}
	tests := []struct {
		name string
		a    *Audience
		c    *clientContext
		want bool
	}{
		{"no audience, no context", nil, ctxOf("", "", ""), true},
		{"platform listed", ios, ctxOf("ios", "", ""), true},
		{"platform not listed", ios, ctxOf("android", "", ""), false},
		{"platform undeclared", ios, ctxOf("", "", ""), false},
		{"version at min", versions, ctxOf("", "1.4.0", ""), true},
		{"version at max", versions, ctxOf("", "2.0.0", ""), true},
		{"version inside", versions, ctxOf("", "1.10.3", ""), true},
		{"version below", versions, ctxOf("", "1.3.9", ""), false},
		{"pre-release of min is below it", versions, ctxOf("", "1.4.0-beta.2", ""), false},
		{"version above", versions, ctxOf("", "2.0.1", ""), false},
		{"version undeclared", versions, ctxOf("ios", "", ""), false},
		{"country listed", fr, ctxOf("", "", "BE"), true},
		{"country not listed", fr, ctxOf("", "", "DE"), false},
		{"country undeclared", fr, ctxOf("", "", ""), false},
		{"language by primary subtag", french, ctxOf("", "", "", "fr-CA"), true},
		{"any of the client's languages", french, ctxOf("", "", "", "en", "fr"), true},
		{"language not listed", french, ctxOf("", "", "", "en-US"), false},
		{"language undeclared", french, ctxOf("", "", ""), false},
		{"every field must match", both, ctxOf("ios", "", "DE"), false},
		{"every field matches", both, ctxOf("ios", "", "FR"), true},
		{"excluded country", mobileNotCN, ctxOf("ios", "", "CN"), false},
		{"not excluded", mobileNotCN, ctxOf("ios", "", "FR"), true},
		{"exclude needs its field known", mobileNotCN, ctxOf("android", "", ""), true},
		{"exclude needs every field it names", exclIOSinJP, ctxOf("ios", "", "FR"), true},
		{"exclude matching every field", exclIOSinJP, ctxOf("ios", "", "JP"), false},
		{"exclude alone keeps everyone else", exclIOSinJP, ctxOf("", "", ""), true},
	}
	for _, tc := range tests {
		if got := tc.a.matches(tc.c); got != tc.want {
			t.Errorf("%s: matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAudienceValidation(t *testing.T) {
	tests := []struct {
		a     Audience
		field string // "" for valid
		value string // the offending value the message must name
	}{
		{Audience{Platforms: []string{"iOS", "Android"}}, "", ""},
		{Audience{Platforms: []string{"gameboy"}}, "audience.platforms", "gameboy"},
		{Audience{MinVersion: "1.2"}, "", ""},
		{Audience{MinVersion: "1.x"}, "audience.min_version", "1.x"},
		{Audience{MaxVersion: "01.2.3"}, "audience.max_version", "01.2.3"},
		{Audience{MinVersion: "2.0.0", MaxVersion: "1.0.0"}, "audience.max_version", "1.0.0"},
		{Audience{Countries: []string{"fr", "GB"}}, "", ""},
		{Audience{Countries: []string{"XX"}}, "audience.countries", "XX"},
		{Audience{Countries: []string{"FRA"}}, "audience.countries", "FRA"},
		{Audience{Languages: []string{"pt"}}, "", ""},
		{Audience{Languages: []string{"pt-BR"}}, "audience.languages", "pt-br"},
		{Audience{Exclude: &Audience{Platforms: []string{"toaster"}}}, "audience.exclude.platforms", "toaster"},
		{Audience{Exclude: &Audience{Exclude: &Audience{Platforms: []string{"ios"}}}}, "audience.exclude.exclude", ""},
	}
	for _, tc := range tests {
		a := tc.a
		_, err := a.validate("audience")
		if tc.field == "" {
			if err != nil {
				t.Errorf("%+v: %v, want valid", tc.a, err)
			}
			continue
		}
		fe := fieldProblems(err)
		if len(fe) != 1 || fe[0].Field != tc.field || !strings.Contains(strings.ToLower(fe[0].Reason), strings.ToLower(tc.value)) {
			t.Errorf("%+v: got %v, want a problem with %s naming %q", tc.a, err, tc.field, tc.value)
		}
	}
	a := Audience{Platforms: []string{"IOS", "ios", "android"}, Countries: []string{"fr", "FR"}}
	got, err := a.validate("audience")
	if err != nil || strings.Join(got.Platforms, ",") != "android,ios" || strings.Join(got.Countries, ",") != "FR" {
		t.Errorf("normalised to %+v, %v", got, err)
	}
	if got, err := (&Audience{}).validate("audience"); got != nil || err != nil {
		t.Errorf("an empty audience is %+v, %v; want nil", got, err)
	}
}

func TestRolloutIsStickyMonotonicAndFair(t *testing.T) {
	const players = 100_000
	event := "0b7d3c3e-4f1a-4a53-9c5e-2f9a8d6b1e20"
	in := make([]bool, players)
	for _, percent := range []int32{1, 10, 25, 50, 90, 100} {
		n := 0
		for i := range players {
			id := fmt.Sprintf("player-%d", i)
			got := inRollout(event, id, percent)
			if got != inRollout(event, id, percent) {
				t.Fatalf("player %s: not sticky", id)
			}
			if in[i] && !got {
				t.Fatalf("player %s: in at a lower percentage, out at %d%%", id, percent)
			}
			in[i] = got
			if got {
				n++
			}
		}
		share := float64(n) / players * 100
		if share < float64(percent)-2 || share > float64(percent)+2 {
			t.Errorf("%d%%: %.2f%% of players are in", percent, share)
		}
	}
	if inRollout(event, "", 50) {
		t.Error("a request without a player id is in a 50% rollout")
	}
	if !inRollout(event, "", 100) {
		t.Error("a request without a player id is out of a 100% event")
	}
	// Each event draws its own share: being in one says nothing about another.
	other := "7c1e2d9a-1111-4a53-9c5e-2f9a8d6b1e20"
	both := 0
	for i := range players {
		id := fmt.Sprintf("player-%d", i)
		if inRollout(event, id, 50) && inRollout(other, id, 50) {
			both++
		}
	}
	if share := float64(both) / players * 100; share < 23 || share > 27 {
		t.Errorf("%.2f%% of players are in two independent 50%% rollouts, want about 25%%", share)
	}
}

func TestSemverOrder(t *testing.T) {
	ordered := []string{"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2", "v1.10.0", "2"}
	for i := range ordered {
		for j := range ordered {
			a, okA := parseSemver(ordered[i])
			b, okB := parseSemver(ordered[j])
			if !okA || !okB {
				t.Fatalf("%q or %q does not parse", ordered[i], ordered[j])
			}
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.compare(b); got != want {
				t.Errorf("compare(%s, %s) = %d, want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
	for _, bad := range []string{"", "1.2.3.4", "1..2", "01.2.3", "1.2.3-", "1.2.3-a..b", "a.b.c", "1.2.-3"} {
		if _, ok := parseSemver(bad); ok {
			t.Errorf("%q parses", bad)
		}
	}
}

func TestLocaleFallback(t *testing.T) {
	locales := map[string]Localization{"fr": {}, "fr-CA": {}, "pt-BR": {}, "zh-Hant": {}}
	tests := []struct {
		langs []string
		want  string
	}{
		{nil, ""},
		{[]string{"fr-CA"}, "fr-CA"},              // exact
		{[]string{"fr-BE"}, "fr"},                 // primary language, the bare one first
		{[]string{"pt-PT"}, "pt-BR"},              // primary language, another region
		{[]string{"de", "fr-CH"}, "fr"},           // the next language when the first has nothing
		{[]string{"en-GB", "fr"}, ""},             // the default locale (en) comes first
		{[]string{"ja"}, ""},                      // nothing fits: the default text
		{[]string{"zh-Hant-TW", "fr"}, "zh-Hant"}, // not exact, not bare: the same language
		{[]string{"en-US", "zh-Hant"}, ""},        // en is the default's language
		{[]string{"es", "it", "pt"}, "pt-BR"},     // down the list
		{[]string{"fr-CA", "en"}, "fr-CA"},        // exact beats the default further down
		{[]string{"en", "fr-CA"}, ""},             // and the other way round
		{[]string{"zh-Hans"}, "zh-Hant"},          // the same language in another script
		{[]string{"fr-ca"}, "fr"},                 // tags must be normalised first: not exact
		{[]string{"pt"}, "pt-BR"},                 // bare client language, a regional locale
		{[]string{"no", "nb", "nn", "sv"}, ""},    // none
		{[]string{"FR"}, ""},                      // not normalised: nothing matches
		{[]string{"fr", "fr-CA"}, "fr"},           // order wins
		{[]string{"fr-CA", "fr"}, "fr-CA"},        // order wins
		{[]string{"en-GB"}, ""},                   // the default's language
		{[]string{"pt-BR", "en"}, "pt-BR"},        // exact
		{[]string{"es-419", "fr"}, "fr"},          // a numeric region
		{[]string{"zh"}, "zh-Hant"},               // bare
		{[]string{"sr-Latn-RS", "zh-Hant"}, "zh-Hant"},
	}
	for _, tc := range tests {
		if got := chooseLocale(locales, tc.langs, "en"); got != tc.want {
			t.Errorf("langs %v: got %q, want %q", tc.langs, got, tc.want)
		}
	}
}

func TestAcceptLanguage(t *testing.T) {
	tests := []struct {
		header string
		want   string
	}{
		{"fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", "fr-CH fr en de"},
		{"en;q=0.5, ja", "ja en"},
		{"pt_br", "pt-BR"},
		{"zh-hant-tw", "zh-Hant-TW"},
		{"fr;q=0, en", "en"},
		{"garbage!!, de;q=2, it;q=x, es", "es"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := strings.Join(parseAcceptLanguage([]string{tc.header}), " "); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.header, got, tc.want)
		}
	}
	long := strings.Repeat("en,", 1000)
	if got := parseAcceptLanguage([]string{long}); len(got) > maxClientLangs {
		t.Errorf("kept %d languages of a long header", len(got))
	}
}

func TestLocalizationValidation(t *testing.T) {
	got, err := validateLocalizations(map[string]Localization{"pt_br": {Title: " Festa "}, "FR": {Description: "Fête"}})
	if err != nil || got["pt-BR"].Title != "Festa" || got["fr"].Description != "Fête" {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, tc := range []struct {
		in    map[string]Localization
		field string
	}{
		{map[string]Localization{"english": {Title: "x"}}, "localizations"},
		{map[string]Localization{"fr": {}}, `localizations["fr"]`},
		{map[string]Localization{"fr": {Title: strings.Repeat("é", maxTitleRunes+1)}}, `localizations["fr"].title`},
		{map[string]Localization{"fr": {Title: "a\u202eb"}}, `localizations["fr"].title`},
		{map[string]Localization{"fr": {Title: "x"}, "FR": {Title: "y"}}, `localizations["fr"]`},
	} {
		_, err := validateLocalizations(tc.in)
		fe := fieldProblems(err)
		if len(fe) != 1 || fe[0].Field != tc.field {
			t.Errorf("%v: got %v, want one problem with %s", tc.in, err, tc.field)
		}
	}
}
