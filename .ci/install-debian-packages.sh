#!/usr/bin/env bash
# Install what the tests need from Debian's own archive, where missing:
#   chromium + chromium-driver  the browser page's tests (Playwright's Python package drives
#                               /usr/bin/chromium; no browser is downloaded from elsewhere)
#   nginx                       the scale-out tests (WEB_INSTANCES=2 puts it in front)
#   pgbouncer                   the test of TaskHub behind PgBouncer in transaction mode
#   fonts-noto-color-emoji      emoji in the page drawn in colour, not as boxes (the chat's
#                               browser test checks it)
# Without them those tests skip themselves, saying so.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1 ||
  missing+=(chromium chromium-driver fonts-dejavu-core)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
fc-list 2>/dev/null | grep -q "Noto Color Emoji" || missing+=(fonts-noto-color-emoji)

if [ ${#missing[@]} -eq 0 ]; then
  echo "== present: $(/usr/bin/chromium --version 2>/dev/null | head -1), $(/usr/sbin/nginx -v 2>&1)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "== no apt-get here: install ${missing[*]} yourself to run the tests that need them" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "== not root and no sudo: cannot install ${missing[*]}; their tests will skip" >&2
    exit 0
  fi
fi

echo "== installing ${missing[*]} (apt)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "== $(/usr/bin/chromium --version 2>/dev/null | head -1), $(/usr/sbin/nginx -v 2>&1)"
