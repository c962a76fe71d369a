package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// These tests hold the monitoring deliverables to the service: deploy/grafana-dashboard.json
// and deploy/alerts.yml may use only metrics /metrics exposes, promtool must accept the
// rules and the exposition, and a real Prometheus must scrape liveops with a metrics key.

const (
	dashboardFile  = "deploy/grafana-dashboard.json"
	alertsFile     = "deploy/alerts.yml"
	alertTestsFile = "deploy/alerts_test.yml"
)

// madeByPrometheus are the series Prometheus writes itself for every target.
var madeByPrometheus = map[string]bool{"up": true}

func TestDashboardAndAlertsUseExposedMetrics(t *testing.T) {
	ts := startServer(t)
	key := createServerKey(t, ts, roleMetrics)
	// A write, so that the families whose children are made on first use have one.
	now := time.Now()
	if _, err := ts.events.CreateEvent(withKey(ts.admin), createReq("Festival", now, now.Add(time.Hour), "")); err != nil {
		t.Fatal(err)
	}
	exposed := seriesNames(scrape(t, ts.addr, key))

	queries := map[string][]string{}
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if queries[dashboardFile], err = dashboardQueries(data); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	data, err = os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	if queries[alertsFile], err = ruleExprs(string(data)); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	for file, qs := range queries {
		if len(qs) == 0 {
			t.Errorf("%s: no queries found", file)
		}
		for _, q := range qs {
			if len(promqlMetricNames(q)) == 0 {
				t.Errorf("%s: no metric found in %q", file, q)
			}
			if missing := missingMetrics(q, exposed); len(missing) > 0 {
				t.Errorf("%s: %v not exposed by /metrics, in %q", file, missing, q)
			}
		}
	}
}

// seriesNames are the names of the series fams holds, as PromQL sees them: a histogram
// is its _bucket, _sum and _count series, a summary its quantiles, _sum and _count.
func seriesNames(fams map[string]*dto.MetricFamily) map[string]bool {
	names := map[string]bool{}
	for name, f := range fams {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	return names
}

// missingMetrics returns the metric names query uses that are neither in exposed nor
// made by Prometheus.
func missingMetrics(query string, exposed map[string]bool) []string {
	var missing []string
	for _, name := range promqlMetricNames(query) {
		if !exposed[name] && !madeByPrometheus[name] {
			missing = append(missing, name)
		}
	}
	return missing
}

var (
	promqlStrings = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	// promqlLabels are what hold label names, never metric names: matchers, the label
	// lists of aggregations and vector matching, and ranges and subqueries.
	promqlLabels = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]|(?i)\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	// promqlTokens are numbers and durations (0.99, 1e3, 5m), which are skipped whole, and
	// identifiers, a function or aggregation when a parenthesis follows.
	promqlTokens   = regexp.MustCompile(`[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"atan2": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// promqlMetricNames returns the metric names query selects, in order and once each. It
// reads the PromQL a dashboard and alert rules are written in, not every query: a
// selector by {__name__=...} alone is not seen.
func promqlMetricNames(query string) []string {
	q := promqlStrings.ReplaceAllString(query, `""`)
	q = promqlLabels.ReplaceAllString(q, " ")
	var names []string
	for _, tok := range promqlTokens.FindAllString(q, -1) {
		if tok[0] >= '0' && tok[0] <= '9' || strings.HasSuffix(tok, "(") || promqlKeywords[strings.ToLower(tok)] {
			continue
		}
		if !slices.Contains(names, tok) {
			names = append(names, tok)
		}
	}
	return names
}

// dashboardQueries returns every query in a Grafana dashboard: the panels' targets, those
// of panels inside collapsed rows included, and the selector of each label_values variable.
func dashboardQueries(data []byte) ([]string, error) {
	type panel struct {
		Title   string
		Targets []struct{ Expr string }
		Panels  []json.RawMessage // a collapsed row's
	}
	var d struct {
		Panels     []json.RawMessage
		Templating struct {
			List []struct{ Name, Type, Definition string }
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	var queries []string
	var walk func([]json.RawMessage) error
	walk = func(raw []json.RawMessage) error {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				return err
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					return fmt.Errorf("panel %q has a target with no expr", p.Title)
				}
				queries = append(queries, tg.Expr)
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(d.Panels); err != nil {
		return nil, err
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(strings.TrimSpace(v.Definition))
		if m == nil {
			return nil, fmt.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, v.Definition)
		}
		queries = append(queries, m[1])
	}
	return queries, nil
}

// ruleExprs returns the expr of every rule in a Prometheus rules file. deploy/alerts.yml is
// ours, so this reads only the two forms it uses, a plain scalar on the expr line or a |
// block below it, and refuses the others rather than misread them; the module has no YAML
// library to do more.
func ruleExprs(text string) ([]string, error) {
	lines := strings.Split(text, "\n")
	var exprs []string
	rules := 0
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		field := strings.TrimPrefix(strings.TrimLeft(line, " "), "- ")
		if strings.HasPrefix(field, "alert:") || strings.HasPrefix(field, "record:") {
			rules++
		}
		v, ok := strings.CutPrefix(field, "expr:")
		if !ok {
			continue
		}
		v, _, _ = strings.Cut(v, " #")
		v = strings.TrimSpace(v)
		switch {
		case v == "|" || v == "|-":
			indent := len(line) - len(strings.TrimLeft(line, " "))
			var block []string
			for ; i+1 < len(lines); i++ {
				next := lines[i+1]
				if strings.TrimSpace(next) != "" && len(next)-len(strings.TrimLeft(next, " ")) <= indent {
					break
				}
				block = append(block, strings.TrimSpace(next))
			}
			exprs = append(exprs, strings.TrimSpace(strings.Join(block, "\n")))
		case v == "" || strings.ContainsAny(v[:1], `"'>|&*!{[`):
			return nil, fmt.Errorf("line %d: write expr as a plain scalar or a | block, not %q", i+1, v)
		default:
			exprs = append(exprs, v)
		}
	}
	if len(exprs) != rules {
		return nil, fmt.Errorf("%d rules but %d exprs read", rules, len(exprs))
	}
	return exprs, nil
}

