#!/usr/bin/env bash
# wshub side by side with a floor and with the peer a Rust user would otherwise write, on the
# same loads, interleaved in one run, with the ratios:
#
#   floor          loadtest/peers' floor-peer: one mio thread, raw sockets, the upgrade answered
#                  by hand, each message framed once and the same bytes written to every socket.
#                  What is left when the server's own work is taken away.
#   tokio-4k       loadtest/peers' tokio-peer: tokio + tokio-tungstenite the idiomatic way (a
#                  reader and a writer task per connection, a broadcast channel), 4 KiB buffers.
#   tokio-default  the same with tungstenite's default buffers (COMPARE_TOKIO_DEFAULT=0 skips it).
#   wshub          `wshub --shards 1` (memory) and `wshub --relay --shards 1` (fan-out: every
#                  message to every connection, the same work as the peers).
#   wshub-hub      fan-out in wshub's hub protocol (subscribe, publish; COMPARE_HUB=0 skips it).
#   wshub-before   COMPARE_BASELINE=PATH: another wshub binary (an earlier build) on the same
#                  loads, relay mode, for before/after figures measured in the same run.
#
# Usage: scripts/compare.sh [ROUNDS=3] [CONNECTIONS=19000]     (results in target/compare/)
#
# Loads, at CONNECTIONS receivers:
#   memory     idle connections held by `wshub-load hold`: user-space bytes per connection
#              (scripts/bench-memory.sh);
#   burst      50 x 1 KiB, and 200 x 64 B, sent as fast as a window of COMPARE_WINDOW (default
#              8) messages in flight
#              allows (hub: publishes not yet acknowledged; raw: messages whose copy has not
#              come back to the publisher): delivered/s, p99 latency, and the server's peak
#              RSS while publishing (scripts/bench-fanout.sh);
#   paced      COMPARE_PACED_MESSAGES (default 60) x 64 B at 2/s: the server's user-space CPU
#              time per delivery. /proc/PID/stat counts CPU in 10 ms ticks, so the paced run
#              is long enough for about a million deliveries.
# Each server is started fresh for every measurement, pinned to CPU 0 (the load to CPU 1);
# with ROUNDS > 1 the servers alternate within each round and the median is kept. The server's
# peak RSS and CPU come from /proc/PID, read by wshub-load (`fanout --server-pid`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
N=${2:-19000}
PACED=${COMPARE_PACED_MESSAGES:-60}
WINDOW=${COMPARE_WINDOW:-8}
OUT=target/compare
rm -rf "$OUT"
mkdir -p "$OUT"

cargo build --release --quiet -p wshub -p wshub-load
cargo build --release --quiet --manifest-path loadtest/peers/Cargo.toml
PEERS=loadtest/peers/target/release
WSHUB="target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info"
TOKIO="$PEERS/tokio-peer --listen 127.0.0.1:{port}"
FLOOR="$PEERS/floor-peer --listen 127.0.0.1:{port}"

MEMORY=("wshub=$WSHUB" "floor=$FLOOR" "tokio-4k=$TOKIO --read-buffer 4k")
FANOUT=("wshub:raw:$WSHUB --relay" "floor:raw:$FLOOR" "tokio-4k:raw:$TOKIO --read-buffer 4k")
if [[ ${COMPARE_TOKIO_DEFAULT:-1} != 0 ]]; then
    MEMORY+=("tokio-default=$TOKIO --read-buffer default")
    FANOUT+=("tokio-default:raw:$TOKIO --read-buffer default")
fi
if [[ ${COMPARE_HUB:-1} != 0 ]]; then FANOUT+=("wshub-hub:hub:$WSHUB"); fi
if [[ -n ${COMPARE_BASELINE:-} ]]; then
    BEFORE="$COMPARE_BASELINE --listen 127.0.0.1:{port} --shards 1 --log-level info"
    MEMORY+=("wshub-before=$BEFORE")
    FANOUT+=("wshub-before:raw:$BEFORE --relay")
fi

status=0
server_args=()
for s in "${MEMORY[@]}"; do server_args+=(--server "$s"); done
scripts/bench-memory.sh --out "$OUT/memory" --rounds "$ROUNDS" --steps "$N" "${server_args[@]}" ||
    { status=1; echo "compare: some memory step did not open all its connections (see above)"; }

