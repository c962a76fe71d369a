// Command attack drives a liveops server with hostile HTTP/2 clients, written frame by frame
// with golang.org/x/net/http2's Framer, and measures how the server copes while it runs:
//
//	keyless  gRPC CreateEvent streams without a key, each announcing a 1 MiB message and
//	         sending ~1 MB of it, never finishing it; counts the streams the server answers
//	         (UNAUTHENTICATED is grpc-status 16) and how much body each had sent by then
//	stall    GET /events?status=active,upcoming with a valid key, from a client whose
//	         SETTINGS_INITIAL_WINDOW_SIZE is 0 and which never sends WINDOW_UPDATE, so no
//	         answer can ever be delivered
//	reset    the same GET, each HEADERS followed at once by RST_STREAM(CANCEL), as fast as the
//	         connection takes them
//	none     no attack: the baseline for the measurements below
//
// While the attack runs it samples, every -probe-interval, GET /healthz and GET /events (with
// -key) latencies over separate HTTP/1.1 connections, and the server's VmRSS from
// /proc/PID/status (-pid). When the attack stops it closes its connections and checks that a
// GET /events answers 200 within -recover-within. It prints one line about the attack and,
// when it measured anything, one line of measurements; -json FILE writes both as JSON.
//
//	go run ./scripts/attack -mode stall -addr 127.0.0.1:8080 -key "$PLAYER" -pid "$PID" -duration 4s
//
// It only talks to loopback addresses, stops by itself after -duration (plus the recovery
// check), and exits hard if anything is still running well after that.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

type config struct {
	mode          string
	addr          string
	key           string
	duration      time.Duration
	conns         int
	streams       int
	path          string
	bodyBytes     int
	announce      uint
	batch         int
	pid           int
	probeInterval time.Duration
	probeTimeout  time.Duration
	probePath     string
	recoverWithin time.Duration
	recoverMax    time.Duration
	jsonOut       string
}

func main() {
	var c config
	flag.StringVar(&c.mode, "mode", "", "keyless, stall, reset or none")
	flag.StringVar(&c.addr, "addr", "127.0.0.1:8080", "server address; must be a loopback address")
	flag.StringVar(&c.key, "key", "", "http_user key: for stall and reset, and for the GET /events probes")
	flag.DurationVar(&c.duration, "duration", 4*time.Second, "how long the attack runs")
	flag.IntVar(&c.conns, "conns", 0, "attacking connections (default: keyless 2, stall 4, reset 4)")
	flag.IntVar(&c.streams, "streams", 250, "keyless: streams per connection; stall: streams kept open per connection")
	flag.StringVar(&c.path, "path", "/events?status=active,upcoming", "stall and reset: the request path")
	flag.IntVar(&c.bodyBytes, "body-bytes", 1_000_000, "keyless: message bytes each stream sends after the 5-byte gRPC prefix")
	flag.UintVar(&c.announce, "announce", 1<<20, "keyless: message length the gRPC prefix announces")
	flag.IntVar(&c.batch, "batch", 16, "reset: HEADERS+RST_STREAM pairs written per flush")
	flag.IntVar(&c.pid, "pid", 0, "server process id, to sample its VmRSS (0: do not)")
	flag.DurationVar(&c.probeInterval, "probe-interval", 100*time.Millisecond, "how often to probe /healthz, GET /events and RSS (0: do not probe)")
	flag.DurationVar(&c.probeTimeout, "probe-timeout", time.Second, "a probe taking longer than this fails")
	flag.StringVar(&c.probePath, "probe-path", "/events", "the GET /events probe's path (needs -key)")
	flag.DurationVar(&c.recoverWithin, "recover-within", time.Second, "after the attack, GET /events must answer 200 within this")
	flag.DurationVar(&c.recoverMax, "recover-latency", 250*time.Millisecond, "and that answer must take at most this long")
	flag.StringVar(&c.jsonOut, "json", "", "also write the result as JSON to this file")
	flag.Parse()
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		os.Exit(2)
	}
	// Whatever happens below, this process does not outlive its budget by much.
	time.AfterFunc(c.duration+c.recoverWithin+15*time.Second, func() {
		fmt.Fprintln(os.Stderr, "attack: still running long after -duration; exiting")
		os.Exit(3)
	})
	res := run(c)
	fmt.Println(res.attackLine())
	if c.pid != 0 || c.probeInterval > 0 {
		fmt.Println(res.measureLine())
	}
	if c.jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(c.jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "attack:", err)
			os.Exit(1)
		}
	}
}

