#!/usr/bin/env bash
# Fan-out benchmark: one publisher, N subscribers, M messages of S bytes sent in a burst;
# delivered messages per second and delivery latency, per server and case.
#
# Usage: scripts/bench-fanout.sh [--server NAME:PROTOCOL:COMMAND]... [--rounds R] [--out DIR]
#   COMMAND has {port} where the port goes: it gets 0, and the server must print
#   "listening on [ws://]127.0.0.1:PORT" (wshub at --log-level info, loadtest/peers' tokio-peer
#   do). PROTOCOL is `hub` (wshub's JSON protocol: subscribe, publish) or `raw` (a relay:
#   every text message goes to every connection).
#   Default: wshub:hub:target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info
#
# Cases: 1,000 and 19,000 subscribers, 64 B and 1 KiB messages. The burst (200 messages
# to 1,000 subscribers, 50 to 19,000) is small enough that no server here has to evict
# or drop a receiver, so delivered/s measures how fast each drains the same work and loss
# must be zero. With --rounds R the servers run interleaved (round 1 of each, then
# round 2, ...), so a noisy moment does not land on one server only; the median is kept.
# The server is pinned to CPU 0 and the load to CPU 1 when taskset exists (and 2+ CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SERVERS=()
ROUNDS=1
OUT=target/bench-fanout
while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVERS+=("$2"); shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--server NAME:PROTOCOL:COMMAND]... [--rounds R] [--out DIR]" >&2; exit 2 ;;
    esac
done
[ ${#SERVERS[@]} -gt 0 ] || SERVERS=("wshub:hub:target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info")
CASES=("1000 64 200" "1000 1024 200" "19000 64 50" "19000 1024 50")

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/fanout.jsonl
: >"$RESULTS"
cargo build --release --quiet -p wshub -p wshub-load

pin_cpus

run_case() { # name protocol command subscribers size messages round
    local name=$1 protocol=$2 command=$3 subscribers=$4 size=$5 messages=$6 round=$7
    # shellcheck disable=SC2086 # the command is meant to be split into words
    start_server "$OUT/$name.log" "${SERVER_PIN[@]}" ${command//\{port\}/0}
    local line
    line=$("${LOAD_PIN[@]}" timeout 300 target/release/wshub-load fanout --url "ws://127.0.0.1:$PORT/" \
        --connections "$subscribers" --publishers 1 --messages "$messages" --size "$size" \
        --protocol "$protocol" --rate 1000000 --timeout 120s --json 2>>"$OUT/load.log" | tail -n 1) || true
    stop_pid "$SERVER_PID" 5
    python3 - "$name" "$round" "$line" >>"$RESULTS" <<'PY'
import json, sys
name, rnd, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    result = json.loads(line)
except ValueError:
    result = {"error": "no JSON from wshub-load: " + line[:200]}
result.update(server=name, round=rnd)
print(json.dumps(result))
PY
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
if "error" in r: print("  %-16s round %d: %s" % (r["server"], r["round"], r["error"])); sys.exit()
l = r["latency_us"]
print("  %-16s %6d subs %5d B: %10.0f delivered/s  p50 %7d us  p99 %7d us  lost %d" % (r["server"], r["subscribers"], r["size"], r["delivered_per_sec"], l["p50"], l["p99"], r["lost"]))'
}

for round in $(seq "$ROUNDS"); do
    for case in "${CASES[@]}"; do
        read -r subscribers size messages <<<"$case"
        for spec in "${SERVERS[@]}"; do
            name=${spec%%:*} rest=${spec#*:}
            protocol=${rest%%:*} command=${rest#*:}
            run_case "$name" "$protocol" "$command" "$subscribers" "$size" "$messages" "$round"
        done
    done
done

# Median per server and case over the rounds.
python3 - "$RESULTS" "$OUT/fanout-summary.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    if "error" in r:
        continue
    groups.setdefault((r["server"], r["subscribers"], r["size"]), []).append(r)
summary = []
for (server, subs, size), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    med = lambda f: statistics.median(f(r) for r in rs)
    summary.append({"server": server, "subscribers": subs, "size": size, "rounds": len(rs),
                    "delivered_per_sec": med(lambda r: r["delivered_per_sec"]),
                    "p50_us": med(lambda r: r["latency_us"]["p50"]), "p99_us": med(lambda r: r["latency_us"]["p99"]),
                    "lost": sum(r["lost"] for r in rs)})
json.dump(summary, open(sys.argv[2], "w"), indent=1)
print("\nmedian over rounds:")
print("%-16s %8s %6s %14s %10s %10s %6s" % ("server", "subs", "size", "delivered/s", "p50 us", "p99 us", "lost"))
for s in summary:
    print("%-16s %8d %6d %14.0f %10.0f %10.0f %6d" % (s["server"], s["subscribers"], s["size"], s["delivered_per_sec"], s["p50_us"], s["p99_us"], s["lost"]))
failed = [r for r in rows if "error" in r or r.get("lost", 0) > 0]
sys.exit(1 if failed else 0)
PY
