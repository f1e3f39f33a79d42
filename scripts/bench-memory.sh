#!/usr/bin/env bash
# Memory against connections: for each server, RSS with 0 connections and then with each
# step's number of idle WebSocket connections (held by `wshub-load hold`), the user-space
# bytes per connection, the kernel's socket memory, and a plot.
#
# Usage: scripts/bench-memory.sh [--server NAME=COMMAND]... [--steps 1000,5000,10000,19000]
#                                [--rounds R] [--out DIR]
#   COMMAND has {port} where the port goes: it gets 0, and the server must print
#   "listening on [ws://]127.0.0.1:PORT" (wshub at --log-level info, loadtest/peers' tokio-peer
#   do). Default server:
#   wshub=target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info
#
# Each step is a fresh set of connections on a freshly started server, so steps do not
# inherit each other's allocator state. With --rounds R servers are measured interleaved
# (round 1 of every server, then round 2, ...) and the median per step is reported. The
# server runs on CPU 0 and the load on CPU 1 when taskset exists (and 2+ CPUs). Kernel figures count
# both ends of each loopback connection.
# Writes DIR/memory.csv, DIR/memory.json and DIR/memory.svg (default DIR:
# target/bench-memory). Exits non-zero if a step could not open all its connections.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SERVERS=() STEPS=1000,5000,10000,19000 ROUNDS=1 OUT=target/bench-memory
while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVERS+=("$2"); shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--server NAME=COMMAND]... [--steps LIST] [--rounds R] [--out DIR]" >&2; exit 2 ;;
    esac
done
[ ${#SERVERS[@]} -gt 0 ] || SERVERS=("wshub=target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/memory-raw.csv
echo "server,round,connections,established,rss_kib,rss0_kib,sockstat_pages0,sockstat_pages,slab_bytes0,slab_bytes" >"$RAW"
cargo build --release --quiet -p wshub -p wshub-load

pin_cpus
# Bytes in the slab caches that TCP sockets and epoll registrations live in, if readable.
slab_bytes() {
    awk '$1 ~ /^(TCP|TCPv6|tw_sock_TCP|request_sock_TCP|sock_inode_cache|eventpoll_epi|eventpoll_pwq)$/ { total += $2 * $4 }
         END { print total + 0 }' /proc/slabinfo 2>/dev/null || echo 0
}

measure() { # name command connections round
    local name=$1 command=$2 connections=$3 round=$4
    # shellcheck disable=SC2086 # the command is meant to be split into words
    start_server "$OUT/$name.log" "${SERVER_PIN[@]}" ${command//\{port\}/0}
    local rss0 pages0 slab0
    rss0=$(proc_kib VmRSS "$SERVER_PID") pages0=$(tcp_mem_pages) slab0=$(slab_bytes)
    local fifo=$OUT/hold.out
    : >"$fifo" # now, not in the child: the wait below must not find the previous step's READY
    "${LOAD_PIN[@]}" target/release/wshub-load hold --url "ws://127.0.0.1:$PORT/" --connections "$connections" \
        --duration 120s >"$fifo" 2>>"$OUT/load.log" &
    local load=$!
    track_pid "$load"
    local established=0
    if wait_until --while-alive "$load" 120 grep -q '^READY' "$fifo"; then
        established=$(sed -n 's/^READY established=\([0-9]*\).*/\1/p' "$fifo")
    fi
    sleep 3
    local rss pages slab
    rss=$(proc_kib VmRSS "$SERVER_PID") pages=$(tcp_mem_pages) slab=$(slab_bytes)
    stop_pid "$load"
    stop_pid "$SERVER_PID"
    echo "$name,$round,$connections,$established,$rss,$rss0,$pages0,$pages,$slab0,$slab" >>"$RAW"
    printf '  %-14s round %d: %6d connections (%d open): RSS %7d KiB (idle %d KiB), %5.0f B/conn user space\n' \
        "$name" "$round" "$connections" "$established" "$rss" "$rss0" \
        "$(python3 -c "print(($rss - $rss0) * 1024 / max($established, 1))")"
}

IFS=, read -r -a STEP_LIST <<<"$STEPS"
for round in $(seq "$ROUNDS"); do
    for spec in "${SERVERS[@]}"; do
        name=${spec%%=*} command=${spec#*=}
        for connections in "${STEP_LIST[@]}"; do
            measure "$name" "$command" "$connections" "$round"
        done
    done
done

status=0
python3 - "$RAW" "$OUT" <<'PY' || status=$?
import csv, json, statistics, sys
raw, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(raw)))
groups = {}
for r in rows:
    groups.setdefault((r["server"], int(r["connections"])), []).append(r)
summary, failed = [], False
for (server, connections), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    med = lambda f: statistics.median(f(r) for r in rs)
    established = min(int(r["established"]) for r in rs)
    failed |= established < connections
    per = lambda delta: delta / max(established, 1)
    summary.append({
        "server": server, "connections": connections, "established": established, "rounds": len(rs),
        "rss_kib": med(lambda r: int(r["rss_kib"])),
        "user_bytes_per_conn": round(med(lambda r: per((int(r["rss_kib"]) - int(r["rss0_kib"])) * 1024))),
        "kernel_sockstat_bytes_per_conn": round(med(lambda r: per((int(r["sockstat_pages"]) - int(r["sockstat_pages0"])) * 4096))),
        "kernel_slab_bytes_per_conn": round(med(lambda r: per(int(r["slab_bytes"]) - int(r["slab_bytes0"])))),
    })
fields = list(summary[0].keys())
with open(out + "/memory.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(summary)
json.dump(summary, open(out + "/memory.json", "w"), indent=1)
print("\n%-14s %8s %10s %16s %18s %16s" % ("server", "conns", "RSS KiB", "user B/conn", "kernel sockstat B", "kernel slab B"))
for s in summary:
    print("%-14s %8d %10d %16d %18d %16d" % (s["server"], s["connections"], s["rss_kib"], s["user_bytes_per_conn"],
          s["kernel_sockstat_bytes_per_conn"], s["kernel_slab_bytes_per_conn"]))

print("\nwritten: %s/memory.csv, memory.json, memory.svg" % out)
sys.exit(1 if failed else 0)
PY
python3 scripts/plot-memory.py "$OUT/memory.json" "$OUT/memory.svg"
exit $status
