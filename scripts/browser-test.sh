#!/usr/bin/env bash
# Browser test of the web demo (web/): headless Chromium drives two pages against a real
# wshub, kills and restarts the server, and checks both pages reconnect and re-join.
# Installs what it needs on a fresh machine: Debian's chromium and tests/browser's npm
# packages (playwright-core only; it never downloads a browser of its own).
#
#   scripts/browser-test.sh            # uses the page the server serves at /
#   DEMO_URL=http://127.0.0.1:8000/index.html scripts/browser-test.sh
#                                      # page from elsewhere, pointed at wshub with ?server=
#
# Screenshots land in target/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
TEST_TIMEOUT=${BROWSER_TEST_TIMEOUT:-300}
PID_FILE=target/browser/wshub.pid

# demo.mjs kills its server itself; this covers the case where node itself is killed
# (timeout, Ctrl-C). Only the pid it recorded, and only if that is still a wshub.
cleanup() {
  if [[ -f $PID_FILE ]]; then
    local pid
    pid=$(cat "$PID_FILE")
    if [[ $pid =~ ^[0-9]+$ ]] && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == */wshub* ]]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
  fi
}
trap cleanup EXIT

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if [[ ! -x $CHROMIUM ]]; then
  echo "== installing chromium (Debian package)"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing nodejs and npm (Debian packages)"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
fi

# npm ci wipes node_modules first, so only when the installed tree does not match
# package.json (whose one dependency is pinned exactly).
if ! (cd tests/browser && [[ -d node_modules/playwright-core ]] && npm ls --silent >/dev/null 2>&1); then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

echo "== cargo build --release --bin wshub"
cargo build --release --bin wshub

echo "== browser test ($("$CHROMIUM" --version 2>/dev/null | head -n1 || echo chromium))"
mkdir -p target/browser
export CHROMIUM
timeout --kill-after=10 "$TEST_TIMEOUT" node tests/browser/demo.mjs target/release/wshub
