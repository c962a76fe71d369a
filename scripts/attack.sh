#!/usr/bin/env bash
# attack.sh: runs the HTTP/2 attacks of the security review against a real liveops binary and
# prints, per attack, the server's peak RSS, the latency and failures of GET /healthz and
# GET /events sampled every 100 ms during the attack, and whether the service answered
# normally within a second after it:
#   baseline  no attack
#   keyless   2 connections x 250 gRPC CreateEvent streams without a key, each announcing a
#             1 MiB message and sending ~1 MB of it, never finishing it
#   stall     4 connections x 250 GET /events?status=active,upcoming (a ~290 KB answer) from
#             a client whose HTTP/2 receive window is 0 and never grows
#   reset     4 connections sending that GET then RST_STREAM(CANCEL), as fast as they can
#
#   scripts/attack.sh                 measures this worktree (CGO_ENABLED=0 go build)
#   scripts/attack.sh 34d1c29         measures a git revision (git archive, then go build)
#   scripts/attack.sh /path/liveops   measures a binary built elsewhere (or LIVEOPS_BIN=...)
#
# Knobs: DURATION (4s per attack), ATTACKS ("baseline keyless stall reset"), and each
# attack's flags for scripts/attack: KEYLESS_FLAGS ("-conns 2 -streams 250"), STALL_FLAGS
# ("-conns 4 -streams 250"), RESET_FLAGS ("-conns 4").
# The server restarts for each attack, on a fresh loopback port with default flags and the
# same seeded database (20 active events, 100 upcoming ones with a preview), so VmHWM is that
# attack's peak. Everything goes to 127.0.0.1 only, and every process stops by itself: the
# attack tool after DURATION (and exits hard if it overruns), the server in the trap.
# Needs go, curl, jq, grpcurl, h2load (nghttp2-client) and protoc (protobuf-compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export PATH="$PATH:$(go env GOPATH)/bin"
DURATION=${DURATION:-4s}
ATTACKS=${ATTACKS:-baseline keyless stall reset}
KEYLESS_FLAGS=${KEYLESS_FLAGS:--conns 2 -streams 250}
STALL_FLAGS=${STALL_FLAGS:--conns 4 -streams 250}
RESET_FLAGS=${RESET_FLAGS:--conns 4}
for t in go curl jq grpcurl h2load protoc; do
  command -v "$t" >/dev/null || { echo "attack.sh: missing $t" >&2; exit 2; }
done

