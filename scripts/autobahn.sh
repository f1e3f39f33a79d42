#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite fuzzingclient (cases 1-11) against
# `wshub --echo` on 127.0.0.1 and fails if any case fails. Cases 12-13 need
# permessage-deflate, which wshub does not offer yet.
#
# Installs the suite on first use (Python 2.7 from pyenv -> virtualenv<20.22 ->
# autobahntestsuite 0.8.2 with the pins in autobahn-constraints.txt) under
# $PEERS_HOME (default ~/.cache/peers). Where no Python 2.7 exists it says so and skips.
#
# Usage: scripts/autobahn.sh [OUTDIR]   (reports go to OUTDIR, default target/autobahn)
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD/scripts
OUTDIR=${1:-target/autobahn}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/peers}
VENV=$PEERS_HOME/autobahn
WSTEST=$VENV/bin/wstest

find_python27() {
    local candidate
    for candidate in "${PY2:-}" "$(pyenv root 2>/dev/null)"/versions/2.7*/bin/python2.7 \
        "$(command -v python2.7 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_autobahn() {
    if [ -x "$WSTEST" ] && PYTHONWARNINGS=ignore "$WSTEST" -a >/dev/null 2>&1; then
        return 0
    fi
    local py2
    if ! py2=$(find_python27); then
        echo "autobahn: SKIPPED: no Python 2.7 interpreter (pyenv 2.7.x or python2.7); set PY2=/path/to/python2.7"
        exit 0
    fi
    echo "autobahn: installing the suite with $py2 (about a minute, once)"
    mkdir -p "$PEERS_HOME"
    if [ ! -x "$PEERS_HOME/bootstrap/bin/virtualenv" ]; then
        python3 -m venv "$PEERS_HOME/bootstrap"
        "$PEERS_HOME/bootstrap/bin/pip" install -q "virtualenv<20.22"
    fi
    rm -rf "$VENV"
    "$PEERS_HOME/bootstrap/bin/virtualenv" -q -p "$py2" "$VENV"
    "$VENV/bin/pip" install -q --no-python-version-warning -c "$HERE/autobahn-constraints.txt" autobahntestsuite==0.8.2
}

install_autobahn
cargo build --release --quiet --bin wshub

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Autobahn's 9.x cases send messages up to 16 MiB; the limits must let them through.
target/release/wshub --echo --listen "127.0.0.1:$PORT" --shards 2 --log-level warn \
    --max-message-size 16MiB --max-pending-bytes 64MiB >"$OUTDIR/wshub.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

cat >"$OUTDIR/spec.json" <<JSON
{
  "options": {"failByDrop": true},
  "outdir": "$OUTDIR/reports",
  "servers": [{"agent": "wshub", "url": "ws://127.0.0.1:$PORT/"}],
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON
rm -rf "$OUTDIR/reports"
started=$(date +%s)
(cd "$OUTDIR" && PYTHONWARNINGS=ignore timeout 900 "$WSTEST" -m fuzzingclient -s spec.json) \
    >"$OUTDIR/wstest.log" 2>&1 || true
if [ ! -f "$OUTDIR/reports/index.json" ]; then
    echo "autobahn: ERROR no report; see $OUTDIR/wstest.log and $OUTDIR/wshub.log" >&2
    tail -5 "$OUTDIR/wstest.log" >&2
    exit 2
fi

python3 - "$OUTDIR/reports/index.json" "$(($(date +%s) - started))" <<'PY'
import collections, json, sys
index, seconds = json.load(open(sys.argv[1])), sys.argv[2]
good = {"OK", "NON-STRICT", "INFORMATIONAL"}
counts, failed, total = collections.Counter(), [], 0
for cases in index.values():
    for case, result in sorted(cases.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
        total += 1
        if result["behavior"] in good and result["behaviorClose"] in good:
            counts[result["behavior"]] += 1
        else:
            failed.append((case, result["behavior"], result["behaviorClose"]))
print("autobahn: %d passed (OK=%d NON-STRICT=%d INFORMATIONAL=%d), %d failed, %d total, %ss"
      % (sum(counts.values()), counts["OK"], counts["NON-STRICT"], counts["INFORMATIONAL"],
         len(failed), total, seconds))
for case, behavior, close in failed:
    print("  FAILED %s behavior=%s close=%s" % (case, behavior, close))
sys.exit(1 if failed or total == 0 else 0)
PY