func (c *config) check() error {
	switch c.mode {
	case "keyless":
		c.conns = cmp0(c.conns, 2)
	case "stall", "reset":
		c.conns = cmp0(c.conns, 4)
		if c.key == "" {
			return fmt.Errorf("-mode %s needs -key (an http_user key)", c.mode)
		}
	case "none":
	default:
		return fmt.Errorf("-mode must be keyless, stall, reset or none, got %q", c.mode)
	}
	host, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return fmt.Errorf("-addr %q does not resolve", c.addr)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("-addr %q is not a loopback address; this tool only attacks 127.0.0.1", c.addr)
		}
	}
	if c.duration <= 0 || c.duration > 60*time.Second {
		return errors.New("-duration must be between 0 and 60s")
	}
	if c.conns < 0 || c.conns > 64 || c.streams <= 0 || c.streams > 10000 || c.batch <= 0 {
		return errors.New("-conns must be at most 64, -streams between 1 and 10000, -batch positive")
	}
	if c.bodyBytes < 0 || c.announce > math.MaxUint32 {
		return errors.New("-body-bytes must not be negative, -announce must fit in 32 bits")
	}
	return nil
}

func cmp0(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// result is everything one run found.
type result struct {
	Mode     string  `json:"mode"`
	Seconds  float64 `json:"seconds"`
	Conns    int     `json:"conns"`
	Dials    int64   `json:"dials"`
	DialErrs int64   `json:"dial_errors"`
	// Opened is streams opened (HEADERS sent); Answered, those that got response HEADERS.
	Opened     int64          `json:"streams_opened"`
	Answered   int64          `json:"streams_answered"`
	Status     map[string]int `json:"status"`
	GRPCStatus map[string]int `json:"grpc_status"`
	RST        map[string]int `json:"rst_from_server"`
	GoAway     map[string]int `json:"goaway_from_server"`
	ConnEnded  int64          `json:"conns_ended_by_server"`
	BytesSent  int64          `json:"data_bytes_sent"`
	BytesRecv  int64          `json:"data_bytes_received"`
	// AnsweredAfter: keyless only, body bytes each answered stream had sent when its
	// response HEADERS arrived (min, median, max).
	AnsweredAfter []int64 `json:"answered_after_body_bytes,omitempty"`

	RSSPeakMB  float64      `json:"rss_peak_mb"`
	HWMMB      float64      `json:"hwm_mb"`
	RSSAfterMB float64      `json:"rss_after_mb"`
	ServerGone bool         `json:"server_gone"`
	Healthz    probeSummary `json:"healthz"`
	Events     probeSummary `json:"events"`
	Recovered  bool         `json:"recovered"`
	RecoverMS  float64      `json:"recover_ms"`
	RecoverErr string       `json:"recover_error,omitempty"`
}

type probeSummary struct {
	N        int            `json:"n"`
	Failures int            `json:"failures"`
	P50MS    float64        `json:"p50_ms"`
	P95MS    float64        `json:"p95_ms"`
	MaxMS    float64        `json:"max_ms"`
	Why      map[string]int `json:"why,omitempty"`
}

func run(c config) *result {
	a := &attacker{c: c, status: map[string]int{}, grpc: map[string]int{}, rst: map[string]int{}, goaway: map[string]int{}}
	res := &result{Mode: c.mode, Conns: c.conns}

	mctx, stopMeasuring := context.WithCancel(context.Background())
	var measure sync.WaitGroup
	var rss rssSampler
	hz := &prober{name: "healthz", url: "http://" + c.addr + "/healthz"}
	ev := &prober{name: "events", url: "http://" + c.addr + c.probePath, key: c.key}
	if c.pid != 0 {
		rss.pid = c.pid
		rss.sample() // before the attack
		measure.Go(func() { rss.run(mctx, cmpDur(c.probeInterval, 100*time.Millisecond)) })
	}
	if c.probeInterval > 0 {
		measure.Go(func() { hz.run(mctx, c.probeInterval, c.probeTimeout) })
		if c.key != "" {
			measure.Go(func() { ev.run(mctx, c.probeInterval, c.probeTimeout) })
		}
	}

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), c.duration)
	if c.mode == "none" {
		<-ctx.Done()
	} else {
		var workers sync.WaitGroup
		for range c.conns {
			workers.Go(func() { a.worker(ctx) })
		}
		workers.Wait() // every worker closes its connection when ctx ends
	}
	cancel()
	res.Seconds = time.Since(start).Seconds()
	stopMeasuring()
	measure.Wait()

	// Recovery: with every attacking connection closed, the service must answer at once.
	end := time.Now()
	if c.key != "" {
		res.Recovered, res.RecoverMS, res.RecoverErr = checkRecovery(c, end)
	}
	if c.pid != 0 {
		rss.sample()
		res.RSSPeakMB, res.HWMMB, res.RSSAfterMB, res.ServerGone = rss.peakMB(), rss.hwmMB(), rss.lastMB(), rss.gone
	}
	res.Healthz, res.Events = hz.summary(), ev.summary()

	a.mu.Lock()
	defer a.mu.Unlock()
	res.Dials, res.DialErrs = a.dials.Load(), a.dialErrs.Load()
	res.Opened, res.Answered = a.opened.Load(), a.answered.Load()
	res.Status, res.GRPCStatus, res.RST, res.GoAway = a.status, a.grpc, a.rst, a.goaway
	res.ConnEnded = a.connEnded.Load()
	res.BytesSent, res.BytesRecv = a.sent.Load(), a.recv.Load()
	if len(a.answeredAfter) > 0 {
		s := slices.Sorted(slices.Values(a.answeredAfter))
		res.AnsweredAfter = []int64{s[0], s[len(s)/2], s[len(s)-1]}
	}
	return res
}

