#!/usr/bin/env bash
# Runs AGP Rerank the way it is deployed and checks it: builds docker/Dockerfile, starts the
# compose stack (Postgres, two `agp serve` replicas, one `agp worker`) on host networking with
# docker/compose.hostnet.yaml, then checks:
#   - every replica becomes healthy (the image's HEALTHCHECK) and answers /readyz;
#   - through the API with the master key: a catalog, interactions, and a rerank through every
#     replica answering 200 (without an LLM: the fallback order); no key -> 401;
#   - the worker is running;
#   - a replica's journal survives its container: with Postgres stopped, the replica still
#     answers reranks (caches warm) and journals their rows; the container is removed and
#     recreated (its named volume kept), Postgres comes back, and those request ids must
#     arrive in rerank_requests.
# Prints the timing of each phase and the image size, tears the stack down (volumes included)
# and prints the containers' logs on failure. Exits non-zero when a check fails.
#
# Docker itself: when no daemon answers, it is started with host networking only
# (dockerd --iptables=false --ip6tables=false --bridge=none), installing docker.io,
# docker-compose, debootstrap and curl with apt-get first when they are missing (as root).
# When docker cannot be made to work the script says why and exits 0, or 1 with
# AGP_REQUIRE_DOCKER=1. Base images: scripts/docker-base-images.sh (pull, else local
# stand-ins built from Debian packages).
#
# Only host networking and 127.0.0.1 ports are used; no network is ever created.
# Env: AGP_REQUIRE_DOCKER=1, AGP_CHECK_PG_PORT / AGP_CHECK_PORT_1 / AGP_CHECK_PORT_2 (first
# ports tried; the next free ones are used), AGP_KEEP_STACK=1 (leave the stack running),
# AGP_DOCKERD_ARGS / AGP_DOCKERD_LOG (extra dockerd flags and its log when one is started:
# e.g. a separate --data-root, --exec-root, --pidfile and -H with DOCKER_HOST to try the cold
# path next to a running daemon).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIRE="${AGP_REQUIRE_DOCKER:-0}"
PROJECT=agpcheck
IMAGE=agp-rerank
T_START=$SECONDS
PHASES=()
PHASE=""
PHASE_T0=$SECONDS

say() { echo "[docker-check] $*"; }
unavailable() {
  say "docker unavailable: $*"
  if [ "$REQUIRE" = 1 ]; then
    say "FAILED (AGP_REQUIRE_DOCKER=1)"
    exit 1
  fi
  say "skipped (set AGP_REQUIRE_DOCKER=1 to make this an error)"
  exit 0
}
phase() { # NAME: ends the current phase, starts the next
  if [ -n "$PHASE" ]; then PHASES+=("$(printf '%-46s %4d s' "$PHASE" $((SECONDS - PHASE_T0)))"); fi
  PHASE="$1"
  PHASE_T0=$SECONDS
  [ -n "$PHASE" ] && say "== $PHASE"
  return 0
}
print_timings() {
  phase ""
  say "timings:"
  local p
  for p in "${PHASES[@]}"; do echo "    $p"; done
  printf '    %-46s %4d s\n' "total" $((SECONDS - T_START))
}

# --- docker, compose, the daemon -------------------------------------------------------------
phase "docker daemon"
missing_pkgs=()
# The daemon, not only the client: a machine may have a `docker` client on PATH and no engine.
{ command -v docker >/dev/null && command -v dockerd >/dev/null; } || docker info >/dev/null 2>&1 ||
  missing_pkgs+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing_pkgs+=(docker-compose)
command -v debootstrap >/dev/null || missing_pkgs+=(debootstrap)
command -v curl >/dev/null || missing_pkgs+=(curl)
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    unavailable "missing ${missing_pkgs[*]} and not root with apt-get to install them"
  fi
  say "installing ${missing_pkgs[*]}"
  # Keep the package from starting its own daemon (default bridge networking) where a service
  # manager runs: this script starts one with host networking only.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt_ok=1
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing_pkgs[@]}" >/dev/null; } || apt_ok=0
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$apt_ok" = 1 ] || unavailable "apt-get install ${missing_pkgs[*]} failed"
fi
if docker-compose version >/dev/null 2>&1; then
  COMPOSE_BIN=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_BIN=(docker compose)
else
  unavailable "neither docker-compose nor docker compose works"
fi

