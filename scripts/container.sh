#!/usr/bin/env bash
# container.sh: builds the static binary and the container image (Dockerfile), then runs the
# image the way a deployment would, with podman and runc, and checks that:
#   - it becomes ready, with its database in a named volume that the image's /data initialised;
#   - the first start's keys land in /data/bootstrap-keys.env (mode 0600), not in the logs,
#     and the logs are JSON (LIVEOPS_LOG_FORMAT from the image's environment);
#   - an admin can create an event over gRPC (grpcurl);
#   - the server runs as uid/gid 65532, not root (podman inspect, podman top, and the host's
#     /proc/PID/status of the container's process);
#   - after the container is stopped and removed, a new one on the same volume serves the
#     event to players over HTTP, and makes no new keys;
#   - `keys create` in a second container on the same volume, and `keys list` through
#     `podman exec`, work against the running server.
#
#   bash scripts/container.sh          as root, like CI; about 10 s once podman is installed
#
# It installs podman, buildah and runc with apt-get when they are missing, and grpcurl with
# `go install`. podman reads deploy/containers.conf (runc, cgroupfs: crun cannot set up
# cgroups on the CI machine). The port is published on 127.0.0.1 only, on a port podman picks
# free. Everything it creates (containers, volume, image, temporary files) is removed on exit,
# failed or not; it prints PASS or FAIL for each check and exits non-zero on the first failure.
set -Eeuo pipefail  # -E: the ERR trap below fires inside functions too
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export PATH="$PATH:$(go env GOPATH)/bin"
export CONTAINERS_CONF="$PWD/deploy/containers.conf"
start=$SECONDS

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# A command that fails outside a check stops the script (set -e); say which one (once: not
# again from inside a $(...)).
trap 'status=$?; [ "$BASH_SUBSHELL" != 0 ] || echo "FAIL: line $LINENO: $BASH_COMMAND exited with status $status" >&2' ERR

[ "$(id -u)" = 0 ] || fail "run as root (rootful podman: the uid checks read host uids, and apt-get may be needed)"
if ! command -v podman >/dev/null || ! command -v buildah >/dev/null || ! command -v runc >/dev/null ||
  ! command -v curl >/dev/null || ! command -v jq >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq podman buildah runc curl jq >/dev/null
fi
command -v grpcurl >/dev/null || go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4

T=$(mktemp -d)
# Names of our own, so that an image, container or volume called liveops is never touched.
id=liveops-test-$$
IMAGE=localhost/$id CTR=$id VOL=$id-data
cleanup() {
  status=$?
  if [ "$status" != 0 ] && podman container exists "$CTR" 2>/dev/null; then
    echo "--- container log" >&2
    podman logs "$CTR" >&2 2>&1 || true
  fi
  podman rm -f -t 0 "$CTR" "$CTR-keys" >/dev/null 2>&1 || true
  podman volume rm -f "$VOL" >/dev/null 2>&1 || true
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$T"
  exit "$status"
}
trap cleanup EXIT

echo "--- build"
# The build context is a copy of the files the Dockerfile uses, so that the binary does not
# land in (and overwrite a ./liveops in) the working tree; .dockerignore still applies.
mkdir -p "$T/ctx/deploy"
cp Dockerfile .dockerignore "$T/ctx/"
cp -R deploy/data "$T/ctx/deploy/"
CGO_ENABLED=0 go build -o "$T/ctx/liveops" .
pass "static binary built ($(du -h "$T/ctx/liveops" | cut -f1))"
podman build -q --layers=false -t "$IMAGE" "$T/ctx" >/dev/null
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = 65532:65532 ] ||
  fail "the image's user is not 65532:65532"
pass "image $IMAGE built ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}'))"

# run: starts the server on the volume, publishing port 8080 on a free loopback port, and
# waits until /readyz answers 200; sets ADDR.
run() {
  podman run -d --name "$CTR" -p 127.0.0.1::8080 -v "$VOL:/data" "$IMAGE" >/dev/null
  ADDR=$(podman port "$CTR" 8080)
  for _ in $(seq 1 100); do
    [ "$(podman inspect --format '{{.State.Running}}' "$CTR")" = true ] || fail "the container exited"
    curl -fs -o /dev/null "http://$ADDR/readyz" && return
    sleep 0.1
  done
  fail "GET /readyz on $ADDR did not answer 200 within 10 s"
}

echo "--- first start"
podman volume create "$VOL" >/dev/null
run
pass "ready on $ADDR (GET /readyz 200)"
data=$(podman volume inspect --format '{{.Mountpoint}}' "$VOL")
[ "$(stat -c %u:%g "$data")" = 65532:65532 ] || fail "the volume's root is $(stat -c %u:%g "$data"), not 65532:65532"
[ -z "$(find "$data" ! -user 65532)" ] || fail "files in the volume not owned by 65532: $(find "$data" ! -user 65532)"
ls "$data/liveops.db" "$data/liveops.db-wal" "$data/liveops.db-shm" >/dev/null || fail "no database in the volume"
[ ! -e "$data/.keep" ] || fail "deploy/data/.keep reached the image: .dockerignore did not leave it out"
pass "the volume holds $(cd "$data" && ls -A | tr '\n' ' ')all owned by 65532"