T=$(mktemp -d)
pid=
stop_server() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}
cleanup() { stop_server; rm -rf "$T"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# What to measure.
target=${1:-${LIVEOPS_BIN:-}}
if [ -z "$target" ]; then
  CGO_ENABLED=0 go build -o "$T/liveops" .
  bin=$T/liveops
  what="this worktree, $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo ' with uncommitted changes')"
elif [ -f "$target" ] && [ -x "$target" ]; then
  bin=$target
  what="binary $target"
elif git rev-parse -q --verify "$target^{commit}" >/dev/null; then
  mkdir "$T/src"
  git archive "$target" | tar -x -C "$T/src"
  (cd "$T/src" && CGO_ENABLED=0 go build -o "$T/liveops" .)
  bin=$T/liveops
  what="revision $(git rev-parse --short "$target^{commit}")"
else
  echo "attack.sh: $target is neither an executable nor a git revision" >&2
  exit 2
fi
go build -o "$T/attack" ./scripts/attack

DB=$T/attack.db
ADMIN=$("$bin" keys create -role grpc_admin -db "$DB" 2>/dev/null | tail -1)
USER=$("$bin" keys create -role http_user -db "$DB" 2>/dev/null | tail -1)

start_server() { # log file; sets pid and ADDR
  "$bin" -addr 127.0.0.1:0 -db "$DB" -log-format json >"$1" 2>&1 &
  pid=$!
  ADDR=
  for _ in $(seq 1 100); do
    ADDR=$(jq -Rr 'fromjson? | select(.msg == "listening") | .addr' "$1" 2>/dev/null | head -1) || true
    [ -n "$ADDR" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "attack.sh: the server did not start:" >&2
  cat "$1" >&2
  exit 1
}

# Seed over gRPC with h2load posting one pre-encoded CreateEvent frame n times.
frame() { # a gRPC message frame: flag byte, 4-byte big-endian length, the message
  local n
  n=$(wc -c <"$1")
  printf "\\000\\$(printf %03o $((n >> 24 & 255)))\\$(printf %03o $((n >> 16 & 255)))\\$(printf %03o $((n >> 8 & 255)))\\$(printf %03o $((n & 255)))"
  cat "$1"
}
create_frame() { # title, start, end, preview (unix seconds; preview 0: none), output file
  local preview=
  [ "$4" = 0 ] || preview="preview_time { seconds: $4 }"
  printf 'title: "%s" description: %s start_time { seconds: %d } end_time { seconds: %d } %s rewards: %s' \
    "$1" "$DESC" "$2" "$3" "$preview" "$REWARDS" |
    protoc -I . -I /usr/include --encode=liveops.v1.CreateEventRequest events.proto >"$T/msg.pb"
  frame "$T/msg.pb" >"$5"
}
# ~1000-character descriptions and ~1.1 KB rewards make GET /events?status=active,upcoming
# about 290 KB for 120 events.
DESC=$(jq -n '[range(30) | "Festival week \(.): arenas, quests and prizes."] | join(" ") | .[0:1000]')
REWARDS=$(jq -nc '{items: [range(18) | {id: "reward_item_\(.)", qty: (. * 10 + 5), rarity: "legendary"}]} | tojson')
now=$(date +%s)
create_frame "Active event" $((now - 3600)) $((now + 2 * 86400)) 0 "$T/active.bin"
create_frame "Upcoming event" $((now + 30 * 86400)) $((now + 31 * 86400)) $((now - 86400)) "$T/upcoming.bin"

start_server "$T/seed.log"
seed() { # frame file, count
  h2load -n "$2" -c 1 -m 4 -d "$1" -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "authorization: Bearer $ADMIN" "http://$ADDR/liveops.v1.EventService/CreateEvent" >"$T/h2load.out" 2>&1 ||
    { cat "$T/h2load.out" >&2; exit 1; }
}
seed "$T/active.bin" 20
seed "$T/upcoming.bin" 100
QUERY="/events?status=active,upcoming"
for _ in $(seq 1 30); do
  curl -fsS -H "Authorization: Bearer $USER" "http://$ADDR$QUERY" -o "$T/answer.json"
  [ "$(jq '.events | length' "$T/answer.json")" = 120 ] && break
  sleep 0.1
done
counts=$(jq -r '[.events[].status] | group_by(.) | map("\(length) \(.[0])") | join(", ")' "$T/answer.json")
[ "$(jq '.events | length' "$T/answer.json")" = 120 ] ||
  { echo "attack.sh: seeding failed: GET $QUERY holds $counts, want 20 active, 100 upcoming" >&2; exit 1; }
# The same events through grpcurl, so a broken gRPC path is not mistaken for a resilient one.
grpcurl -plaintext -H "authorization: Bearer $ADMIN" -d '{"page_size": 1000}' -max-msg-sz 67108864 \
  "$ADDR" liveops.v1.EventService/ListEvents | jq -e '.events | length == 120' >/dev/null ||
  { echo "attack.sh: ListEvents does not return the 120 seeded events" >&2; exit 1; }
stop_server
echo "measuring $what, $DURATION per attack; GET $QUERY: $counts, $(wc -c <"$T/answer.json") bytes"

rows=()
for name in $ATTACKS; do
  case $name in
  baseline) mode=none flags= ;;
  keyless) mode=keyless flags=$KEYLESS_FLAGS ;;
  stall) mode=stall flags=$STALL_FLAGS ;;
  reset) mode=reset flags=$RESET_FLAGS ;;
  *) echo "attack.sh: unknown attack $name" >&2; exit 2 ;;
  esac
  start_server "$T/$name.log"
  # Warm the answers the attack and the probes ask for, as a running server would have them.
  curl -fsS -o /dev/null -H "Authorization: Bearer $USER" "http://$ADDR$QUERY"
  curl -fsS -o /dev/null -H "Authorization: Bearer $USER" "http://$ADDR/events"
  # shellcheck disable=SC2086 # flags are words
  timeout 60 "$T/attack" -mode "$mode" -addr "$ADDR" -key "$USER" -pid "$pid" -duration "$DURATION" \
    -json "$T/$name.json" $flags | sed "s/^/  /"
  stop_server
  rows+=("$(jq -r --arg name "$name" '[$name, (.rss_peak_mb | round), (.hwm_mb | round),
      (if .healthz.n > .healthz.failures then .healthz.p95_ms else "-" end), "\(.healthz.failures)/\(.healthz.n)",
      (if .events.n > .events.failures then .events.p95_ms else "-" end), "\(.events.failures)/\(.events.n)",
      (if .recovered then "yes (\(.recover_ms | round) ms)" else "NO" end) + (if .server_gone then ", SERVER DIED" else "" end)]
      | @tsv' "$T/$name.json")")
done

echo
{
  printf 'attack\tpeak RSS MB\tVmHWM MB\thealthz p95 ms\thealthz failed\tevents p95 ms\tevents failed\trecovered\n'
  printf '%s\n' "${rows[@]}"
} | awk -F'\t' '{ printf "%-9s %11s %9s %15s %15s %14s %14s  %s\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