if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || unavailable "no docker daemon answers and only root can start one"
  command -v dockerd >/dev/null || unavailable "no docker daemon answers and dockerd is not installed"
  DOCKERD_LOG="${AGP_DOCKERD_LOG:-/var/log/agp-dockerd.log}"
  say "no daemon answers: starting dockerd --iptables=false --ip6tables=false --bridge=none (log: $DOCKERD_LOG)"
  # shellcheck disable=SC2086 # AGP_DOCKERD_ARGS: extra words (e.g. a separate --data-root)
  nohup dockerd --iptables=false --ip6tables=false --bridge=none ${AGP_DOCKERD_ARGS:-} >"$DOCKERD_LOG" 2>&1 &
  DOCKERD_PID=$!
  disown "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    unavailable "dockerd did not come up (log above)"
  fi
  say "dockerd running (pid $DOCKERD_PID; left running)"
fi
say "daemon $(docker version -f '{{.Server.Version}}' 2>/dev/null), ${COMPOSE_BIN[*]} $("${COMPOSE_BIN[@]}" version --short 2>/dev/null || true)"

# --- images ----------------------------------------------------------------------------------
phase "base images"
scripts/docker-base-images.sh

phase "image build"
# The classic builder: it is what Debian's docker.io client uses, and it needs no buildx.
# The build stage is tagged too ($IMAGE-build): it is the cache of the next build, and the
# untagged stages of earlier builds can then be pruned (each is about 2 GB) without touching it.
build() {
  DOCKER_BUILDKIT=0 docker build --network host -f docker/Dockerfile "$@" . >>/tmp/agp-docker-build.log 2>&1 || {
    tail -n 60 /tmp/agp-docker-build.log >&2
    say "FAILED: docker build $* (log: /tmp/agp-docker-build.log)"
    exit 1
  }
}
: >/tmp/agp-docker-build.log
build --target build -t "$IMAGE-build"
build -t "$IMAGE"
docker image prune -f --filter label=agp-rerank.stage >/dev/null || true
IMAGE_SIZE="$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
say "image $IMAGE: $IMAGE_SIZE, user $(docker image inspect -f '{{.Config.User}}' "$IMAGE")"

# --- the stack -------------------------------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # FIRST [TAKEN...]
  local p="$1"
  shift
  while port_busy "$p" || [[ " $* " == *" $p "* ]]; do p=$((p + 1)); done
  echo "$p"
}
export AGP_PG_PORT AGP_PORT_1 AGP_PORT_2 AGP_MASTER_KEY
AGP_PG_PORT="$(free_port "${AGP_CHECK_PG_PORT:-15432}")"
AGP_PORT_1="$(free_port "${AGP_CHECK_PORT_1:-18081}" "$AGP_PG_PORT")"
AGP_PORT_2="$(free_port "${AGP_CHECK_PORT_2:-18082}" "$AGP_PG_PORT" "$AGP_PORT_1")"
AGP_MASTER_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
COMPOSE=("${COMPOSE_BIN[@]}" -p "$PROJECT" -f docker/compose.yaml -f docker/compose.hostnet.yaml)
KEY_HDR="authorization: Bearer $AGP_MASTER_KEY"

# Never let compose create a network: every service must be on the host's network.
services="$("${COMPOSE[@]}" config --services)"
n_services=$(echo "$services" | wc -l)
n_host=$("${COMPOSE[@]}" config | grep -c '^    network_mode: host$' || true)
if [ "$n_host" -ne "$n_services" ]; then
  say "FAILED: $n_host of $n_services services have network_mode: host; refusing to start (no networks may be created)"
  exit 1
fi

FAILED=1
finish() {
  local rc=$?
  if [ "$FAILED" = 1 ] || [ "$rc" -ne 0 ]; then
    say "FAILED (exit $rc) in phase: ${PHASE:-?}; container logs:"
    "${COMPOSE[@]}" ps 2>&1 || true
    "${COMPOSE[@]}" logs --no-color --tail=150 2>&1 || true
    rc=1
  fi
  if [ "${AGP_KEEP_STACK:-0}" = 1 ]; then
    say "leaving the stack running (AGP_KEEP_STACK=1): ${COMPOSE[*]} down -v"
  else
    phase "teardown"
    "${COMPOSE[@]}" down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
  fi
  print_timings
  [ "$rc" -eq 0 ] && say "OK: all checks passed (image $IMAGE_SIZE)"
  exit "$rc"
}
trap finish EXIT

fail() { say "CHECK FAILED: $*"; exit 1; }
ok() { say "ok: $*"; }
cid() { "${COMPOSE[@]}" ps -q "$1"; }