// The checks above are only as good as the name extraction: a name it drops, or a label
// it takes for a metric, and the test proves nothing or fails for nothing.
func TestDashboardAndAlertsMetricExtraction(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{`up{job="liveops"} == 0`, []string{"up"}},
		{`sum by (le, route) (rate(liveops_http_request_duration_seconds_bucket{route=~"GET /events/{id}", instance=~"$instance"}[$__rate_interval]))`,
			[]string{"liveops_http_request_duration_seconds_bucket"}},
		{`histogram_quantile(0.99, sum(rate(a_bucket[5m])) by (le)) > 0.1`, []string{"a_bucket"}},
		{"sum without (kind) (rate(a_total[5m:1m] offset 1h)) / on (instance) group_left (version) b_info", []string{"a_total", "b_info"}},
		{`a > bool 1e3 and b unless c or d`, []string{"a", "b", "c", "d"}},
		{`label_replace(a, "dst", "$1", "src", "(.*)") + ignoring(x) b * -Inf`, []string{"a", "b"}},
		{`rate(a[1m]) / rate(a[5m])`, []string{"a"}},
		{`count_values("le", go_info) atan2 0x1f`, []string{"go_info"}},
		{"a{name=`}`} + b", []string{"a", "b"}},
		{`job:a:rate5m`, []string{"job:a:rate5m"}},
	} {
		if got := promqlMetricNames(tc.query); !slices.Equal(got, tc.want) {
			t.Errorf("promqlMetricNames(%q) = %q, want %q", tc.query, got, tc.want)
		}
	}

	// A histogram is its _bucket, _sum and _count; its family name and a gauge's _count
	// are no series.
	exposed := seriesNames(map[string]*dto.MetricFamily{
		"liveops_http_request_duration_seconds": {Type: dto.MetricType_HISTOGRAM.Enum()},
		"liveops_events":                        {Type: dto.MetricType_GAUGE.Enum()},
		"go_gc_duration_seconds":                {Type: dto.MetricType_SUMMARY.Enum()},
	})
	for _, tc := range []struct {
		query   string
		missing []string
	}{
		{`rate(liveops_http_request_duration_seconds_bucket[5m])`, nil},
		{`rate(liveops_http_request_duration_seconds_count[5m]) + liveops_events + go_gc_duration_seconds{quantile="1"}`, nil},
		{`rate(liveops_http_request_duration_seconds[5m])`, []string{"liveops_http_request_duration_seconds"}},
		{`sum(liveops_events_count) + liveops_event`, []string{"liveops_events_count", "liveops_event"}},
		{`up == 0 or absent(liveops_build_info)`, []string{"liveops_build_info"}},
	} {
		if got := missingMetrics(tc.query, exposed); !slices.Equal(got, tc.missing) {
			t.Errorf("missingMetrics(%q) = %q, want %q", tc.query, got, tc.missing)
		}
	}

	rules, err := ruleExprs("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: a > 1 # a comment\n" +
		"        for: 1m\n      - alert: B\n        expr: |\n          b\n\n          or c\n        labels: {}\n      - record: r\n        expr: d\n")
	if want := []string{"a > 1", "b\n\nor c", "d"}; err != nil || !slices.Equal(rules, want) {
		t.Errorf("ruleExprs = %q, %v; want %q", rules, err, want)
	}
	for _, bad := range []string{"- alert: A\n  expr: \"a\"\n", "- alert: A\n  expr: >\n    a\n", "- alert: A\n  labels: {}\n"} {
		if rules, err := ruleExprs(bad); err == nil {
			t.Errorf("ruleExprs(%q) = %q; want an error", bad, rules)
		}
	}

	queries, err := dashboardQueries([]byte(`{"panels": [
		{"type": "row", "panels": [{"targets": [{"expr": "a"}]}]},
		{"type": "timeseries", "targets": [{"expr": "b"}, {"expr": "c"}]}],
		"templating": {"list": [{"name": "ds", "type": "datasource"},
			{"name": "i", "type": "query", "definition": "label_values(d{job=\"x\"}, instance)"}]}}`))
	if want := []string{"a", "b", "c", `d{job="x"}`}; err != nil || !slices.Equal(queries, want) {
		t.Errorf("dashboardQueries = %q, %v; want %q", queries, err, want)
	}
}