func cmpDur(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

// checkRecovery polls GET /events on fresh connections until one answers 200 within
// c.recoverMax, or c.recoverWithin has passed since end.
func checkRecovery(c config, end time.Time) (ok bool, ms float64, why string) {
	deadline := end.Add(c.recoverWithin)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, time.Since(end).Seconds() * 1000, why
		}
		tr := &http.Transport{DisableKeepAlives: true, DisableCompression: true}
		lat, err := get(&http.Client{Transport: tr, Timeout: left}, "http://"+c.addr+c.probePath, c.key)
		tr.CloseIdleConnections()
		switch {
		case err != nil:
			why = err.Error()
		case lat > c.recoverMax:
			why = fmt.Sprintf("200 took %.0f ms", lat.Seconds()*1000)
		default:
			return true, time.Since(end).Seconds() * 1000, ""
		}
		time.Sleep(min(50*time.Millisecond, time.Until(deadline)))
	}
}

// get fetches url, reading the whole body, and fails on anything but 200.
func get(client *http.Client, url, key string) (time.Duration, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return time.Since(t0), errors.New(shortErr(err))
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	lat := time.Since(t0)
	if err != nil {
		return lat, errors.New("body: " + shortErr(err))
	}
	if resp.StatusCode != http.StatusOK {
		return lat, fmt.Errorf("status %d", resp.StatusCode)
	}
	return lat, nil
}

// shortErr names an error's kind without the URL, so failures group well.
func shortErr(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// prober GETs one URL every interval, each request in its own goroutine, so a slow answer
// does not delay the next probe.
type prober struct {
	name, url, key string
	mu             sync.Mutex
	lat            []time.Duration
	fails          int
	why            map[string]int
}

func (p *prober) run(ctx context.Context, interval, timeout time.Duration) {
	tr := &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			wg.Go(func() {
				lat, err := get(client, p.url, p.key)
				p.mu.Lock()
				defer p.mu.Unlock()
				if err != nil {
					p.fails++
					if p.why == nil {
						p.why = map[string]int{}
					}
					p.why[err.Error()]++
					return
				}
				p.lat = append(p.lat, lat)
			})
		}
	}
}

// summary gives latency percentiles of the successful probes, and the failures apart.
func (p *prober) summary() probeSummary {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := probeSummary{N: len(p.lat) + p.fails, Failures: p.fails, Why: p.why}
	if len(p.lat) > 0 {
		l := slices.Sorted(slices.Values(p.lat))
		ms := func(d time.Duration) float64 { return math.Round(d.Seconds()*100000) / 100 }
		pct := func(q float64) time.Duration { return l[max(0, int(math.Ceil(q*float64(len(l))))-1)] }
		s.P50MS, s.P95MS, s.MaxMS = ms(pct(0.50)), ms(pct(0.95)), ms(l[len(l)-1])
	}
	return s
}

