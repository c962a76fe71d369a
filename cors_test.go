package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
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

// corsDo sends an HTTP request to ts with key (if any) and the given headers.
func corsDo(t *testing.T, ts *testServer, method, path, key string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+ts.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// absent marks a header that a response must not carry.
const absent = "<absent>"

// checkHeaders reports each header of resp that differs from want, where absent means
// that it must not be there.
func checkHeaders(t *testing.T, resp *http.Response, want map[string]string) {
	t.Helper()
	for name, w := range want {
		got, ok := resp.Header[http.CanonicalHeaderKey(name)]
		switch {
		case w == absent && ok:
			t.Errorf("%s: %q; want none", name, got)
		case w != absent && (len(got) != 1 || got[0] != w):
			t.Errorf("%s: %q; want %q", name, got, w)
		}
	}
	// Keys travel in Authorization; the browser's cookies must never be asked for.
	if v, ok := resp.Header["Access-Control-Allow-Credentials"]; ok {
		t.Errorf("Access-Control-Allow-Credentials: %q; want none", v)
	}
}

func TestCORS(t *testing.T) {
	const game, dev, evil = "https://play.example.com", "http://localhost:3000", "https://evil.example"
	ts := startServer(t, "-cors-origins", game+","+dev)
	now := time.Now()
	created, err := ts.events.CreateEvent(withKey(ts.admin), createReq("Lunar festival", now.Add(-time.Hour), now.Add(time.Hour), `{}`))
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetEvent().GetId()
	preflight := func(origin string) map[string]string {
		return map[string]string{"Origin": origin, "Access-Control-Request-Method": "GET",
			"Access-Control-Request-Headers": "authorization"}
	}
	allowed := map[string]string{
		"Access-Control-Allow-Origin": game, "Access-Control-Expose-Headers": "ETag, Retry-After",
	}
	refused := map[string]string{
		"Access-Control-Allow-Origin": absent, "Access-Control-Expose-Headers": absent,
		"Access-Control-Allow-Methods": absent, "Access-Control-Allow-Headers": absent,
	}
	preflightVary := []string{"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
	getVary := []string{"Origin", "Authorization, Accept-Encoding"}

	for _, tc := range []struct {
		name         string
		method, path string
		withKey      bool
		header       map[string]string
		wantStatus   int
		wantHeaders  map[string]string
		wantVary     []string // nil: not checked
		wantInBody   string
	}{
		{name: "preflight /events", method: "OPTIONS", path: "/events", header: preflight(game),
			wantStatus: 204, wantVary: preflightVary, wantHeaders: map[string]string{
				"Access-Control-Allow-Origin": game, "Access-Control-Allow-Methods": "GET, HEAD",
				"Access-Control-Allow-Headers": "Authorization, If-None-Match", "Access-Control-Max-Age": "600",
			}},
		{name: "preflight /events/{id}", method: "OPTIONS", path: "/events/" + id, header: preflight(game),
			wantStatus: 204, wantVary: preflightVary, wantHeaders: map[string]string{
				"Access-Control-Allow-Origin": game, "Access-Control-Allow-Methods": "GET, HEAD",
			}},
		{name: "preflight from the second origin", method: "OPTIONS", path: "/events", header: preflight(dev),
			wantStatus: 204, wantHeaders: map[string]string{"Access-Control-Allow-Origin": dev}},
		{name: "preflight from an origin not listed", method: "OPTIONS", path: "/events", header: preflight(evil),
			wantStatus: 403, wantVary: preflightVary, wantHeaders: refused,
			wantInBody: `"origin https://evil.example is not allowed`},
		{name: "preflight from an origin that differs only in port", method: "OPTIONS", path: "/events",
			header: preflight("http://localhost:3001"), wantStatus: 403, wantHeaders: refused},
		{name: "OPTIONS that is no preflight", method: "OPTIONS", path: "/events", header: map[string]string{"Origin": game},
			wantStatus: 405, wantHeaders: map[string]string{"Allow": "GET, HEAD", "Access-Control-Allow-Origin": absent}},
		{name: "preflight on a route players do not call", method: "OPTIONS", path: "/healthz", header: preflight(game),
			wantStatus: 405, wantHeaders: map[string]string{"Access-Control-Allow-Origin": absent}},

		{name: "GET /events", method: "GET", path: "/events", withKey: true, header: map[string]string{"Origin": game},
			wantStatus: 200, wantHeaders: allowed, wantVary: getVary},
		{name: "GET /events/{id}", method: "GET", path: "/events/" + id, withKey: true, header: map[string]string{"Origin": game},
			wantStatus: 200, wantHeaders: allowed, wantVary: getVary},
		{name: "HEAD /events", method: "HEAD", path: "/events", withKey: true, header: map[string]string{"Origin": game},
			wantStatus: 200, wantHeaders: allowed, wantVary: getVary},
		{name: "401 without a key", method: "GET", path: "/events", header: map[string]string{"Origin": game},
			wantStatus: 401, wantHeaders: allowed, wantVary: []string{"Origin"}},
		{name: "404 for an unknown event", method: "GET", path: "/events/" + newID(), withKey: true,
			header: map[string]string{"Origin": game}, wantStatus: 404, wantHeaders: allowed},
		{name: "400 for an unknown parameter", method: "GET", path: "/events?stauts=active", withKey: true,
			header: map[string]string{"Origin": game}, wantStatus: 400, wantHeaders: allowed},
		{name: "GET from an origin not listed", method: "GET", path: "/events", withKey: true,
			header: map[string]string{"Origin": evil}, wantStatus: 200, wantHeaders: refused, wantVary: getVary},
		{name: "GET without Origin", method: "GET", path: "/events", withKey: true,
			wantStatus: 200, wantHeaders: refused, wantVary: getVary},
		{name: "GET on a route players do not call", method: "GET", path: "/healthz",
			header: map[string]string{"Origin": game}, wantStatus: 200, wantHeaders: refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := ""
			if tc.withKey {
				key = ts.user
			}
			resp, body := corsDo(t, ts, tc.method, tc.path, key, tc.header)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d; want %d: %s", resp.StatusCode, tc.wantStatus, body)
			}
			checkHeaders(t, resp, tc.wantHeaders)
			if tc.wantVary != nil && !slices.Equal(resp.Header.Values("Vary"), tc.wantVary) {
				t.Errorf("Vary: %q; want %q", resp.Header.Values("Vary"), tc.wantVary)
			}
			if !bytes.Contains(body, []byte(tc.wantInBody)) {
				t.Errorf("body %s; want it to contain %s", body, tc.wantInBody)
			}
		})
	}

	t.Run("304 for a matching ETag", func(t *testing.T) {
		resp, _ := corsDo(t, ts, "GET", "/events", ts.user, map[string]string{"Origin": game})
		etag := resp.Header.Get("ETag")
		resp, _ = corsDo(t, ts, "GET", "/events", ts.user, map[string]string{"Origin": game, "If-None-Match": etag})
		if resp.StatusCode != 304 {
			t.Fatalf("status %d; want 304", resp.StatusCode)
		}
		checkHeaders(t, resp, allowed)
	})
}

