#!/bin/sh
# Regenerates data/amazon-games-sample/ from LLMRank's Games-6k files: the first 300 users
# (rows) of Games-6k.test.inter and only the items they reference, with the original ids.
# Usage: scripts/make-sample.sh [SRC_DIR] [OUT_DIR] [USERS]
set -eu
src=${1:-/work/shared/data/amazon-games}
out=${2:-"$(dirname "$0")/../data/amazon-games-sample"}
users=${3:-300}
mkdir -p "$out"

# Header + the first $users user rows.
head -n "$((users + 1))" "$src/Games-6k.test.inter" > "$out/Games-6k-sample.test.inter"

# Header + every item row whose id occurs in those rows (history list or target), in .item order.
awk -F'\t' '
    NR == FNR { if (FNR > 1) { n = split($2, ids, " "); for (i = 1; i <= n; i++) keep[ids[i]] = 1; keep[$3] = 1 } next }
    FNR == 1 || ($1 in keep)
' "$out/Games-6k-sample.test.inter" "$src/Games-6k.item" > "$out/Games-6k-sample.item"

wc -l "$out"/Games-6k-sample.* >&2