phase "stack up (postgres healthy, replicas healthy)"
"${COMPOSE[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
say "ports: postgres 127.0.0.1:$AGP_PG_PORT, agp-1 127.0.0.1:$AGP_PORT_1, agp-2 127.0.0.1:$AGP_PORT_2"
networks_before="$(docker network ls -q | sort)"
"${COMPOSE[@]}" up -d --no-build 2>&1 | sed 's/^/    /'
[ "$(docker network ls -q | sort)" = "$networks_before" ] || fail "compose created a network"

wait_healthy() { # SERVICE SECONDS
  local c status deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    c="$(cid "$1")"
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c" 2>/dev/null || true)"
    [ "$status" = healthy ] && return 0
    sleep 1
  done
  fail "$1 is not healthy after $2 s (status: ${status:-none})"
}
for svc in agp-1 agp-2; do
  wait_healthy "$svc" 120
  ok "$svc healthy (HEALTHCHECK: agp probe /readyz)"
done

http() { # METHOD PORT PATH [BODY] -> body in $BODY, status in $STATUS
  local out args=(-sS -o /tmp/agp-check-body -w '%{http_code}' --max-time 30 -X "$1"
    -H "$KEY_HDR" -H 'content-type: application/json')
  [ $# -ge 4 ] && args+=(--data "$4")
  out="$(curl "${args[@]}" "http://127.0.0.1:$2$3")" || out=000
  STATUS="$out"
  BODY="$(cat /tmp/agp-check-body 2>/dev/null || true)"
}

phase "API through every replica"
for port in "$AGP_PORT_1" "$AGP_PORT_2"; do
  http GET "$port" /readyz
  [ "$STATUS" = 200 ] || fail "/readyz on $port answered $STATUS: $BODY"
  ok "/readyz on 127.0.0.1:$port: $BODY"
done
status_noauth="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AGP_PORT_1/v1/items/i1")"
[ "$status_noauth" = 401 ] || fail "a request without the key answered $status_noauth, not 401"
ok "no key -> 401 (auth on)"

http PUT "$AGP_PORT_1" /v1/items '{"items": [
  {"id": "i1", "title": "Fire Emblem: The Sacred Stones", "text": "Tactical RPG", "attributes": {"platform": "GBA"}},
  {"id": "i2", "title": "Mario & Luigi: Superstar Saga"},
  {"id": "i3", "title": "Advance Wars", "text": "Turn-based tactics"},
  {"id": "i4", "title": "Golden Sun", "text": "RPG"}]}'
[ "$STATUS" = 200 ] || fail "PUT /v1/items answered $STATUS: $BODY"
ok "PUT /v1/items: $BODY"
http POST "$AGP_PORT_2" /v1/interactions '{"interactions": [
  {"user_id": "u1", "item_id": "i1", "kind": "purchase", "timestamp": "2026-01-02T10:00:00Z"},
  {"user_id": "u1", "item_id": "i2", "kind": "view", "timestamp": "2026-01-03T10:00:00Z"}]}'
[ "$STATUS" = 200 ] || fail "POST /v1/interactions answered $STATUS: $BODY"
ok "POST /v1/interactions: $BODY"

