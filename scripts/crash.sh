#!/usr/bin/env bash
# Crash benchmark: kill -9 of the release server under concurrent reranks, several runs;
# prints answered vs logged (every answered request must be in the log after a restart).
#   scripts/crash.sh --runs 5 --secs 6 --clients 8
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
cargo build --release --quiet --bin agp
cargo bench --quiet --bench crash -- "$@"