// rssSampler reads VmRSS and VmHWM from /proc/PID/status.
type rssSampler struct {
	pid                 int
	mu                  sync.Mutex
	peakKB, hwmKB, last int64
	gone                bool
}

func (r *rssSampler) run(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r.sample()
		}
	}
}

func (r *rssSampler) sample() {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(r.pid) + "/status")
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.gone = true
		return
	}
	for line := range strings.Lines(string(b)) {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		switch name {
		case "VmRSS":
			r.last = kb
			r.peakKB = max(r.peakKB, kb)
		case "VmHWM":
			r.hwmKB = kb
		}
	}
}

func (r *rssSampler) peakMB() float64 { r.mu.Lock(); defer r.mu.Unlock(); return mb(r.peakKB) }
func (r *rssSampler) hwmMB() float64  { r.mu.Lock(); defer r.mu.Unlock(); return mb(r.hwmKB) }
func (r *rssSampler) lastMB() float64 { r.mu.Lock(); defer r.mu.Unlock(); return mb(r.last) }
func mb(kb int64) float64             { return math.Round(float64(kb)/1024*10) / 10 }

// attacker holds the counters every connection adds to.
type attacker struct {
	c                                 config
	dials, dialErrs, opened, answered atomic.Int64
	sent, recv, connEnded             atomic.Int64
	mu                                sync.Mutex
	status, grpc, rst, goaway         map[string]int
	answeredAfter                     []int64
}

func (a *attacker) count(m map[string]int, k string) {
	a.mu.Lock()
	m[k]++
	a.mu.Unlock()
}

