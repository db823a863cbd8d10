#!/usr/bin/env bash
# Soak benchmark: reranks at a fixed rate for a bounded time against the release build, with
# the test upstream answering in 0 ms and in 200 ms; prints errors, latency p50/p99 and the
# server's RSS before and after. Extra flags go to the harness (benches/soak.rs), e.g.
#   scripts/soak.sh --rate 200 --secs 60 --delays 0,200
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
cargo build --release --quiet --bin agp
cargo bench --quiet --bench soak -- "$@"
