#!/usr/bin/env bash
# Smoke test of the load tool against real servers: small runs of every wshub-load
# subcommand with --json, checked for correctness only (counts, never timing):
#   hold     2000 connections for 3 s          established == 2000, failed_total == 0
#   fanout   hub: 2000 subs x 2 pubs x 200     received == expected, lost == 0, duplicates == 0
#   echo     hub: 200 connections for 3 s      errors == 0, round_trips > 0
#   fanout   raw (wshub --relay): 200 x 1 x 200  received == expected, lost == 0, duplicates == 0
#
# Prints one line per check and ends with "smoke-load: N passed, M failed"; exits 1 if
# any check failed. Every run is bounded by `timeout`; servers are stopped on any exit
# (SIGTERM, then SIGKILL after 10 s).
#
# Usage: scripts/smoke-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# Bound for each load run: the longest one needs a few seconds.
RUN_TIMEOUT=90
WORK=$(mktemp -d)
at_exit 'rm -rf "$WORK"'

# run NAME [wshub-load args...]: the last stdout line (the JSON summary) goes to NAME.json.
run() {
    local name=$1 rc=0
    shift
    echo "-- wshub-load $*"
    timeout -k 5 "$RUN_TIMEOUT" target/release/wshub-load "$@" --json >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    tail -n 1 "$WORK/$name.out" >"$WORK/$name.json"
    echo "$rc" >"$WORK/$name.rc"
}

echo "== building"
cargo build --release --quiet -p wshub -p wshub-load

start_wshub "$WORK/hub.log" --shards 2
HUB=ws://127.0.0.1:$PORT/
start_wshub "$WORK/relay.log" --shards 2 --relay
RELAY=ws://127.0.0.1:$PORT/

echo "== load runs"
run hold hold --url "$HUB" --connections 2000 --duration 3s
run fanout_hub fanout --url "$HUB" --connections 2000 --publishers 2 --messages 200 --size 64 --timeout 60s
run echo_hub echo --url "$HUB" --connections 200 --duration 3s
run fanout_raw fanout --url "$RELAY" --protocol raw --connections 200 --publishers 1 --messages 200 --timeout 60s

echo "== checks"
python3 - "$WORK" <<'PY'
import json, os, sys

work = sys.argv[1]
checks = [
    ("hold", "established", lambda s: s["established"] == 2000),
    ("hold", "failed_total", lambda s: s["failed_total"] == 0),
    ("fanout_hub", "received", lambda s: s["received"] == s["expected"]),
    ("fanout_hub", "lost", lambda s: s["lost"] == 0),
    ("fanout_hub", "duplicates", lambda s: s["duplicates"] == 0),
    ("echo_hub", "errors", lambda s: s["errors"] == 0),
    ("echo_hub", "round_trips", lambda s: s["round_trips"] > 0),
    ("fanout_raw", "received", lambda s: s["received"] == s["expected"]),
    ("fanout_raw", "lost", lambda s: s["lost"] == 0),
    ("fanout_raw", "duplicates", lambda s: s["duplicates"] == 0),
]
wanted = {
    "established": "== 2000", "failed_total": "== 0", "received": "== expected", "lost": "== 0",
    "duplicates": "== 0", "errors": "== 0", "round_trips": "> 0",
}

def load(run):
    try:
        with open(os.path.join(work, run + ".json")) as f:
            return json.loads(f.read()), None
    except (OSError, ValueError) as e:
        with open(os.path.join(work, run + ".err")) as f:
            err = f.read().strip().splitlines()[-3:]
        return None, "no JSON summary (%s); exit %s; stderr: %s" % (
            e, open(os.path.join(work, run + ".rc")).read().strip(), " | ".join(err))

summaries = {}
passed = failed = 0
for run, field, check in checks:
    if run not in summaries:
        summaries[run] = load(run)
    summary, problem = summaries[run]
    label = "%s: %s %s" % (run, field, wanted[field])
    if summary is not None:
        try:
            ok = check(summary)
        except KeyError as e:
            ok, problem = False, "field %s missing" % e
        if not ok and problem is None:
            extra = " (expected %s)" % summary["expected"] if "expected" in summary else ""
            problem = "got %s%s" % (summary.get(field), extra)
    if summary is not None and problem is None:
        passed += 1
        print("ok    %s (%s)" % (label, summary[field]))
    else:
        failed += 1
        print("FAIL  %s: %s" % (label, problem))
print("smoke-load: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
PY