podman cp "$CTR:/data/bootstrap-keys.env" "$T/keys.env"
[ "$(stat -c %a "$data/bootstrap-keys.env")" = 600 ] || fail "bootstrap-keys.env is mode $(stat -c %a "$data/bootstrap-keys.env"), not 600"
ADMIN=$(sed -n 's/^LIVEOPS_ADMIN_KEY=//p' "$T/keys.env")
USER_KEY=$(sed -n 's/^LIVEOPS_USER_KEY=//p' "$T/keys.env")
[ -n "$ADMIN" ] && [ -n "$USER_KEY" ] || fail "bootstrap-keys.env has no keys: $(cat "$T/keys.env")"
pass "admin and user keys read with podman cp from /data/bootstrap-keys.env (mode 600)"
podman logs "$CTR" >"$T/log1" 2>&1
! grep -q -e "$ADMIN" -e "$USER_KEY" -e LIVEOPS_ "$T/log1" || fail "a key is in the container's log"
jq -se 'any(.[]; .msg == "listening" and .db == "/data/liveops.db")' "$T/log1" >/dev/null ||
  fail "no JSON \"listening\" line with db /data/liveops.db in the log: $(cat "$T/log1")"
pass "the log is JSON, names /data/liveops.db, and holds no key"

user=$(podman inspect --format '{{.Config.User}}' "$CTR")
pid=$(podman inspect --format '{{.State.Pid}}' "$CTR")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
top=$(podman top "$CTR" user huser group | awk 'NR == 2 {print $1, $2, $3}')
[ "$user" = 65532:65532 ] && [ "$uids" = "65532 65532 65532 65532" ] && [ "$gids" = "65532 65532 65532 65532" ] &&
  [ "$top" = "65532 65532 65532" ] ||
  fail "not running as 65532: config user '$user', host pid $pid Uid '$uids' Gid '$gids', podman top '$top'"
pass "runs as non-root: user $user, host pid $pid has real/effective/saved/fs uid and gid 65532"

# An event active from an hour ago until tomorrow, so that GET /events lists it too.
title="Container Festival $$"
ID=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN" -d "{
  \"title\": \"$title\",
  \"start_time\": \"$(date -u -d '-1 hour' +%FT%TZ)\",
  \"end_time\": \"$(date -u -d '+1 day' +%FT%TZ)\",
  \"rewards\": \"{\\\"gems\\\": 50}\"
}" "$ADDR" liveops.v1.EventService/CreateEvent | jq -r .event.id)
[ -n "$ID" ] && [ "$ID" != null ] || fail "CreateEvent returned no id"
pass "CreateEvent over gRPC: event $ID"

echo "--- restart: stop, remove, run a new container on the same volume"
podman stop -t 15 "$CTR" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$CTR")
[ "$code" = 0 ] || fail "the server exited with status $code on SIGTERM"
pass "stopped with SIGTERM, exit status 0"
podman rm "$CTR" >/dev/null
run
pass "a new container is ready on $ADDR"
podman logs "$CTR" >"$T/log2" 2>&1
! grep -q -e LIVEOPS_ -e error "$T/log2" || fail "the second start printed keys or an error: $(cat "$T/log2")"
cmp -s "$T/keys.env" "$data/bootstrap-keys.env" || fail "the second start changed bootstrap-keys.env"

got=$(curl -fsS -H "Authorization: Bearer $USER_KEY" "http://$ADDR/events/$ID")
[ "$(jq -r .title <<<"$got")" = "$title" ] && [ "$(jq -c .rewards <<<"$got")" = '{"gems":50}' ] ||
  fail "GET /events/$ID after the restart: $got"
pass "GET /events/$ID over HTTP after the restart: \"$title\", rewards {\"gems\":50}"
listed=$(curl -fsS -H "Authorization: Bearer $USER_KEY" "http://$ADDR/events" | jq --arg id "$ID" '[.events[] | select(.id == $id)] | length')
[ "$listed" = 1 ] || fail "GET /events does not list $ID"
pass "GET /events lists it as active"

echo "--- keys against the same volume"
KEY2=$(podman run --rm --name "$CTR-keys" -v "$VOL:/data" "$IMAGE" keys create -role http_user -name container-test 2>"$T/keys-create.err") ||
  fail "keys create in a second container: $(cat "$T/keys-create.err")"
curl -fsS -o /dev/null -H "Authorization: Bearer $KEY2" "http://$ADDR/events/$ID" ||
  fail "the key made by 'keys create' in a second container is refused"
pass "'podman run --rm -v $VOL:/data IMAGE keys create' made a key the running server accepts"
keys=$(podman exec "$CTR" /liveops keys list | awk 'NR > 1 {print $2 "/" $3}' | sort | tr '\n' ' ')
[ "$keys" = "grpc_admin/bootstrap http_user/bootstrap http_user/container-test " ] ||
  fail "'podman exec keys list' lists: $keys"
pass "'podman exec CONTAINER /liveops keys list': $keys"
# Revoking the bootstrap keys is how the copy left in /data/bootstrap-keys.env stops mattering.
boot=$(podman exec "$CTR" /liveops keys list | awk '$2 == "http_user" && $3 == "bootstrap" {print $1}')
podman exec "$CTR" /liveops keys revoke "$boot" >/dev/null 2>&1
for _ in $(seq 1 50); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $USER_KEY" "http://$ADDR/events/$ID")
  [ "$code" = 401 ] && break
  sleep 0.1
done
[ "$code" = 401 ] || fail "the revoked bootstrap user key still gets $code after 5 s"
pass "'podman exec CONTAINER /liveops keys revoke $boot': the bootstrap user key is refused (401)"

echo "--- ok ($((SECONDS - start)) s)"