func TestCORSThrottledAnswerIsReadable(t *testing.T) {
	const game = "https://play.example.com"
	ts := startServer(t, "-cors-origins", game, "-auth-fail-limit", "1")
	bad := newID() // not a key at all
	var resp *http.Response
	for range 3 {
		resp, _ = corsDo(t, ts, "GET", "/events", bad, map[string]string{"Origin": game})
	}
	if resp.StatusCode != 429 {
		t.Fatalf("status %d; want 429", resp.StatusCode)
	}
	checkHeaders(t, resp, map[string]string{"Access-Control-Allow-Origin": game, "Access-Control-Expose-Headers": "ETag, Retry-After"})
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
}

func TestCORSOffByDefault(t *testing.T) {
	ts := startServer(t)
	const game = "https://play.example.com"
	for _, path := range []string{"/events", "/events/" + newID()} {
		resp, body := corsDo(t, ts, "OPTIONS", path, "", map[string]string{
			"Origin": game, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
		if resp.StatusCode != 405 || !bytes.Contains(body, []byte(`"method OPTIONS not allowed; allowed: GET, HEAD"`)) {
			t.Errorf("OPTIONS %s: status %d, body %s; want 405 as before CORS", path, resp.StatusCode, body)
		}
		checkHeaders(t, resp, map[string]string{"Allow": "GET, HEAD", "Access-Control-Allow-Origin": absent, "Vary": absent})
	}
	resp, _ := corsDo(t, ts, "GET", "/events", ts.user, map[string]string{"Origin": game})
	if resp.StatusCode != 200 {
		t.Fatalf("GET /events: status %d", resp.StatusCode)
	}
	checkHeaders(t, resp, map[string]string{"Access-Control-Allow-Origin": absent, "Access-Control-Expose-Headers": absent,
		"Vary": "Authorization, Accept-Encoding"})
}

// TestCORSFromChromium is the check that counts: a real browser, on a page from another
// origin, reads GET /events with a key in Authorization, which takes a preflight, and reads
// the ETag, which takes Access-Control-Expose-Headers. A page from an origin not listed
// must fail the same fetch.
func TestCORSFromChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed; CI must install it (see .ci/run)")
		}
		t.Skip("chromium is not installed (apt-get install chromium); CI runs this test")
	}
	// The pages' servers are made first, so that the allowed page's origin (its port) is
	// known when liveops starts; they start once liveops's address is known.
	allowedPage, otherPage := httptest.NewUnstartedServer(nil), httptest.NewUnstartedServer(nil)
	ts := startServer(t, "-cors-origins", "http://"+allowedPage.Listener.Addr().String())
	now := time.Now()
	for _, title := range []string{"Lunar festival", "Double XP"} {
		if _, err := ts.events.CreateEvent(withKey(ts.admin), createReq(title, now.Add(-time.Hour), now.Add(time.Hour), `{}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, page := range []*httptest.Server{allowedPage, otherPage} {
		page.Config.Handler = fetchEventsPage("http://"+ts.addr, ts.user)
		page.Start()
		t.Cleanup(page.Close)
	}

	t.Run("allowed origin", func(t *testing.T) {
		got := runChromium(t, chromium, allowedPage.URL)
		if got.Status != 200 || !strings.HasPrefix(got.ETag, `W/"`) || got.Count != 2 || got.Error != "" {
			t.Fatalf("page shows %+v; want status 200, an ETag and 2 events", got)
		}
	})
	t.Run("origin not listed", func(t *testing.T) {
		got := runChromium(t, chromium, otherPage.URL)
		if !strings.HasPrefix(got.Error, "TypeError") {
			t.Fatalf("page shows %+v; want the fetch to fail with a TypeError", got)
		}
	})
}

