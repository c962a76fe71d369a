package main

import (
	"context"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cutProxy forwards TCP connections to a server until it is cut: then it closes the
// connections it carries and every new one at once, as a database that went away would,
// until it is mended. It counts the connections it is asked for.
type cutProxy struct {
	addr     string
	target   string
	attempts atomic.Int64
	mu       sync.Mutex
	cut      bool
	open     []net.Conn
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{addr: ln.Addr().String(), target: target}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.setCut(true); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.attempts.Add(1)
			wg.Go(func() { p.forward(c) })
		}
	})
	return p
}

func (p *cutProxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	p.mu.Lock()
	if err != nil || p.cut {
		p.mu.Unlock()
		c.Close()
		if s != nil {
			s.Close()
		}
		return
	}
	p.open = append(p.open, c, s)
	p.mu.Unlock()
	go func() { io.Copy(s, c); s.Close() }()
	io.Copy(c, s)
	c.Close()
}

// setCut cuts the proxy, closing what it carries, or mends it.
func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.open {
			c.Close()
		}
		p.open = nil
	}
}

func TestChangeFeedLogsAnOutageOnce(t *testing.T) {
	// While PostgreSQL is away the feed tries again after every pause; the log says once
	// that it was lost and once that it is back, not at every try.
	u, err := url.Parse(testDSN(t, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	proxy := startCutProxy(t, u.Host)
	u.Host = proxy.addr
	st := newTestStoreAt(t, u.String())
	logs := &logSink{}
	nudge := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		listenForChanges(ctx, st, nudge, newLogger("json", logs), 10*time.Millisecond)
	}()
	defer func() { cancel(); <-done }()
	count := func(msg string) int { return strings.Count(logs.String(), `"msg":"`+msg) }

	waitFor(t, func() bool { return len(nudge) == 1 }) // it nudges once it listens
	proxy.setCut(true)
	tries := proxy.attempts.Load()
	waitFor(t, func() bool { return proxy.attempts.Load() >= tries+5 })
	proxy.setCut(false)
	waitFor(t, func() bool { return count("change feed restored") == 1 })
	if lost := count("change feed lost"); lost != 1 {
		t.Fatalf("%d lines saying the feed was lost over %d tries; want 1:\n%s", lost, proxy.attempts.Load()-tries, logs.String())
	}
	t.Logf("%d tries during the outage", proxy.attempts.Load()-tries)
}