server_args=()
for s in "${FANOUT[@]}"; do server_args+=(--server "$s"); done
scripts/bench-fanout.sh --out "$OUT/fanout" --rounds "$ROUNDS" "${server_args[@]}" \
    --case "$N 1024 50 1000000 $WINDOW" --case "$N 64 200 1000000 $WINDOW" --case "$N 64 $PACED 2" ||
    { status=1; echo "compare: some fan-out run lost messages or failed (see above)"; }

python3 - "$OUT/memory/memory.csv" "$OUT/fanout/fanout-summary.json" "$OUT/summary.md" "$N" "$ROUNDS" <<'PY'
import csv, json, sys
memory_csv, fanout_json, out, n, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
order = ["wshub", "wshub-hub", "wshub-before", "floor", "tokio-4k", "tokio-default"]
memory = {r["server"]: float(r["user_bytes_per_conn"]) for r in csv.DictReader(open(memory_csv))}
fanout = json.load(open(fanout_json))
def case(size, messages, rate):
    return {r["server"]: r for r in fanout if (r["size"], r["messages"], r["rate"]) == (size, messages, rate)}
burst_1k, burst_64, paced = case(1024, 50, 1000000), case(64, 200, 1000000), [r for r in fanout if r["rate"] == 2]
paced = {r["server"]: r for r in paced}
servers = [s for s in order if s in memory or any(s in c for c in (burst_1k, burst_64, paced))]

num = lambda v, unit="": "n/a" if v is None else ("{:,.0f}".format(v) + unit)
mb = lambda kib: None if kib is None else kib * 1024 / 1e6
ms = lambda us: None if us is None else us / 1000
get = lambda table, key, f=lambda v: v: {s: f(table[s][key]) if s in table and table[s][key] is not None else None for s in servers}
rows = [
    ("idle memory per connection (user space, B)", {s: memory.get(s) for s in servers}, "B"),  # wshub-hub: n/a
    ("burst 50 x 1 KiB: server peak RSS (MB)", get(burst_1k, "peak_rss_kib", mb), "MB"),
    ("burst 50 x 1 KiB: deliveries/s", get(burst_1k, "delivered_per_sec"), ""),
    ("burst 200 x 64 B: deliveries/s", get(burst_64, "delivered_per_sec"), ""),
    ("burst 200 x 64 B: p99 latency (ms)", get(burst_64, "p99_us", ms), "ms"),
    ("paced 2/s x 64 B: user-space CPU per delivery (ns)", get(paced, "user_ns_per_delivery"), "ns"),
    ("paced 2/s x 64 B: server peak RSS (MB)", get(paced, "peak_rss_kib", mb), "MB"),
    ("paced 2/s x 64 B: p99 latency (ms)", get(paced, "p99_us", ms), "ms"),
]
lines = []
say = lambda text="": (print(text), lines.append(text))
say("## wshub, floor and tokio-tungstenite side by side: %s receivers, median of %d round(s)" % (format(n, ","), rounds))
say()
pairs = (("wshub", "floor"), ("wshub", "tokio-4k"), ("wshub-hub", "floor"), ("wshub", "wshub-before"))
ratio_cols = [(a, b) for a, b in pairs if a in servers and b in servers]
say("| case | " + " | ".join(servers) + " | " + " | ".join("%s ÷ %s" % c for c in ratio_cols) + " |")
say("| --- |" + " ---: |" * (len(servers) + len(ratio_cols)))
for label, values, unit in rows:
    fmt = (lambda v: "n/a" if v is None else "%.1f" % v) if unit in ("MB", "ms") else num
    ratios = []
    for x, y in ratio_cols:
        a, b = values.get(x), values.get(y)
        ratios.append("%.2fx" % (a / b) if a and b else "n/a")
    say("| %s | %s | %s |" % (label, " | ".join(fmt(values.get(s)) for s in servers), " | ".join(ratios)))
lost = sum(r["lost"] for r in fanout)
say()
say("Deliveries lost over all fan-out runs: %d. Peak RSS is VmHWM, reset when publishing starts (the" % lost)
say("connections are already held). CPU per delivery is the server's utime over the run ÷ deliveries")
say("(/proc/PID/stat, 10 ms ticks). wshub relays (`--relay`, the peers' work); wshub-hub is the hub protocol.")
open(out, "w").write("\n".join(lines) + "\n")
print("\nwritten: " + out)
PY
exit $status
