// Command otlpsink is a local OTLP/HTTP trace receiver for benchmarks: it accepts
// POST /v1/traces (protobuf or JSON), counts the spans it receives and discards them, so
// that a worker's tracing overhead can be measured with a real export path and no
// collector installed. It prints the running count every --every.
package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:4318", "listen address (OTEL_EXPORTER_OTLP_ENDPOINT=http://ADDR)")
	every := flag.Duration("every", 10*time.Second, "how often to print the span count; 0: never")
	flag.Parse()
	var spans, requests atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		requests.Add(1)
		var req collectortrace.ExportTraceServiceRequest
		if r.Header.Get("Content-Type") == "application/x-protobuf" && proto.Unmarshal(body, &req) == nil {
			for _, rs := range req.ResourceSpans {
				for _, ss := range rs.ScopeSpans {
					spans.Add(int64(len(ss.Spans)))
				}
			}
		}
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
	if *every > 0 {
		go func() {
			for range time.Tick(*every) {
				fmt.Printf("otlpsink: %d spans in %d requests\n", spans.Load(), requests.Load())
			}
		}()
	}
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	slog.Info("otlpsink listening", "addr", *addr)
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "otlpsink:", err)
		os.Exit(1)
	}
}