// worker keeps one attacking connection going until ctx ends, dialling again when the
// server closes it or sends GOAWAY.
func (a *attacker) worker(ctx context.Context) {
	for ctx.Err() == nil {
		a.dials.Add(1)
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		nc, err := d.DialContext(dctx, "tcp", a.c.addr)
		cancel()
		if err != nil {
			a.dialErrs.Add(1)
			sleep(ctx, 50*time.Millisecond)
			continue
		}
		s := newSession(a, nc)
		s.run(ctx)
		if ctx.Err() == nil && a.c.mode != "reset" {
			// Keyless and stall hold their streams; do not spin if the server keeps refusing.
			sleep(ctx, 100*time.Millisecond)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// session is one HTTP/2 connection: a reader goroutine that answers the server's SETTINGS
// and PINGs and tracks flow control, and the mode's writer.
type session struct {
	a    *attacker
	nc   net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // guards fr's writing side, bw, henc and hbuf
	bw   *bufio.Writer
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu           sync.Mutex
	kick         chan struct{} // something changed: a window, the settings, a stream closed
	settings     chan struct{} // closed at the server's first SETTINGS
	settingsSeen bool
	connWin      int64 // what we may still send on the connection
	peerInitWin  int64
	peerMaxConc  uint32
	peerMaxFrame uint32
	streams      map[uint32]*stream // open streams, keyless and stall only
	goaway       bool
	done         chan struct{} // closed when the reader stops
	closing      atomic.Bool   // we are closing the connection ourselves
	nextID       uint32
}

type stream struct {
	id       uint32
	win      int64 // what we may still send on it
	sent     int64 // body bytes sent (keyless)
	answered bool
}

func newSession(a *attacker, nc net.Conn) *session {
	s := &session{a: a, nc: nc, bw: bufio.NewWriterSize(nc, 256<<10),
		kick: make(chan struct{}, 1), settings: make(chan struct{}), done: make(chan struct{}),
		connWin: 65535, peerInitWin: 65535, peerMaxConc: math.MaxUint32, peerMaxFrame: 16384,
		streams: map[uint32]*stream{}, nextID: 1}
	s.fr = http2.NewFramer(s.bw, bufio.NewReaderSize(nc, 64<<10))
	s.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	s.fr.MaxHeaderListSize = 1 << 20
	s.henc = hpack.NewEncoder(&s.hbuf)
	return s
}

func (s *session) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// write runs fn with the writing side locked, then flushes.
func (s *session) write(fn func() error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := fn(); err != nil {
		return err
	}
	return s.bw.Flush()
}

func (s *session) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, s.close)
	defer stop()
	defer func() { s.close(); <-s.done }()

	stall := s.a.c.mode == "stall"
	err := s.write(func() error {
		if _, err := s.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		win := uint32(1 << 20)
		if stall {
			win = 0 // the server may send no DATA at all
		}
		if err := s.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: win}); err != nil {
			return err
		}
		if !stall {
			return s.fr.WriteWindowUpdate(0, 1<<30)
		}
		return nil
	})
	go s.readLoop()
	if err != nil {
		return
	}
	select { // the server's SETTINGS say how many streams it takes
	case <-s.settings:
	case <-s.done:
		return
	case <-ctx.Done():
		return
	case <-time.After(2 * time.Second):
	}
	switch s.a.c.mode {
	case "keyless":
		s.runKeyless(ctx)
	case "stall":
		s.runStall(ctx)
	case "reset":
		s.runReset(ctx)
	}
	if ctx.Err() == nil {
		select { // the server ended the connection, or sent GOAWAY: let it finish saying so
		case <-s.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *session) close() {
	s.closing.Store(true)
	s.nc.Close()
}

func (s *session) readLoop() {
	defer close(s.done)
	defer s.signal()
	a := s.a
	stall := a.c.mode == "stall"
	for {
		f, err := s.fr.ReadFrame()
		if err != nil {
			if !s.closing.Load() {
				a.connEnded.Add(1)
			}
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			s.mu.Lock()
			f.ForeachSetting(func(st http2.Setting) error {
				switch st.ID {
				case http2.SettingInitialWindowSize:
					delta := int64(st.Val) - s.peerInitWin
					for _, str := range s.streams {
						str.win += delta
					}
					s.peerInitWin = int64(st.Val)
				case http2.SettingMaxConcurrentStreams:
					s.peerMaxConc = st.Val
				case http2.SettingMaxFrameSize:
					s.peerMaxFrame = st.Val
				}
				return nil
			})
			first := !s.settingsSeen
			s.settingsSeen = true
			s.mu.Unlock()
			s.write(s.fr.WriteSettingsAck)
			if first {
				close(s.settings)
			}
			s.signal()
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				s.write(func() error { return s.fr.WritePing(true, data) })
			}
		case *http2.WindowUpdateFrame:
			s.mu.Lock()
			if f.StreamID == 0 {
				s.connWin += int64(f.Increment)
			} else if str := s.streams[f.StreamID]; str != nil {
				str.win += int64(f.Increment)
			}
			s.mu.Unlock()
			s.signal()
		case *http2.MetaHeadersFrame:
			s.onHeaders(f)
		case *http2.DataFrame:
			a.recv.Add(int64(len(f.Data())))
			id, n, ended := f.StreamID, f.Length, f.StreamEnded()
			if ended {
				s.closeStream(id, true)
			}
			if !stall && n > 0 {
				// Never let our receive windows slow the server down.
				s.write(func() error {
					if err := s.fr.WriteWindowUpdate(0, n); err != nil || ended {
						return err
					}
					s.mu.Lock()
					open := s.streams[id] != nil
					s.mu.Unlock()
					if open {
						return s.fr.WriteWindowUpdate(id, n)
					}
					return nil
				})
			}
		case *http2.RSTStreamFrame:
			a.count(a.rst, f.ErrCode.String())
			s.closeStream(f.StreamID, false)
		case *http2.GoAwayFrame:
			a.count(a.goaway, f.ErrCode.String())
			s.mu.Lock()
			s.goaway = true
			s.mu.Unlock()
			s.signal()
		}
	}
}

func (s *session) onHeaders(f *http2.MetaHeadersFrame) {
	a := s.a
	st := f.PseudoValue("status")
	gs := ""
	for _, hf := range f.RegularFields() {
		if hf.Name == "grpc-status" {
			gs = hf.Value
		}
	}
	s.mu.Lock()
	str := s.streams[f.StreamID]
	// Reset streams are not tracked: count every response HEADERS that carries a status.
	first := st != "" && (str == nil || !str.answered)
	var sentThen int64
	if str != nil && first {
		str.answered = true
		sentThen = str.sent
	}
	s.mu.Unlock()
	if first {
		a.answered.Add(1)
		a.count(a.status, st)
		if a.c.mode == "keyless" {
			a.mu.Lock()
			a.answeredAfter = append(a.answeredAfter, sentThen)
			a.mu.Unlock()
		}
	}
	if gs != "" {
		a.count(a.grpc, gs)
	}
	if f.StreamEnded() {
		s.closeStream(f.StreamID, true)
	}
}

