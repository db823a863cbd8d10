#!/usr/bin/env bash
# Tests the HTTP contract with schemathesis (PyPI), every check, against a live `agp serve`
# started here on a throwaway embedded Postgres with auth on, using the committed
# openapi/openapi.json (a cargo test keeps it equal to what the server serves).
#   ST_EXAMPLES=N   test cases per operation and phase (default 40)
#   ST_SEED=N       generation seed (default 1)
#   AGP_BIN=PATH    the agp binary (default $CARGO_TARGET_DIR or target, /debug/agp; built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
ST_VERSION=4.32.5
VENV=${AGP_CACHE_DIR:-$HOME/.cache/agp}/schemathesis-$ST_VERSION
if [ ! -x "$VENV/bin/st" ]; then
  echo "[schemathesis] installing schemathesis $ST_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
BIN=${AGP_BIN:-${CARGO_TARGET_DIR:-target}/debug/agp}
[ -x "$BIN" ] || cargo build --bin agp
DATA=$(mktemp -d)
chmod 755 "$DATA"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY=st-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
AGP_MASTER_KEY=$KEY AGP_LOG=${AGP_LOG:-warn} "$BIN" --data-dir "$DATA" serve --listen "127.0.0.1:$PORT" &
SERVER=$!
cleanup() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { echo "agp serve exited during start-up" >&2; exit 1; }
  sleep 0.2
done
echo "[schemathesis] server ready on port $PORT; running every check"
"$VENV/bin/st" --config-file openapi/schemathesis.toml run openapi/openapi.json \
  --url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $KEY" \
  --checks all --max-examples "${ST_EXAMPLES:-40}" --seed "${ST_SEED:-1}" \
  --workers 2 --no-shrink
