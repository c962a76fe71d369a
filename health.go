package main

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// This file answers the two questions an orchestrator asks, the way Kubernetes asks them:
// is the process alive (/livez: it serves HTTP; nothing else is looked at, so a flood or a
// sick database never gets a healthy instance killed), and may it take traffic (/readyz).
// An instance serves players from its snapshot, loaded before it listens, whatever the
// database does: so it stays ready while the database is away (taking every instance out
// of a balancer then would fail reads that could be served), and reports the database's
// state for reads and writes in the body. It stops being ready when it starts shutting
// down, so that a balancer drains it. The gRPC health service follows the same rules.

// eventService is the name the gRPC health service reports the admin API under.
const eventService = "liveops.v1.EventService"

// readiness holds the last verdict of the probes, which run off the request path every
// interval, so that /readyz and the health service answer from memory even when the
// instance is flooded. An empty reason means ok.
type readiness struct {
	st       *store
	hs       *health.Server
	log      *logger
	draining atomic.Bool
	reads    atomic.Pointer[string]
	// writes says why writes cannot succeed now: the database file is read-only, the disk
	// failed, or another process holds the write lock.
	writes atomic.Pointer[string]
}

func newReadiness(st *store, hs *health.Server, log *logger) *readiness {
	rd := &readiness{st: st, hs: hs, log: log}
	ok := ""
	rd.reads.Store(&ok)
	rd.writes.Store(&ok)
	rd.publish()
	return rd
}

// run probes every interval until ctx ends.
func (rd *readiness) run(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		rd.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probe asks the database whether it answers a read and whether a new connection may
// write, each within a second, and publishes the verdict.
func (rd *readiness) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	reads, writes := "", ""
	if err := rd.st.ping(pctx); err != nil {
		reads = "the database does not answer reads: " + err.Error()
	}
	switch err := rd.st.CheckWritable(pctx); {
	case errors.Is(err, errReadOnly):
		writes = errReadOnly.Error()
	case errors.Is(err, errBusy), errors.Is(err, context.DeadlineExceeded):
		writes = "another process holds the database's write lock"
	case err != nil:
		writes = err.Error()
	}
	if ctx.Err() != nil {
		return // shutting down: the probe was cut, not failed
	}
	rd.set(reads, writes)
}

// set records a verdict, logs a change, and updates the gRPC health service.
func (rd *readiness) set(reads, writes string) {
	oldReads, oldWrites := rd.reads.Swap(&reads), rd.writes.Swap(&writes)
	if *oldReads != reads {
		rd.log.Warn("readiness for reads changed", "ok", reads == "", "reason", reads)
	}
	if *oldWrites != writes {
		rd.log.Warn("readiness for writes changed", "ok", writes == "", "reason", writes)
		// A connection keeps the access it was opened with: one opened before the fault
		// may still write, one opened during it stays read-only after. Dropping them
		// makes writes agree with the probe, both ways.
		rd.st.DiscardIdleConnections()
	}
	rd.publish()
}

// drain marks the instance as shutting down: no longer ready for new traffic.
func (rd *readiness) drain() {
	rd.draining.Store(true)
	rd.publish()
}

// publish sets the gRPC health statuses: the whole server ("") is serving until it drains,
// the admin API while the database also answers reads and takes writes.
func (rd *readiness) publish() {
	serving := !rd.draining.Load()
	reads, writes := serving && *rd.reads.Load() == "", *rd.writes.Load() == ""
	status := func(ok bool) healthpb.HealthCheckResponse_ServingStatus {
		if ok {
			return healthpb.HealthCheckResponse_SERVING
		}
		return healthpb.HealthCheckResponse_NOT_SERVING
	}
	rd.hs.SetServingStatus("", status(serving))
	rd.hs.SetServingStatus(eventService, status(reads && writes))
}

// readyJSON is the body of /readyz: whether the instance may take traffic, and how the
// database stands for reads and for writes.
type readyJSON struct {
	Status string `json:"status"` // ready, or shutting down
	Reads  string `json:"reads"`  // ok, or why the database does not answer reads
	Writes string `json:"writes"` // ok, or why writes cannot succeed now
}

// handleReadyz answers 200 while the instance serves players, which it does from memory
// whatever the database does, and 503 once it is shutting down. The database's state for
// reads and writes is in the body.
func handleReadyz(rd *readiness) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := readyJSON{Status: "ready", Reads: orOK(*rd.reads.Load()), Writes: orOK(*rd.writes.Load())}
		code := http.StatusOK
		if rd.draining.Load() {
			body.Status, code = "shutting down", http.StatusServiceUnavailable
			noteReason(r.Context(), "shutting down")
		}
		writeJSON(w, code, body)
	})
}

// handleLivez answers 200 whenever the process serves HTTP at all.
func handleLivez() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
}

func orOK(reason string) string {
	if reason == "" {
		return "ok"
	}
	return reason
}