// closeStream forgets a stream the server closed. A keyless stream the server ended while
// we were still sending is cancelled, as a gRPC client would.
func (s *session) closeStream(id uint32, remoteEnded bool) {
	s.mu.Lock()
	str := s.streams[id]
	delete(s.streams, id)
	s.mu.Unlock()
	if str == nil {
		return
	}
	if remoteEnded && s.a.c.mode == "keyless" {
		s.write(func() error { return s.fr.WriteRSTStream(id, http2.ErrCodeCancel) })
	}
	s.signal()
}

// headers encodes one request's header block; call with wmu held.
func (s *session) headers(fields ...string) []byte {
	s.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		s.henc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return s.hbuf.Bytes()
}

func (s *session) getHeaders() []byte {
	return s.headers(":method", "GET", ":scheme", "http", ":authority", s.a.c.addr, ":path", s.a.c.path,
		"authorization", "Bearer "+s.a.c.key)
}

// wait blocks until something changes, ctx ends or the connection does.
func (s *session) wait(ctx context.Context) bool {
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case <-s.kick:
	case <-t.C:
	case <-ctx.Done():
		return false
	case <-s.done:
		return false
	}
	return true
}

// openable says how many more streams may be opened now, with s.mu held.
func (s *session) openable(want int) int {
	if s.goaway {
		return 0
	}
	room := int64(s.peerMaxConc) - int64(len(s.streams))
	return int(max(0, min(int64(want), room)))
}

// runKeyless opens c.streams streams, each a CreateEvent call without a key whose body is a
// gRPC prefix announcing c.announce bytes followed by c.bodyBytes bytes, and holds them open.
// Bodies are sent round-robin, within the server's flow-control windows.
func (s *session) runKeyless(ctx context.Context) {
	c := s.a.c
	const chunk = 64 << 10
	total := int64(5 + c.bodyBytes)
	first := make([]byte, 5+chunk) // the gRPC prefix, then zeros
	binary.BigEndian.PutUint32(first[1:5], uint32(c.announce))
	zeros := make([]byte, chunk)
	opened := 0
	var order []*stream // streams opened, in order, until their bodies are sent or they close
	type piece struct {
		id   uint32
		data []byte
	}
	for ctx.Err() == nil {
		s.mu.Lock()
		var fresh []uint32
		for range s.openable(c.streams - opened) {
			str := &stream{id: s.nextID, win: s.peerInitWin}
			s.nextID += 2
			s.streams[str.id] = str
			order = append(order, str)
			fresh = append(fresh, str.id)
			opened++
		}
		var plan []piece
		live := order[:0]
		for _, str := range order {
			if s.streams[str.id] == nil || str.sent >= total {
				continue
			}
			live = append(live, str)
			n := min(int64(chunk), total-str.sent, str.win, s.connWin, int64(s.peerMaxFrame))
			if n <= 0 {
				continue
			}
			var data []byte
			if str.sent < 5 {
				data = first[str.sent : str.sent+n]
			} else {
				data = zeros[:n]
			}
			str.win -= n
			s.connWin -= n
			str.sent += n
			plan = append(plan, piece{str.id, data})
		}
		order = live
		s.mu.Unlock()

		if len(fresh) == 0 && len(plan) == 0 {
			if opened >= c.streams && len(order) == 0 {
				// Every body is sent: hold the streams open until the end.
				select {
				case <-ctx.Done():
				case <-s.done:
				}
				return
			}
			s.mu.Lock()
			gone := s.goaway
			s.mu.Unlock()
			if gone || !s.wait(ctx) {
				return
			}
			continue
		}
		err := s.write(func() error {
			for _, id := range fresh {
				block := s.headers(":method", "POST", ":scheme", "http", ":authority", c.addr,
					":path", "/liveops.v1.EventService/CreateEvent", "content-type", "application/grpc", "te", "trailers")
				if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
					return err
				}
			}
			for _, p := range plan {
				if err := s.fr.WriteData(p.id, false, p.data); err != nil {
					return err
				}
				s.a.sent.Add(int64(len(p.data)))
			}
			return nil
		})
		s.a.opened.Add(int64(len(fresh)))
		if err != nil {
			return
		}
	}
}

