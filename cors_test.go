package main

import (
	"io"
	"slices"
	"strings"
	"testing"
)

func TestCORSOriginsFlag(t *testing.T) {
	for _, tc := range []struct {
		name, flag, env string
		want            []string
		wantErr         string
	}{
		{name: "off by default"},
		{name: "two origins", flag: "https://play.example.com, http://localhost:3000",
			want: []string{"https://play.example.com", "http://localhost:3000"}},
		{name: "from the environment", env: "https://play.example.com", want: []string{"https://play.example.com"}},
		{name: "flag over environment", flag: "https://a.example", env: "https://b.example", want: []string{"https://a.example"}},
		{name: "IPv6 with port", flag: "http://[::1]:8000", want: []string{"http://[::1]:8000"}},
		{name: "empty entries skipped", flag: "https://play.example.com,", want: []string{"https://play.example.com"}},
		{name: "wildcard", flag: "*", wantErr: "a wildcard would let any web site a player visits use that player's key"},
		{name: "wildcard subdomain", flag: "https://*.example.com", wantErr: "* is not allowed"},
		{name: "no scheme", flag: "play.example.com", wantErr: "needs the scheme http:// or https://"},
		{name: "host and port, no scheme", flag: "localhost:3000", wantErr: "needs the scheme"},
		{name: "other scheme", flag: "ftp://play.example.com", wantErr: "needs the scheme"},
		{name: "null", flag: "null", wantErr: "needs the scheme"},
		{name: "path", flag: "https://play.example.com/game", wantErr: "has a path"},
		{name: "query", flag: "https://play.example.com?x=1", wantErr: "has a query"},
		{name: "user", flag: "https://me@play.example.com", wantErr: "has user information"},
		{name: "no host", flag: "https://", wantErr: "has no host"},
		{name: "non-ASCII host", flag: "https://bücher.example", wantErr: "xn-- form"},
		{name: "trailing slash", flag: "https://play.example.com/", wantErr: `write "https://play.example.com"`},
		{name: "upper case", flag: "HTTPS://Play.Example.com", wantErr: `write "https://play.example.com"`},
		{name: "default port", flag: "https://play.example.com:443", wantErr: `write "https://play.example.com"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			if tc.flag != "" {
				args = []string{"-cors-origins", tc.flag}
			}
			getenv := func(name string) string {
				if name == "LIVEOPS_CORS_ORIGINS" {
					return tc.env
				}
				return ""
			}
			cfg, err := parseConfig(args, getenv, io.Discard, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseConfig(-cors-origins %q) = %v; want an error containing %q", tc.flag, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.corsOrigins, tc.want) {
				t.Fatalf("corsOrigins = %q; want %q", cfg.corsOrigins, tc.want)
			}
		})
	}
}