// fetchEventsPage serves a page whose script reads GET /events from api with key, as a
// browser game would, and writes what it got into the page as JSON.
func fetchEventsPage(api, key string) http.Handler {
	apiJS, _ := json.Marshal(api) // JSON escapes <, > and &, so it is safe in a script
	keyJS, _ := json.Marshal(key)
	page := fmt.Sprintf(`<!doctype html>
<title>game</title>
<body>waiting</body>
<script>
function show(v) { document.body.textContent = JSON.stringify(v); }
fetch(%s + "/events", {headers: {Authorization: "Bearer " + %s}})
	.then(async r => {
		const body = await r.json();
		show({status: r.status, etag: r.headers.get("ETag"), count: body.events.length});
	})
	.catch(e => show({error: e.name + ": " + e.message}));
</script>
`, apiJS, keyJS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})
}

// pageResult is what fetchEventsPage's script shows.
type pageResult struct {
	Status int    `json:"status"`
	ETag   string `json:"etag"`
	Count  int    `json:"count"`
	Error  string `json:"error"`
}

// runChromium loads url in headless Chromium and returns what the page shows once its
// script has run. --virtual-time-budget makes Chromium wait for the page's fetches
// before it dumps the DOM, so no sleep is needed.
func runChromium(t *testing.T, chromium, url string) pageResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		// A proxy set in the environment must not see the test's requests.
		"--no-proxy-server",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--dump-dom", url)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	t.Logf("chromium took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.Bytes())
	}
	dom := string(out)
	_, text, ok := strings.Cut(dom, "<body>")
	text, _, ok2 := strings.Cut(text, "</body>")
	var got pageResult
	if !ok || !ok2 || json.Unmarshal([]byte(html.UnescapeString(text)), &got) != nil {
		t.Fatalf("page shows no result:\n%s\nchromium's stderr:\n%s", dom, stderr.Bytes())
	}
	return got
}
