#!/usr/bin/env bash
# Smoke test of the load tool against real servers: small runs of every wshub-load
# subcommand with --json, checked for correctness only (counts, never timing):
#   hold     2000 connections for 3 s          established == 2000, failed_total == 0
#   fanout   hub: 2000 subs x 2 pubs x 200     received == expected, lost == 0, duplicates == 0
#   echo     hub: 200 connections for 3 s      errors == 0, round_trips > 0
#   fanout   raw (wshub --relay): 200 x 1 x 200  received == expected, lost == 0, duplicates == 0
# and over wss:// (wshub --tls-cert/--tls-key, a scripts/gencert.sh certificate, --ca):
#   hold     1000 connections for 2 s          established == 1000, failed_total == 0
#   fanout   hub: 1000 subs x 2 pubs x 100     received == expected, lost == 0, duplicates == 0
#   echo     hub: 100 connections for 2 s      errors == 0, round_trips > 0
#   hold     100, --tls-server-name wrong.example: established == 0, all 100 failed as tls
#            (the certificate is verified, not just accepted)
# and against a cluster (2 instances on a private redis-server, two --url's, 2 processes):
#   fanout   hub: 1000 subs x 1 pub x 100      received == expected, lost == 0, duplicates == 0
#   fanout   --broadcast: 1000 subs x 20       received == expected, lost == 0
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
scripts/gencert.sh "$WORK/cert" 2>"$WORK/gencert.err" || { cat "$WORK/gencert.err" >&2; exit 1; }
CA=$WORK/cert/cert.pem
start_wshub "$WORK/hub-tls.log" --shards 2 --tls-cert "$CA" --tls-key "$WORK/cert/key.pem"
TLS_HUB=wss://127.0.0.1:$PORT/
start_redis "$WORK/redis"
start_wshub "$WORK/cluster-a.log" --shards 1 --redis "redis://127.0.0.1:$REDIS_PORT"
CLUSTER=(--url "ws://127.0.0.1:$PORT/")
start_wshub "$WORK/cluster-b.log" --shards 1 --redis "redis://127.0.0.1:$REDIS_PORT"
CLUSTER+=(--url "ws://127.0.0.1:$PORT/")

echo "== load runs"
run hold hold --url "$HUB" --connections 2000 --duration 3s
run fanout_hub fanout --url "$HUB" --connections 2000 --publishers 2 --messages 200 --size 64 --timeout 60s
run echo_hub echo --url "$HUB" --connections 200 --duration 3s
run fanout_raw fanout --url "$RELAY" --protocol raw --connections 200 --publishers 1 --messages 200 --timeout 60s
run hold_wss hold --url "$TLS_HUB" --ca "$CA" --connections 1000 --duration 2s
run fanout_wss fanout --url "$TLS_HUB" --ca "$CA" --connections 1000 --publishers 2 --messages 100 --timeout 60s
run echo_wss echo --url "$TLS_HUB" --ca "$CA" --connections 100 --duration 2s
run fanout_cluster fanout "${CLUSTER[@]}" --processes 2 --connections 1000 --messages 100 --timeout 60s
run broadcast_cluster fanout "${CLUSTER[@]}" --processes 2 --broadcast --connections 1000 --messages 20 --rate 50 --timeout 60s
run wss_wrong_name hold --url "$TLS_HUB" --ca "$CA" --tls-server-name wrong.example --connections 100 --duration 1s

echo "== checks"
python3 - "$WORK" <<'PY'
import json, os, sys

work = sys.argv[1]
# (run, field, what it must be, the check)
checks = [
    ("hold", "established", "== 2000", lambda s: s["established"] == 2000),
    ("hold", "failed_total", "== 0", lambda s: s["failed_total"] == 0),
    ("fanout_hub", "received", "== expected", lambda s: s["received"] == s["expected"]),
    ("fanout_hub", "lost", "== 0", lambda s: s["lost"] == 0),
    ("fanout_hub", "duplicates", "== 0", lambda s: s["duplicates"] == 0),
    ("echo_hub", "errors", "== 0", lambda s: s["errors"] == 0),
    ("echo_hub", "round_trips", "> 0", lambda s: s["round_trips"] > 0),
    ("fanout_raw", "received", "== expected", lambda s: s["received"] == s["expected"]),
    ("fanout_raw", "lost", "== 0", lambda s: s["lost"] == 0),
    ("fanout_raw", "duplicates", "== 0", lambda s: s["duplicates"] == 0),
    ("hold_wss", "established", "== 1000", lambda s: s["established"] == 1000),
    ("hold_wss", "failed_total", "== 0", lambda s: s["failed_total"] == 0),
    ("fanout_wss", "subscribed", "== 1000", lambda s: s["subscribed"] == 1000),
    ("fanout_wss", "received", "== expected", lambda s: s["received"] == s["expected"] > 0),
    ("fanout_wss", "lost", "== 0", lambda s: s["lost"] == 0),
    ("fanout_wss", "duplicates", "== 0", lambda s: s["duplicates"] == 0),
    ("echo_wss", "established", "== 100", lambda s: s["established"] == 100),
    ("echo_wss", "errors", "== 0", lambda s: s["errors"] == 0),
    ("echo_wss", "round_trips", "> 0", lambda s: s["round_trips"] > 0),
    ("fanout_cluster", "received", "== expected", lambda s: s["received"] == s["expected"] > 0),
    ("fanout_cluster", "lost", "== 0", lambda s: s["lost"] == 0),
    ("fanout_cluster", "duplicates", "== 0", lambda s: s["duplicates"] == 0),
    ("broadcast_cluster", "received", "== expected", lambda s: s["received"] == s["expected"] > 0),
    ("broadcast_cluster", "lost", "== 0", lambda s: s["lost"] == 0),
    ("wss_wrong_name", "established", "== 0", lambda s: s["established"] == 0),
    ("wss_wrong_name", "failed", "tls == 100", lambda s: s["failed"]["tls"] == 100),
]

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
for run, field, wanted, check in checks:
    if run not in summaries:
        summaries[run] = load(run)
    summary, problem = summaries[run]
    label = "%s: %s %s" % (run, field, wanted)
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
