#!/usr/bin/env bash
# Installs the browser the console tests drive: Debian's `chromium` and `chromium-driver`
# (headless, through WebDriver). Idempotent. The tests skip with a message when the browser is
# missing, unless AGP_REQUIRE_BROWSER is set (CI sets it).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "browser: present ($(chromium --version 2>/dev/null || echo chromium))"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install chromium" >&2; exit 1; }
  SUDO=sudo
fi
echo "installing chromium and chromium-driver (console tests)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null || { echo "chromium-driver installed but chromedriver not found" >&2; exit 1; }
echo "browser: installed ($(chromium --version 2>/dev/null || echo chromium))"
