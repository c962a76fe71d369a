// Command otlpsink is an OTLP/gRPC trace receiver that counts what it is sent and keeps
// nothing: the far end of an exporter under load, for scripts/tracebench.sh.
//
//	go run ./scripts/otlpsink -addr 127.0.0.1:4317
//
// It prints the spans received so far every -every, and once more when stopped.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

type sink struct {
	collectortracepb.UnimplementedTraceServiceServer
	spans, requests atomic.Int64
}

func (s *sink) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	s.requests.Add(1)
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:4317", "address to receive OTLP/gRPC on")
	every := flag.Duration("every", 5*time.Second, "how often to print the count")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	s := new(sink)
	gs := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(gs, s)
	go gs.Serve(ln)
	fmt.Printf("otlpsink: listening on %s\n", ln.Addr())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			fmt.Printf("otlpsink: %d spans in %d exports\n", s.spans.Load(), s.requests.Load())
		case <-stop:
			gs.Stop()
			fmt.Printf("otlpsink: %d spans in %d exports\n", s.spans.Load(), s.requests.Load())
			return
		}
	}
}
