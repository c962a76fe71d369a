#!/usr/bin/env bash
# loadtest.sh: seeds a database, starts the real liveops binary on a free loopback port and
# drives it with real load tools, then prints requests/s and latency for:
#   1. GET /events alone (wrk, HTTP/1.1 keep-alive)
#   2. GET /events while a writer creates ~50 events/s over gRPC (wrk + ghz)
#   3. gRPC ListEvents (h2load: it does not decode replies, so it measures the server, not
#      the client; ghz spends ~50 ms decoding each 1.2 MB reply)
#
#   4. write throughput: CreateEvent and UpdateEvent from 10 concurrent admins (ghz)
#
#   scripts/loadtest.sh                    knobs: DURATION=10s CONNS=50 PAST=5000
#   DB=postgres://postgres@127.0.0.1:5432/test?sslmode=disable scripts/loadtest.sh
#                                          the same on PostgreSQL, in a schema of its own
#                                          that is dropped afterwards (needs psql)
#
# It installs wrk, h2load, curl and jq with apt-get and ghz with `go install` when they are
# missing. Everything talks to 127.0.0.1 only, and every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export PATH="$PATH:$(go env GOPATH)/bin"
DURATION=${DURATION:-10s} CONNS=${CONNS:-50} PAST=${PAST:-5000} DB=${DB:-}

command -v ghz >/dev/null || go install github.com/bojand/ghz/cmd/ghz@v0.121.0
if ! command -v wrk >/dev/null || ! command -v h2load >/dev/null || ! command -v jq >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nghttp2-client jq curl >/dev/null
fi

T=$(mktemp -d)
pid=
schema=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  wait 2>/dev/null || true
  [ -n "$schema" ] && psql -q "$PGURL" -c "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1
  rm -rf "$T"
}
trap cleanup EXIT

CGO_ENABLED=0 go build -o "$T/liveops" .
case "$DB" in
"") DB=$T/load.db ;;
postgres://* | postgresql://*)
  PGURL=$DB
  schema=liveops_load_$$
  psql -q "$PGURL" -c "CREATE SCHEMA $schema" >/dev/null
  case "$DB" in *\?*) DB="$DB&search_path=$schema" ;; *) DB="$DB?search_path=$schema" ;; esac
  ;;
esac
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

# Each becomes: req/s, p50, p99 and mean latency in milliseconds ("-" where the tool does
# not report it), plus the count of non-2xx answers or errors.
ms() { awk -v v="$1" 'BEGIN { u = v; sub(/^[0-9.]+/, "", u); n = v + 0
  printf "%.2f", (u == "s") ? n*1000 : (u == "us" || u == "µs") ? n/1000 : n }'; }
wrk_stats() { # wrk --latency output
  awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^ +Latency +[0-9]/ {mean=$2}
       /Non-2xx|Socket errors/ {bad=bad " " $0} END {print rps, p50, p99, mean, (bad == "" ? "0" : bad)}' |
    { read -r rps p50 p99 mean bad; printf '%10.0f %9s %9s %9s  %s\n' "$rps" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$mean")" "$bad"; }
}
ghz_stats() { # ghz summary
  awk '/Requests\/sec/ {rps=$2} /^ *50 % in/ {p50=$4 $5} /^ *99 % in/ {p99=$4 $5} /Average/ {mean=$2}
       /Error distribution/ {bad="errors"} END {print rps, p50, p99, mean, (bad == "" ? "0" : bad)}' |
    { read -r rps p50 p99 mean bad; printf '%10.0f %9s %9s %9s  %s\n' "$rps" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$mean")" "$bad"; }
}
h2load_stats() { # h2load: requests/s and mean time per request; no percentiles
  awk '/^finished in/ {gsub(",", ""); rps=$4} /^time for request:/ {mean=$6} /^requests:/ {bad=$10 + $12}
       END {print rps, mean, bad}' |
    { read -r rps mean bad; printf '%10.0f %9s %9s %9s  %s\n' "$rps" - - "$(ms "$mean")" "$bad"; }
}
wrk_() { wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $USER" "http://$ADDR/events"; }

printf '\n%-42s %10s %9s %9s %9s  %s\n' "scenario ($DURATION, $CONNS connections)" "req/s" "p50 ms" "p99 ms" "mean ms" "failed"
printf '%-42s %s\n' "GET /events" "$(wrk_ | wrk_stats)"
ghz_ --call liveops.v1.EventService/CreateEvent -d "$(event Mixed 2592000 2678400)" --rps 50 -c 2 -z "$DURATION" >"$T/writer.txt" &
writer=$!
printf '%-42s %s\n' "GET /events, ~50 writes/s alongside" "$(wrk_ | wrk_stats)"
wait $writer
printf '%-42s %s\n' "  the writer: CreateEvent" "$(ghz_stats <"$T/writer.txt")"
printf '\0\0\0\0\0' >"$T/list.bin" # an empty ListEventsRequest, gRPC-framed
printf '%-42s %s\n' "gRPC ListEvents (first 100 of $((PAST + 220)), 10x10)" "$(h2load -D "${DURATION%s}" -c 10 -m 10 -d "$T/list.bin" \
  -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $ADMIN" \
  "http://$ADDR/liveops.v1.EventService/ListEvents" | h2load_stats)"
printf '%-42s %s\n' "CreateEvent, 10 concurrent admins" "$(ghz_ --call liveops.v1.EventService/CreateEvent \
  -d "$(event Throughput 2592000 2678400)" -c 10 -z "$DURATION" | ghz_stats)"
ID=$(curl -fs -H "Authorization: Bearer $USER" "http://$ADDR/events" | jq -r '.events[0].id')
printf '%-42s %s\n' "UpdateEvent of one event, 10 concurrent" "$(ghz_ --call liveops.v1.EventService/UpdateEvent \
  -d "{\"id\":\"$ID\",\"title\":\"Updated under load\",\"update_mask\":{\"paths\":[\"title\"]}}" -c 10 -z "$DURATION" | ghz_stats)"
errors=$(grep -c '"level":"ERROR"' "$T/server.log" || true)
echo "server errors logged: $errors"
