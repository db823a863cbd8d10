#!/usr/bin/env bash
# Benchmark: bulk import of the three real datasets into a fresh embedded cluster, then a
# re-run (idempotent) of Amazon Games. Prints counts and times (issue target: Amazon Games
# in under 60 s). Usage: scripts/bench-import.sh [path/to/shared/data]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
DIR=$(mktemp -d /tmp/agp-bench-import.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
cargo build --release --quiet --bin agp
AGP=./target/release/agp
export AGP_LOG=warn
run() { echo "== $*"; "$AGP" --data-dir "$DIR" import "$@" 2>&1 | grep -Ev '^\s+note:'; }
run --project games --format recbole "$DATA/amazon-games"
run --project yelp --format yelp-core40 "$DATA/yelp-core40"
run --project goodreads --format goodreads "$DATA/goodreads"
echo "== re-run (idempotent)"
run --project games --format recbole "$DATA/amazon-games"