RERANK='{"user_id": "u1", "candidates": [{"id": "i3"}, {"id": "i4"}, {"id": "new-1", "title": "Wario Ware", "text": "Microgames"}], "top_n": 3}'
rerank() { # PORT -> request id in $RID
  http POST "$1" /v1/rerank "$RERANK"
  [ "$STATUS" = 200 ] || fail "POST /v1/rerank on $1 answered $STATUS: $BODY"
  RID="$(printf '%s' "$BODY" | grep -o '"id":"rr_[^"]*"' | head -n1 | cut -d'"' -f4)"
  [ -n "$RID" ] || fail "no request id in the rerank answer: $BODY"
}
for port in "$AGP_PORT_1" "$AGP_PORT_2"; do
  rerank "$port"
  ok "rerank via 127.0.0.1:$port: 200, $RID, fallback $(printf '%s' "$BODY" | grep -o '"fallback":[^,}]*' | head -n1)"
done

worker="$(cid agp-worker)"
[ "$(docker inspect -f '{{.State.Running}}' "$worker")" = true ] || fail "the worker is not running"
worker_log="$(docker logs "$worker" 2>&1)"
[[ "$worker_log" == *"waiting for jobs"* ]] || fail "the worker did not report 'waiting for jobs'"
ok "worker running ($(docker inspect -f '{{.RestartCount}}' "$worker") restarts), waiting for jobs"

phase "journal survives a recreated replica"
# Warm agp-1's caches with the very reranks it will answer while Postgres is away.
rerank "$AGP_PORT_1"
"${COMPOSE[@]}" stop -t 30 postgres 2>&1 | sed 's/^/    /'
IDS=()
for _ in 1 2 3 4 5; do
  rerank "$AGP_PORT_1"
  IDS+=("$RID")
done
ok "Postgres stopped; agp-1 still answered 5 reranks with 200: ${IDS[*]}"
old="$(cid agp-1)"
for id in "${IDS[@]}"; do
  docker exec "$old" grep -rqs "$id" /var/lib/agp/journal || fail "$id is not in agp-1's journal"
done
old_instances="$(docker exec "$old" ls /var/lib/agp/journal)"
ok "their rows are in agp-1's journal (instance folder(s): $(echo $old_instances))"
t0=$SECONDS
"${COMPOSE[@]}" stop -t 30 agp-1 2>&1 | sed 's/^/    /'
code="$(docker inspect -f '{{.State.ExitCode}}' "$old")"
if [ "$code" = 0 ]; then
  say "agp-1 exited after SIGTERM in $((SECONDS - t0)) s (exit 0; its drain could not reach Postgres)"
else
  say "WARNING: agp-1 did not exit on SIGTERM within the 30 s grace period while Postgres was away (exit $code after $((SECONDS - t0)) s): killed; its journal keeps the rows"
fi
"${COMPOSE[@]}" rm -f agp-1 2>&1 | sed 's/^/    /'
docker inspect "$old" >/dev/null 2>&1 && fail "the old agp-1 container still exists"
"${COMPOSE[@]}" up -d --no-deps --no-build agp-1 2>&1 | sed 's/^/    /'
new="$(cid agp-1)"
[ -n "$new" ] && [ "$new" != "$old" ] || fail "agp-1 was not recreated"
ok "agp-1 recreated (${old:0:12} -> ${new:0:12}), volume kept"
"${COMPOSE[@]}" start postgres 2>&1 | sed 's/^/    /'
wait_healthy postgres 60
wait_healthy agp-1 180
ok "Postgres back, the new agp-1 healthy"
psql_q() { docker exec "$(cid postgres)" psql -U agp -d agp -tAc "$1"; }
in_list="$(printf "'%s'," "${IDS[@]}")"
in_list="${in_list%,}"
deadline=$((SECONDS + 60))
while :; do
  got="$(psql_q "SELECT count(*) FROM rerank_requests WHERE id IN ($in_list)" 2>/dev/null || echo 0)"
  [ "$got" = "${#IDS[@]}" ] && break
  [ $SECONDS -lt $deadline ] || fail "only $got of ${#IDS[@]} journaled rerank rows arrived in rerank_requests"
  sleep 1
done
ok "all ${#IDS[@]} request ids journaled while Postgres was down are in rerank_requests"
for _ in $(seq 30); do
  left="$(docker exec "$new" ls /var/lib/agp/journal | grep -Fxc -f <(echo "$old_instances") || true)"
  [ "$left" = 0 ] && break
  sleep 1
done
if [ "$left" = 0 ]; then
  ok "the old container's journal folder was drained and removed by the new one"
else
  say "note: the old journal folder is still there: $(docker exec "$new" ls /var/lib/agp/journal | tr '\n' ' ')"
fi
rerank "$AGP_PORT_1"
ok "the recreated agp-1 answers reranks ($RID)"
[ "$(docker inspect -f '{{.State.Running}}' "$(cid agp-worker)")" = true ] || fail "the worker is not running after the outage"
ok "worker running after the outage ($(docker inspect -f '{{.RestartCount}}' "$(cid agp-worker)") restarts)"

phase "graceful stop"
# With Postgres up, SIGTERM (the image's STOPSIGNAL, PID 1 = agp) drains and exits at once.
c2="$(cid agp-2)"
t0=$SECONDS
"${COMPOSE[@]}" stop -t 30 agp-2 2>&1 | sed 's/^/    /'
code="$(docker inspect -f '{{.State.ExitCode}}' "$c2")"
[ "$code" = 0 ] || fail "agp-2 exited $code after SIGTERM (not 0)"
[ $((SECONDS - t0)) -le 15 ] || fail "agp-2 took $((SECONDS - t0)) s to stop after SIGTERM"
ok "agp-2 stopped by SIGTERM in $((SECONDS - t0)) s, exit 0"
worker="$(cid agp-worker)"
t0=$SECONDS
"${COMPOSE[@]}" stop -t 30 agp-worker 2>&1 | sed 's/^/    /'
code="$(docker inspect -f '{{.State.ExitCode}}' "$worker")"
[ "$code" = 0 ] || fail "agp-worker exited $code after SIGTERM (not 0)"
ok "agp-worker stopped by SIGTERM in $((SECONDS - t0)) s, exit 0"

FAILED=0
