#!/usr/bin/env bash
# Installs what AGP Rerank needs on a fresh Debian/Ubuntu machine: the PostgreSQL server
# binaries (the embedded cluster runs them; no system service is used) and the `postgres`
# account that runs them when agp runs as root. Idempotent.
set -euo pipefail

have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }

if have_pg && id postgres >/dev/null 2>&1; then
  echo "PostgreSQL server binaries: present ($(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' '))"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install postgresql-15" >&2; exit 1; }
  SUDO=sudo
fi
echo "installing postgresql-15 (server binaries for the embedded cluster)..."
$SUDO apt-get update -qq
# The package's own cluster/service is not used; policy-rc.d keeps it from starting where possible.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
have_pg || { echo "postgresql-15 installed but initdb not found" >&2; exit 1; }
echo "PostgreSQL server binaries: installed"