// Every alert's runbook annotation names a heading of the README, as GitHub anchors it.
func TestAlertRunbooksAreInTheREADME(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(readme), "\n") {
		if heading, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " "); ok && strings.HasPrefix(line, "#") {
			anchors[githubAnchor(heading)] = true
		}
	}
	rules, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	runbooks := regexp.MustCompile(`(?m)^\s*runbook: README\.md#(\S+)$`).FindAllStringSubmatch(string(rules), -1)
	if alerts := strings.Count(string(rules), "- alert:"); len(runbooks) != alerts {
		t.Errorf("%d alerts but %d runbook annotations", alerts, len(runbooks))
	}
	for _, m := range runbooks {
		if !anchors[m[1]] {
			t.Errorf("runbook README.md#%s: the README has no such heading", m[1])
		}
	}
}

// githubAnchor is the fragment GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestPromtoolRules(t *testing.T) {
	promtool := lookPathOrSkip(t, "promtool", "apt-get install -y prometheus")
	for _, args := range [][]string{{"check", "rules", alertsFile}, {"test", "rules", alertTestsFile}} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			out, err := exec.Command(promtool, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

// promtool check metrics lints names, types and help texts. The go_ and process_ families
// come from client_golang's collectors, which liveops cannot rename: their complaints are
// logged, not failed.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := lookPathOrSkip(t, "promtool", "apt-get install -y prometheus")
	ts := startServer(t)
	key := createServerKey(t, ts, roleMetrics)
	now := time.Now()
	if _, err := ts.events.CreateEvent(withKey(ts.admin), createReq("Festival", now, now.Add(time.Hour), "")); err != nil {
		t.Fatal(err)
	}
	ts.get(t, "/events", ts.user)
	body := metricsText(t, ts.addr, key)

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 3) { // 3: lint problems, listed
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case line == "":
		case strings.HasPrefix(line, "go_") || strings.HasPrefix(line, "process_"):
			t.Logf("promtool check metrics, about a collector's family: %s", line)
		default:
			t.Errorf("promtool check metrics: %s", line)
		}
	}
}

