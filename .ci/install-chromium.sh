#!/usr/bin/env bash
# Install Debian's Chromium (and its driver) for the browser tests, if missing.
# The tests drive /usr/bin/chromium with Playwright's Python package; no browser is
# downloaded from anywhere but the distribution's own archive. Without it the browser
# tests skip themselves, saying so.
set -euo pipefail

if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1; then
  echo "== chromium present: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "== no apt-get here: install chromium yourself to run the browser tests" >&2
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "== not root and no sudo: cannot install chromium; browser tests will skip" >&2
    exit 0
  fi
fi

echo "== installing chromium and chromium-driver (apt)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core
echo "== $(/usr/bin/chromium --version 2>/dev/null | head -1)"