// runStall keeps c.streams GETs open on a connection whose receive windows are all zero.
func (s *session) runStall(ctx context.Context) {
	c := s.a.c
	for ctx.Err() == nil {
		s.mu.Lock()
		if s.goaway {
			s.mu.Unlock()
			return
		}
		var fresh []uint32
		for range s.openable(c.streams - len(s.streams)) {
			id := s.nextID
			s.nextID += 2
			s.streams[id] = &stream{id: id, win: s.peerInitWin}
			fresh = append(fresh, id)
		}
		s.mu.Unlock()
		if len(fresh) == 0 {
			if !s.wait(ctx) {
				return
			}
			continue
		}
		err := s.write(func() error {
			for _, id := range fresh {
				if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: s.getHeaders(),
					EndStream: true, EndHeaders: true}); err != nil {
					return err
				}
			}
			return nil
		})
		s.a.opened.Add(int64(len(fresh)))
		if err != nil {
			return
		}
	}
}

// runReset sends HEADERS then RST_STREAM(CANCEL) for new streams as fast as the
// connection takes them.
func (s *session) runReset(ctx context.Context) {
	c := s.a.c
	for ctx.Err() == nil {
		s.mu.Lock()
		stop := s.goaway || s.nextID > math.MaxInt32-uint32(2*c.batch)
		s.mu.Unlock()
		select {
		case <-s.done:
			stop = true
		default:
		}
		if stop {
			return
		}
		n := 0
		err := s.write(func() error {
			for range c.batch {
				s.mu.Lock()
				id := s.nextID
				s.nextID += 2
				s.mu.Unlock()
				if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: s.getHeaders(),
					EndStream: true, EndHeaders: true}); err != nil {
					return err
				}
				if err := s.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		s.a.opened.Add(int64(n))
		if err != nil {
			return
		}
	}
}

func (r *result) attackLine() string {
	if r.Mode == "none" {
		return fmt.Sprintf("none: no attack for %.1fs", r.Seconds)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %.1fs conns=%d dials=%d", r.Mode, r.Seconds, r.Conns, r.Dials)
	if r.DialErrs > 0 {
		fmt.Fprintf(&b, " dial-errors=%d", r.DialErrs)
	}
	fmt.Fprintf(&b, " streams opened=%d answered=%d status=%s grpc-status=%s rst=%s goaway=%s conns-ended-by-server=%d sent=%s recv=%s",
		r.Opened, r.Answered, counts(r.Status), counts(r.GRPCStatus), counts(r.RST), counts(r.GoAway), r.ConnEnded,
		size(r.BytesSent), size(r.BytesRecv))
	if r.Mode == "keyless" {
		fmt.Fprintf(&b, " unauthenticated(16)=%d", r.GRPCStatus["16"])
		if a := r.AnsweredAfter; len(a) == 3 {
			fmt.Fprintf(&b, " answered-after-body-bytes(min/median/max)=%d/%d/%d", a[0], a[1], a[2])
		}
	}
	return b.String()
}

func (r *result) measureLine() string {
	yes := "no"
	if r.Recovered {
		yes = "yes"
	}
	s := fmt.Sprintf("measured: rss-peak=%.0fMB hwm=%.0fMB rss-after=%.0fMB healthz %s events %s recovered=%s in %.0fms",
		r.RSSPeakMB, r.HWMMB, r.RSSAfterMB, r.Healthz, r.Events, yes, r.RecoverMS)
	if r.RecoverErr != "" && !r.Recovered {
		s += " (" + r.RecoverErr + ")"
	}
	if r.ServerGone {
		s += " SERVER-GONE"
	}
	return s
}

func (p probeSummary) String() string {
	s := fmt.Sprintf("n=%d p50=%.1fms p95=%.1fms max=%.1fms fail=%d", p.N, p.P50MS, p.P95MS, p.MaxMS, p.Failures)
	if len(p.Why) > 0 {
		s += counts(p.Why)
	}
	return s
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "{}"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, m[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