// TestPrometheusScrapesLiveops runs a real Prometheus scraping liveops with a metrics key,
// as README.md's "Scraping" says to, with deploy/alerts.yml loaded, and asks its API what
// it saw; every dashboard query must run on it too.
func TestPrometheusScrapesLiveops(t *testing.T) {
	prometheus := lookPathOrSkip(t, "prometheus", "apt-get install -y prometheus")
	ts := startServer(t)
	key := createServerKey(t, ts, roleMetrics)

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "liveops-metrics.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rules, err := filepath.Abs(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: liveops
    authorization:
      type: Bearer
      credentials_file: %q
    static_configs:
      - targets: [%q]
`, rules, keyFile, ts.addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, prometheus, config, filepath.Join(dir, "data"))

	const n = 5
	for range n {
		if code, _, body := ts.get(t, "/events", ts.user); code != 200 {
			t.Fatalf("GET /events = %d %s", code, body)
		}
	}
	prom.waitFor(t, `up{job="liveops"}`, func(v float64) bool { return v == 1 })
	prom.waitFor(t, `liveops_http_requests_total{job="liveops", route="GET /events", status_class="2xx"}`,
		func(v float64) bool { return v >= n })

	// Prometheus loaded every group of deploy/alerts.yml, and evaluates each rule without error.
	var groups []string
	prom.poll(t, "the rules to be evaluated", func() (bool, string) {
		var rules struct {
			Groups []struct {
				Name  string
				Rules []struct{ Name, Health, LastError string }
			}
		}
		if err := prom.api("/api/v1/rules", nil, &rules); err != nil {
			return false, err.Error()
		}
		groups = groups[:0]
		for _, g := range rules.Groups {
			groups = append(groups, g.Name)
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return false, fmt.Sprintf("rule %s in %s: health %q %s", r.Name, g.Name, r.Health, r.LastError)
				}
			}
		}
		return len(groups) > 0, fmt.Sprintf("groups %q", groups)
	})
	slices.Sort(groups)
	if want := []string{"liveops-auth", "liveops-data", "liveops-requests"}; !slices.Equal(groups, want) {
		t.Errorf("rule groups %q, want %q", groups, want)
	}

	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	queries, err := dashboardQueries(data)
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$__rate_interval", "1m", "$job", "liveops", "$instance", ".+")
	for _, q := range queries {
		var result json.RawMessage
		if err := prom.api("/api/v1/query", url.Values{"query": {vars.Replace(q)}}, &result); err != nil {
			t.Errorf("dashboard query %q: %v", q, err)
		}
	}
}

// promServer is a Prometheus started by a test.
type promServer struct {
	base string // http://127.0.0.1:port
	*tool
}

// startPrometheus runs prometheus on config until the test ends, and waits until it is ready.
func startPrometheus(t *testing.T, prometheus, config, data string) *promServer {
	t.Helper()
	// Prometheus cannot be told to pick a port and say which: take a free one and give it.
	// Another process could take it in between; the test then fails, and says why.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(prometheus, "--config.file="+config, "--storage.tsdb.path="+data,
		"--web.listen-address="+addr)
	p := &promServer{base: "http://" + addr, tool: startTool(t, "prometheus", cmd)}
	p.poll(t, "/-/ready", func() (bool, string) {
		p.failIfExited(t)
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return p
}

// poll calls ok until it reports true, failing the test with what it last said if that
// takes more than 30 seconds.
func (p *promServer) poll(t *testing.T, what string, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		done, said := ok()
		if done {
			return
		}
		if time.Now().After(deadline) {
			var targets json.RawMessage
			p.api("/api/v1/targets", nil, &targets)
			t.Fatalf("waited 30s for %s; last: %s\ntargets: %s", what, said, targets)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls the instant query q until it returns one sample whose value ok accepts.
func (p *promServer) waitFor(t *testing.T, q string, ok func(float64) bool) {
	t.Helper()
	p.poll(t, q, func() (bool, string) {
		var data struct {
			Result []struct {
				Value [2]any // unix time, and the value as a string
			}
		}
		if err := p.api("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
			return false, err.Error()
		}
		vector := data.Result
		if len(vector) != 1 {
			return false, fmt.Sprintf("%d samples", len(vector))
		}
		s, _ := vector[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return err == nil && ok(v), "value " + s
	})
}

// api calls one of Prometheus' HTTP API endpoints and decodes what it answers in data.
func (p *promServer) api(path string, params url.Values, data any) error {
	resp, err := http.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status, Error string
		Data          json.RawMessage
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}
