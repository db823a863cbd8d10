#!/usr/bin/env bash
# Compile-time checked SQL: the `query!` macros read `.sqlx/` (the offline data, committed)
# when built with SQLX_OFFLINE=true (the default, set in .cargo/config.toml). This script
# describes every static statement against a real schema: it starts a throwaway Postgres,
# applies migrations/ and re-expands the macros against it.
#
#   scripts/sqlx-prepare.sh          rewrite .sqlx/ (after changing a query or a migration)
#   scripts/sqlx-prepare.sh --check  fail if .sqlx/ is stale or a query disagrees with the
#                                    schema (CI runs this)
#
# Needs the PostgreSQL server binaries (scripts/install-deps.sh). No sqlx-cli needed: the
# macros write their data themselves when SQLX_OFFLINE_DIR is set (as `cargo sqlx prepare`).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-write}"

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || bin=$(dirname "$(command -v initdb)")
work=$(mktemp -d /tmp/agp-sqlx.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -ne 0 ] || chown postgres "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { as_pg "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
as_pg "$bin/initdb" -D "$work/data" -U agp --auth=trust >/dev/null
as_pg "$bin/pg_ctl" -D "$work/data" -l "$work/log" -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off" -w start >/dev/null
as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U agp agp
for m in migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U agp -d agp -f "$m" >/dev/null
done

out="$work/sqlx"
mkdir -p "$out"
# Force the macros to expand again (cargo does not know they read the database).
touch src/lib.rs
find src -name '*.rs' -path '*store*' -exec touch {} +
DATABASE_URL="postgres://agp@127.0.0.1:$port/agp" SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" \
  cargo check --lib --quiet

if [ "$mode" = "--check" ]; then
  if ! diff -r -q "$out" .sqlx >/dev/null; then
    echo ".sqlx/ is stale: run scripts/sqlx-prepare.sh and commit .sqlx/" >&2
    diff -r -q "$out" .sqlx >&2 || true
    exit 1
  fi
  echo ".sqlx/ matches the queries and the schema ($(ls .sqlx | wc -l) statements)"
else
  rm -rf .sqlx
  cp -r "$out" .sqlx
  echo "wrote .sqlx/ ($(ls .sqlx | wc -l) statements)"
fi
