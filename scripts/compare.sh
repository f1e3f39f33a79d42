#!/usr/bin/env bash
# wshub against the peer a Rust user would otherwise write (tokio + tokio-tungstenite, one
# reader and one writer task per connection, a broadcast channel; loadtest/peers/), with
# library-default buffers and tuned to 4 KiB. The same memory and fan-out loads run against
# each on this machine, interleaved over rounds, and the ratios are printed.
#
# Usage: scripts/compare.sh [ROUNDS=3]      (results in target/compare/)
#
# Fan-out is compared in relay mode (`wshub --relay` against the peers, the same work:
# every message to every connection) and also shown for wshub's hub protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=target/compare
mkdir -p "$OUT"

cargo build --release --quiet -p wshub -p wshub-load
cargo build --release --quiet --manifest-path loadtest/peers/Cargo.toml
PEER=loadtest/peers/target/release/tokio-peer
WSHUB="target/release/wshub --listen 127.0.0.1:{port} --shards 1 --log-level info"

scripts/bench-memory.sh --out "$OUT/memory" --rounds "$ROUNDS" \
    --server "wshub=$WSHUB" \
    --server "tokio-default=$PEER --listen 127.0.0.1:{port} --read-buffer default" \
    --server "tokio-4k=$PEER --listen 127.0.0.1:{port} --read-buffer 4k"

scripts/bench-fanout.sh --out "$OUT/fanout" --rounds "$ROUNDS" \
    --server "wshub-relay:raw:$WSHUB --relay" \
    --server "tokio-default:raw:$PEER --listen 127.0.0.1:{port} --read-buffer default" \
    --server "tokio-4k:raw:$PEER --listen 127.0.0.1:{port} --read-buffer 4k" \
    --server "wshub-hub:hub:$WSHUB" || echo "compare: some fan-out run lost messages or failed (see above)"

python3 - "$OUT/memory/memory.csv" "$OUT/fanout/fanout-summary.json" "$OUT/summary.md" <<'PY'
import csv, json, statistics, sys
memory_csv, fanout_json, out = sys.argv[1:]
lines = []
say = lambda text="": (print(text), lines.append(text))

rows = list(csv.DictReader(open(memory_csv)))
top = max(int(r["connections"]) for r in rows)
per_conn = {}
for r in rows:
    if int(r["connections"]) == top:
        per_conn.setdefault(r["server"], []).append(float(r["user_bytes_per_conn"]))
per_conn = {k: statistics.median(v) for k, v in per_conn.items()}
say("## Memory per idle connection at %d connections (user space, median over rounds)" % top)
say()
say("| server | bytes/connection | vs wshub |")
say("| --- | ---: | ---: |")
for server, value in sorted(per_conn.items(), key=lambda kv: kv[1]):
    say("| %s | %.0f | %.1fx |" % (server, value, value / per_conn["wshub"]))

fanout = json.load(open(fanout_json))
say()
say("## Fan-out: one publisher, messages in a burst (median over rounds)")
say()
say("| subscribers | size | server | delivered/s | p50 µs | p99 µs | lost | wshub-relay ÷ this (msgs/s) | this ÷ wshub-relay (p99) |")
say("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
by_case = {}
for r in fanout:
    by_case.setdefault((r["subscribers"], r["size"]), {})[r["server"]] = r
for (subs, size), servers in sorted(by_case.items()):
    ref = servers.get("wshub-relay")
    for name, r in sorted(servers.items()):
        ratio = lambda a, b: ("%.2fx" % (a / b)) if a and b else "n/a"
        say("| %d | %d | %s | %.0f | %.0f | %.0f | %d | %s | %s |" % (
            subs, size, name, r["delivered_per_sec"], r["p50_us"], r["p99_us"], r["lost"],
            ratio(ref["delivered_per_sec"], r["delivered_per_sec"]) if ref else "n/a",
            ratio(r["p99_us"], ref["p99_us"]) if ref else "n/a"))
open(out, "w").write("\n".join(lines) + "\n")
print("\nwritten: " + out)
PY
