#!/usr/bin/env bash
# loadtest.sh: seeds a database, starts the real liveops binary on a free loopback port and
# drives it with real load tools, then prints requests/s and p50/p99 latency for:
#   1. GET /events alone (hey, HTTP/1.1 keep-alive)
#   2. GET /events while a writer creates ~50 events/s over gRPC (hey + ghz)
#   3. gRPC ListEvents (ghz)
#
#   scripts/loadtest.sh                    knobs: DURATION=10s CONNS=50 PAST=5000
#
# It installs hey and ghz with `go install` when they are missing, and needs curl and jq.
# Everything talks to 127.0.0.1 only, and every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export PATH="$PATH:$(go env GOPATH)/bin"
DURATION=${DURATION:-10s} CONNS=${CONNS:-50} PAST=${PAST:-5000}

command -v hey >/dev/null || go install github.com/rakyll/hey@latest
command -v ghz >/dev/null || go install github.com/bojand/ghz/cmd/ghz@latest
for t in curl jq; do
  command -v $t >/dev/null || { echo "loadtest: needs $t (apt-get install -y $t)" >&2; exit 2; }
done

T=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

CGO_ENABLED=0 go build -o "$T/liveops" .
DB=$T/load.db
ADMIN=$("$T/liveops" keys create -role grpc_admin -name loadtest -db "$DB" 2>/dev/null)
USER=$("$T/liveops" keys create -role http_user -name loadtest -db "$DB" 2>/dev/null)
"$T/liveops" -addr 127.0.0.1:0 -db "$DB" -log-format json >"$T/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  ADDR=$(jq -r 'select(.msg == "listening") | .addr' "$T/server.log" 2>/dev/null | head -1)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "loadtest: the server did not start:" >&2; cat "$T/server.log" >&2; exit 1; }

ghz_() { ghz --insecure --proto events.proto --metadata "{\"authorization\":\"Bearer $ADMIN\"}" "$@" "$ADDR"; }
at() { date -u -d "@$(( $(date +%s) + $1 ))" +%FT%TZ; }
event() { # title, start offset (s), end offset (s)
  printf '{"title":"%s","description":"Load test event with a description of typical length.","start_time":"%s","end_time":"%s","rewards":"{\\"items\\":[{\\"id\\":\\"gem\\",\\"qty\\":50}]}"}' "$1" "$(at "$2")" "$(at "$3")"
}

echo "seeding $PAST ended, 200 upcoming and 20 active events..."
ghz_ --call liveops.v1.EventService/CreateEvent -d "$(event Ended -7776000 -7689600)" -n "$PAST" -c 8 >/dev/null
ghz_ --call liveops.v1.EventService/CreateEvent -d "$(event Upcoming 2592000 2678400)" -n 200 -c 8 >/dev/null
ghz_ --call liveops.v1.EventService/CreateEvent -d "$(event Active -3600 86400)" -n 20 -c 1 >/dev/null
active=$(curl -fs -H "Authorization: Bearer $USER" "http://$ADDR/events" | jq '.events | length')
echo "GET /events returns $active events, $(curl -fs -H "Authorization: Bearer $USER" "http://$ADDR/events" | wc -c) bytes"

# hey prints "Requests/sec:" and "  50% in 0.0012 secs"; ghz prints "Requests/sec:" and
# "  50 % in 1.23 ms". Both become: req/s p50 p99 (milliseconds).
hey_stats() {
  awk '/Requests\/sec/ {rps=$2} /^ *50% in/ {p50=$3*1000} /^ *99% in/ {p99=$3*1000}
       END {printf "%10.0f %9.2f %9.2f\n", rps, p50, p99}'
}
ghz_stats() {
  awk 'function ms(v, u) { return u == "s" ? v*1000 : (u == "µs" || u == "us") ? v/1000 : (u == "ns" ? v/1e6 : v) }
       /Requests\/sec/ {rps=$2} /^ *50 % in/ {p50=ms($4, $5)} /^ *99 % in/ {p99=ms($4, $5)}
       END {printf "%10.0f %9.2f %9.2f\n", rps, p50, p99}'
}

printf '\n%-44s %10s %9s %9s\n' "scenario ($DURATION, $CONNS connections)" "req/s" "p50 ms" "p99 ms"
printf '%-44s %s' "GET /events" "$(hey -z "$DURATION" -c "$CONNS" -H "Authorization: Bearer $USER" "http://$ADDR/events" | hey_stats)"
echo
ghz_ --call liveops.v1.EventService/CreateEvent -d "$(event Mixed 2592000 2678400)" --rps 50 -c 2 -z "$DURATION" >"$T/writer.txt" &
writer=$!
printf '%-44s %s' "GET /events while writing ~50 events/s" "$(hey -z "$DURATION" -c "$CONNS" -H "Authorization: Bearer $USER" "http://$ADDR/events" | hey_stats)"
echo
wait $writer
printf '%-44s %s' "  (the writer: CreateEvent)" "$(ghz_stats <"$T/writer.txt")"
echo
printf '%-44s %s' "gRPC ListEvents ($((PAST + 220)) events)" "$(ghz_ --call liveops.v1.EventService/ListEvents -d '{}' -c 10 -z "$DURATION" | ghz_stats)"
echo
errors=$(grep -c '"level":"ERROR"' "$T/server.log" || true)
echo "server errors logged: $errors"
