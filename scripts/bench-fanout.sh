#!/usr/bin/env bash
# Fan-out benchmark: one publisher, N subscribers, M messages of S bytes sent in a burst;
# delivered messages per second and delivery latency, per server and case.
#
# Usage: scripts/bench-fanout.sh [--server NAME:PROTOCOL:COMMAND]... [--case "SUBS SIZE MESSAGES [RATE [WINDOW]]"]...
#                                [--rounds R] [--out DIR]
#   COMMAND has {port} where the port goes: it gets 0, and the server must print
#   "listening on [ws://]127.0.0.1:PORT" (wshub at --log-level info, loadtest/peers' tokio-peer
#   do). PROTOCOL is `hub` (wshub's JSON protocol: subscribe, publish) or `raw` (a relay:
#   every text message goes to every connection).
#   Default: wshub:hub:target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info
#
# Cases: 1,000 and 19,000 subscribers, 64 B and 1 KiB messages. The burst (200 messages
# to 1,000 subscribers, 50 to 19,000) is small enough that no server here has to evict
# or drop a receiver, so delivered/s measures how fast each drains the same work and loss
# must be zero. --case replaces them: SUBS subscribers, MESSAGES of SIZE bytes, sent at
# RATE messages/s (default 1000000: a burst; e.g. 2 for a paced broadcast), at most WINDOW
# in flight (wshub-load --window; default: hub 64, raw none; `-` keeps the default).
#
# wshub-load gets the server's pid (--server-pid), so each result also has the server's
# peak RSS while publishing (VmHWM, reset at the first publish) and its user-space CPU
# time per delivery (/proc/PID/stat), besides delivered/s and latency.
# With --rounds R the servers run interleaved (round 1 of each, then
# round 2, ...), so a noisy moment does not land on one server only; the median is kept.
# The server is pinned to CPU 0 and the load to CPU 1 when taskset exists (and 2+ CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SERVERS=() CASES=()
ROUNDS=1
OUT=target/bench-fanout
while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVERS+=("$2"); shift 2 ;;
        --case) CASES+=("$2"); shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--server NAME:PROTOCOL:COMMAND]... [--case \"SUBS SIZE MESSAGES [RATE [WINDOW]]\"]... [--rounds R] [--out DIR]" >&2; exit 2 ;;
    esac
done
[ ${#SERVERS[@]} -gt 0 ] || SERVERS=("wshub:hub:target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info")
[ ${#CASES[@]} -gt 0 ] || CASES=("1000 64 200" "1000 1024 200" "19000 64 50" "19000 1024 50")

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/fanout.jsonl
: >"$RESULTS"
cargo build --release --quiet -p wshub -p wshub-load

pin_cpus

run_case() { # name protocol command subscribers size messages rate window round
    local name=$1 protocol=$2 command=$3 subscribers=$4 size=$5 messages=$6 rate=$7 window=$8 round=$9
    local window_arg=()
    [[ $window == - ]] || window_arg=(--window "$window")
    # shellcheck disable=SC2086 # the command is meant to be split into words
    start_server "$OUT/$name.log" "${SERVER_PIN[@]}" ${command//\{port\}/0}
    local line
    line=$("${LOAD_PIN[@]}" timeout 300 target/release/wshub-load fanout --url "ws://127.0.0.1:$PORT/" \
        --connections "$subscribers" --publishers 1 --messages "$messages" --size "$size" \
        --protocol "$protocol" --rate "$rate" "${window_arg[@]}" --timeout 120s --server-pid "$SERVER_PID" --json 2>>"$OUT/load.log" | tail -n 1) || true
    stop_pid "$SERVER_PID" 5
    python3 - "$name" "$round" "$rate" "$window" "$line" >>"$RESULTS" <<'PY'
import json, sys
name, rnd, rate, window, line = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
try:
    result = json.loads(line)
except ValueError:
    result = {"error": "no JSON from wshub-load: " + line[:200]}
result.update(server=name, round=rnd, rate=rate, window=None if window == "-" else int(window))
print(json.dumps(result))
PY
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
if "error" in r: print("  %-16s round %d: %s" % (r["server"], r["round"], r["error"])); sys.exit()
l, srv = r["latency_us"], r.get("server_proc") or {}
print("  %-16s %6d subs %3d x %5d B at %7g/s: %10.0f delivered/s  p50 %7d us  p99 %7d us  lost %d  peak RSS %s KiB  user %s ns/delivery" % (
    r["server"], r["subscribers"], r["messages"], r["size"], r["rate"], r["delivered_per_sec"], l["p50"], l["p99"], r["lost"],
    srv.get("peak_rss_kib", "?"), r.get("server_user_ns_per_delivery", "?")))'
}

for round in $(seq "$ROUNDS"); do
    for case in "${CASES[@]}"; do
        read -r subscribers size messages rate window <<<"$case"
        for spec in "${SERVERS[@]}"; do
            name=${spec%%:*} rest=${spec#*:}
            protocol=${rest%%:*} command=${rest#*:}
            run_case "$name" "$protocol" "$command" "$subscribers" "$size" "$messages" "${rate:-1000000}" "${window:--}" "$round"
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
    groups.setdefault((r["server"], r["subscribers"], r["size"], r["messages"], r["rate"], r.get("window")), []).append(r)
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
summary = []
for (server, subs, size, messages, rate, window), rs in sorted(groups.items(), key=lambda kv: (str(kv[0][1:]), kv[0][0])):
    med = lambda f: median(f(r) for r in rs)
    summary.append({"server": server, "subscribers": subs, "size": size, "messages": messages, "rate": rate, "window": window,
                    "rounds": len(rs),
                    "delivered_per_sec": med(lambda r: r["delivered_per_sec"]),
                    "p50_us": med(lambda r: r["latency_us"]["p50"]), "p99_us": med(lambda r: r["latency_us"]["p99"]),
                    "peak_rss_kib": med(lambda r: (r.get("server_proc") or {}).get("peak_rss_kib")),
                    "user_ns_per_delivery": med(lambda r: r.get("server_user_ns_per_delivery")),
                    "lost": sum(r["lost"] for r in rs)})
json.dump(summary, open(sys.argv[2], "w"), indent=1)
show = lambda v, f="%.0f": "?" if v is None else f % v
print("\nmedian over rounds:")
print("%-16s %6s %5s %8s %9s %12s %9s %9s %10s %10s %5s" % ("server", "subs", "size", "messages", "rate/s", "delivered/s",
      "p50 us", "p99 us", "peak KiB", "user ns/d", "lost"))
for s in summary:
    print("%-16s %6d %5d %8d %9g %12.0f %9.0f %9.0f %10s %10s %5d" % (s["server"], s["subscribers"], s["size"], s["messages"],
          s["rate"], s["delivered_per_sec"], s["p50_us"], s["p99_us"], show(s["peak_rss_kib"]), show(s["user_ns_per_delivery"]),
          s["lost"]))
failed = [r for r in rows if "error" in r or r.get("lost", 0) > 0]
sys.exit(1 if failed else 0)
PY
