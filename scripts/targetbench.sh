#!/usr/bin/env bash
# targetbench.sh: targeted GET /events against the yardstick's fixed-bytes server.
#
# It seeds 20 active events, half of them targeted (platforms, countries, a language, a
# version range, an exclusion, rollouts of 10-40%) and all localized into 5 locales, then
# measures, in alternating rounds (wrk, 50 connections):
#   targeted    GET /events cycling through 10,000 player contexts (contexts.lua), against
#               the yardstick serving one such answer as fixed bytes to the same requests
#   no context  GET /events without any context over the same events, against the
#               yardstick serving that (smaller) answer
#
#   scripts/targetbench.sh         knobs: ROUNDS=3 SECS=5 BENCH=../shared/bench (the yardstick)
#
# Needs wrk, grpcurl, curl, jq and python3. Everything talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export PATH="$PATH:$(go env GOPATH)/bin"
ROUNDS=${ROUNDS:-3} SECS=${SECS:-5} BENCH=${BENCH:-../shared/bench}
for t in wrk grpcurl curl jq python3; do
  command -v $t >/dev/null || { echo "targetbench: missing $t" >&2; exit 2; }
done

T=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "targetbench: $1 never came up" >&2; exit 1; }

CGO_ENABLED=0 go build -o "$T/liveops" .
(cd "$BENCH/ceiling" && go build -o "$T/ceiling" .)
DB=$T/bench.db
ADMIN=$("$T/liveops" keys create -role grpc_admin -db "$DB" 2>/dev/null | tail -1)
USER=$("$T/liveops" keys create -role http_user -db "$DB" 2>/dev/null | tail -1)
LP=$(port)
"$T/liveops" -addr 127.0.0.1:$LP -db "$DB" >"$T/liveops.log" 2>&1 &
pids+=($!)
wait_up http://127.0.0.1:$LP/healthz
L=http://127.0.0.1:$LP

now=$(date +%s)
audiences=('{"platforms":["ios"]}' '{"platforms":["android"]}' '{"countries":["FR","DE"]}' '{"languages":["ja"]}'
  '{"min_version":"2.0.0"}' '{"exclude":{"countries":["US"]}}')
locs='{}'
for l in fr de ja pt-BR es; do
  locs=$(jq -c --arg l "$l" '. + {($l): {title: ("Event in " + $l), description: ("A description of typical length for a game client card, in " + $l + ".")}}' <<<"$locs")
done
for i in $(seq 0 19); do
  extra='{}'
  if [ "$i" -lt 6 ]; then extra="{\"audience\":${audiences[$i]}}"; fi
  if [ "$i" -ge 6 ] && [ "$i" -lt 10 ]; then extra="{\"rollout_percent\":$((10 * (i - 5)))}"; fi
  jq -nc --arg t "Active event $i" --arg s "$(date -u -d "@$((now - 3600 * (i + 1)))" +%FT%TZ)" --arg e "$(date -u -d "@$((now + 86400))" +%FT%TZ)" \
    --argjson extra "$extra" --argjson locs "$locs" \
    '{title:$t,description:"A description of typical length for a game client card.",start_time:$s,end_time:$e,
      rewards:"{\"items\":[{\"id\":\"gem\",\"qty\":50}]}",localizations:$locs} + $extra' |
    grpcurl -plaintext -H "authorization: Bearer $ADMIN" -d @ 127.0.0.1:$LP liveops.v1.EventService/CreateEvent >/dev/null
done
# The yardstick serves the answer of median size among 50 of the contexts, so that both
# servers write as many bytes on average.
python3 - "$L" "$USER" "$T" <<'PY'
import sys, urllib.request
base, key, tmp = sys.argv[1:4]
platforms, langs, countries = ["ios", "android", "windows", "web", "switch"], ["en", "fr", "de", "ja", "pt-BR"], ["US", "FR", "DE", "JP", "BR"]
answers = []
for i in range(0, 10000, 200):
    q = f"player_id=p{i}&platform={platforms[i%5]}&language={langs[i//5%5]}&country={countries[i//25%5]}&client_version={1+i//125%2}.1.0"
    req = urllib.request.Request(f"{base}/events?{q}", headers={"Authorization": "Bearer " + key})
    answers.append(urllib.request.urlopen(req).read())
answers.sort(key=len)
open(f"{tmp}/answer.json", "wb").write(answers[len(answers)//2])
print(f"seeded 20 active events; answers of 50 contexts: {len(answers[0])} to {len(answers[-1])} bytes, median {len(answers[len(answers)//2])}")
PY
CP=$(port)
printf '' >"$T/empty.pb"
"$T/ceiling" -addr 127.0.0.1:$CP -http-body "$T/answer.json" -grpc-body "$T/empty.pb" >/dev/null 2>&1 &
pids+=($!)
wait_up http://127.0.0.1:$CP/events
C=http://127.0.0.1:$CP

wrk_rps() { wrk -t1 -c50 -d${SECS}s -H "Authorization: Bearer $USER" "$@" 2>&1 | awk '/Requests\/sec/{print $2} /Non-2xx/{print "NON2XX", $NF > "/dev/stderr"}'; }
summarize() {
  python3 - "$@" <<'PY'
import sys,statistics as st
name=sys.argv[1]; a=[float(x) for x in sys.argv[2].split()]; b=[float(x) for x in sys.argv[3].split()]
r=[x/y for x,y in zip(a,b)]
print(f"{name}: liveops {st.median(a):.0f} req/s, yardstick {st.median(b):.0f} req/s, ratio {st.median(r):.2f} (pairs {' '.join(f'{x:.2f}' for x in r)})")
PY
}
# rounds NAME WRK_ARGS...: alternating rounds against liveops and the yardstick, the same
# requests to both (the yardstick ignores the query string, and a Lua script costs wrk the
# same on either side).
rounds() {
  local name=$1 a= b=
  shift
  for _ in $(seq 1 "$ROUNDS"); do
    a+="$(wrk_rps "$@" $L/events) "
    b+="$(wrk_rps "$@" $C/events) "
  done
  summarize "$name" "$a" "$b"
}
rounds "targeted GET /events, 10,000 player contexts, vs fixed bytes" -s scripts/targetbench/contexts.lua
# Requests without a context get a smaller answer: the yardstick serves that one, so that
# this line says what liveops's own work costs at this size.
curl -fs -H "Authorization: Bearer $USER" "$L/events" -o "$T/anon.json"
CP=$(port)
"$T/ceiling" -addr 127.0.0.1:$CP -http-body "$T/anon.json" -grpc-body "$T/empty.pb" >/dev/null 2>&1 &
pids+=($!)
wait_up http://127.0.0.1:$CP/events
C=http://127.0.0.1:$CP
rounds "GET /events without a context, same events, vs the same answer as fixed bytes"
