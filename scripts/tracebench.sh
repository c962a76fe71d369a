#!/usr/bin/env bash
# tracebench.sh: what tracing costs, measured with the yardstick (../shared/bench/compare)
# three times: with no exporter (metrics on, tracing off: the default), and exporting every
# span and 1% of them over OTLP/gRPC to scripts/otlpsink, a receiver that counts and drops.
#
#   scripts/tracebench.sh                 knobs: COMPARE=../shared/bench/compare ROUNDS=3 SECS=5
#
# Everything talks to 127.0.0.1 only; each compare run is bounded by ROUNDS x SECS.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export PATH="$PATH:$(go env GOPATH)/bin"
COMPARE=${COMPARE:-../shared/bench/compare}

T=$(mktemp -d)
sink=
cleanup() {
  [ -n "$sink" ] && kill "$sink" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

go build -o "$T/otlpsink" ./scripts/otlpsink
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$T/otlpsink" -addr "127.0.0.1:$port" -every 1h >"$T/sink.log" 2>&1 &
sink=$!

run() { # label, then environment assignments
  local label=$1
  shift
  echo "== $label"
  env "$@" "$COMPARE" . 2>&1 | grep -E '^(http|grpc|mixed) '
}
run "tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT)" OTEL_EXPORTER_OTLP_ENDPOINT=
for ratio in 1.0 0.01; do
  run "tracing exporting, sampler traceidratio $ratio" \
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
    OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=$ratio
done
kill -INT "$sink"
wait "$sink" 2>/dev/null || true
sink=
tail -1 "$T/sink.log"
