#!/usr/bin/env bash
# cluster.sh: several liveops instances on one PostgreSQL, each on a free 127.0.0.1 port,
# behind HAProxy (deploy/haproxy.cfg) on one port for players' HTTP and admins' gRPC. It
# prints the addresses, two fresh keys and commands to try, then waits: Ctrl-C (or
# SIGTERM) stops everything it started.
#
#   scripts/cluster.sh                        3 instances, HAProxy on a free port
#   N=5 PORT=8080 scripts/cluster.sh          5 instances, HAProxy on 127.0.0.1:8080
#   SHARED_CACHE_MAX_AGE=2s scripts/cluster.sh
#                                             players' reads kept by HAProxy's cache for 2s
#   DB=postgres://user@host:5432/db scripts/cluster.sh
#                                             another database (default: the schema
#                                             liveops_cluster, created if missing, in the
#                                             local PostgreSQL's database postgres)
#
# It builds the binary from this checkout, and installs haproxy (and curl) with apt-get
# when they are missing. Events and keys stay in the database from one run to the next.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
N=${N:-3} PORT=${PORT:-} DB=${DB:-} SHARED_CACHE_MAX_AGE=${SHARED_CACHE_MAX_AGE:-}

if ! command -v haproxy >/dev/null || ! command -v curl >/dev/null; then
  echo "cluster: installing haproxy and curl with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy curl >/dev/null
fi

if [ -z "$DB" ]; then
  base="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
  if ! pg_isready -q -h 127.0.0.1 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
    echo "cluster: starting the local PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  fi
  PGOPTIONS=--client-min-messages=warning psql -q "$base" -c "CREATE SCHEMA IF NOT EXISTS liveops_cluster" >/dev/null
  DB="$base&search_path=liveops_cluster"
fi

T=$(mktemp -d)
pids=()
stop() {
  trap - INT TERM EXIT
  echo "cluster: stopping" >&2
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

CGO_ENABLED=0 go build -o "$T/liveops" .
# The keys first: the instances then find keys and make none of their own.
USER_KEY=$("$T/liveops" keys create -role http_user -name cluster.sh -db "$DB" 2>/dev/null)
ADMIN_KEY=$("$T/liveops" keys create -role grpc_admin -name cluster.sh -db "$DB" 2>/dev/null)

flags=()
[ -n "$SHARED_CACHE_MAX_AGE" ] && flags=(-shared-cache-max-age "$SHARED_CACHE_MAX_AGE")
addrs=()
for i in $(seq 1 "$N"); do
  "$T/liveops" -addr 127.0.0.1:0 -db "$DB" -log-format json "${flags[@]}" >"$T/live$i.log" 2>&1 &
  pids+=($!)
  addr=
  for _ in $(seq 1 100); do
    addr=$(grep '"msg":"listening"' "$T/live$i.log" | grep -o '"addr":"[^"]*"' | cut -d'"' -f4 || true)
    [ -n "$addr" ] && break
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "cluster: instance $i did not start:" >&2; cat "$T/live$i.log" >&2; exit 1; }
  addrs+=("$addr")
done

# deploy/haproxy.cfg with its "# @servers@" lines replaced by one line per instance.
servers=
for i in "${!addrs[@]}"; do servers+="    server live$((i + 1)) ${addrs[$i]}\n"; done
awk -v servers="$servers" '/^[ \t]*# @servers@[ \t]*$/ { printf "%s", servers; next } { print }' \
  deploy/haproxy.cfg >"$T/haproxy.cfg"

# HAProxy cannot pick a free port itself: try random ones that nothing answers on.
front=
for _ in $(seq 1 20); do
  port=${PORT:-$((20000 + RANDOM % 40000))}
  if [ -z "$PORT" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
  LIVEOPS_FRONT_ADDR="127.0.0.1:$port" haproxy -db -f "$T/haproxy.cfg" >"$T/haproxy.log" 2>&1 &
  hpid=$!
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && front=127.0.0.1:$port && break
    kill -0 "$hpid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$front" ] && break
  kill "$hpid" 2>/dev/null || true
  if [ -n "$PORT" ] || ! grep -q "cannot bind" "$T/haproxy.log"; then
    echo "cluster: haproxy did not start:" >&2
    cat "$T/haproxy.log" >&2
    exit 1
  fi
done
[ -n "$front" ] || { echo "cluster: no free port for haproxy" >&2; exit 1; }
pids+=("$hpid")

start=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
end=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
cat <<EOF

liveops: $N instances behind HAProxy, on $DB

  front (HAProxy, HTTP/1.1, h2c and gRPC):  http://$front
$(for i in "${!addrs[@]}"; do echo "  instance $((i + 1)) (pid ${pids[$i]}):                  http://${addrs[$i]}"; done)
  cache in front:  ${SHARED_CACHE_MAX_AGE:-off (SHARED_CACHE_MAX_AGE=2s turns it on)}
  logs:            $T/live*.log, $T/haproxy.log (removed on exit)

Keys, made for this run (go run . keys list -db "\$DB" lists them all):
  DB='$DB'
  USER=$USER_KEY
  ADMIN=$ADMIN_KEY

Try:
  curl -H "Authorization: Bearer \$USER" http://$front/events
  curl --http2-prior-knowledge -H "Authorization: Bearer \$USER" http://$front/events
  curl http://$front/readyz
  grpcurl -plaintext -H "authorization: Bearer \$ADMIN" $front list
  grpcurl -plaintext -H "authorization: Bearer \$ADMIN" \\
    -d '{"title": "Double XP", "start_time": "$start", "end_time": "$end", "rewards": "{\"xp\": 2}"}' \\
    $front liveops.v1.EventService/CreateEvent
  kill -9 ${pids[0]}    # one instance gone: HAProxy sends everything to the others

Ctrl-C stops everything.
EOF
wait
