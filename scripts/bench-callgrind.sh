#!/usr/bin/env bash
# User-space instructions per delivery, counted by callgrind: exact and repeatable on a noisy
# machine, where CPU-time figures are not. Each server runs under `valgrind --tool=callgrind`
# while `wshub-load fanout` sends paced broadcasts (2/s, 64 B) to N receivers, twice: with
# FEW and with MANY messages. The difference in the server's instructions, divided by the
# extra deliveries, is its cost per delivery, with connection setup and shutdown cancelled
# out. Callgrind counts instructions, not cache misses: the figure is the code's work, not
# the memory latency it meets at 19,000 connections.
#
# Usage: scripts/bench-callgrind.sh [--connections N=2000] [--server NAME=COMMAND]...
#   COMMAND has {port} where the port goes (it gets 0) and prints "listening on ...PORT".
#   Default: wshub (relay mode, one shard) and, when built, loadtest/peers' floor-peer.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

N=2000
FEW=10
MANY=30
SERVERS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --connections) N=$2; shift 2 ;;
        --server) SERVERS+=("$2"); shift 2 ;;
        *) echo "usage: $0 [--connections N] [--server NAME=COMMAND]..." >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "$0: valgrind is needed (Debian package valgrind)" >&2; exit 1; }
cargo build --release --quiet -p wshub -p wshub-load
if [[ ${#SERVERS[@]} -eq 0 ]]; then
    SERVERS=("wshub=target/release/wshub --listen 127.0.0.1:{port} --shards 1 --relay --log-level info")
    FLOOR=loadtest/peers/target/release/floor-peer
    [[ -x $FLOOR ]] && SERVERS+=("floor=$FLOOR --listen 127.0.0.1:{port}")
fi
WORK=$(mktemp -d)
at_exit "rm -rf '$WORK'"
# valgrind starts a program about 50x slower.
START_TIMEOUT=60

# Instructions the server executed while `messages` paced broadcasts went to N receivers.
instructions() { # name command messages
    local name=$1 command=$2 messages=$3 out="$WORK/$1-$3.callgrind"
    # shellcheck disable=SC2086 # the command is meant to be split into words
    start_server "$WORK/$name.log" valgrind --tool=callgrind --callgrind-out-file="$out" ${command//\{port\}/0}
    target/release/wshub-load fanout --url "ws://127.0.0.1:$PORT/" --connections "$N" --publishers 1 \
        --messages "$messages" --size 64 --protocol raw --rate 2 --timeout 300s --json >"$WORK/load.json" 2>>"$WORK/load.log" ||
        { echo "$name: the load run failed" >&2; tail -5 "$WORK/load.log" >&2; exit 1; }
    stop_pid "$SERVER_PID" 60
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '%-10s %14s %14s %12s\n' server "Ir ($FEW msgs)" "Ir ($MANY msgs)" "Ir/delivery"
for spec in "${SERVERS[@]}"; do
    name=${spec%%=*} command=${spec#*=}
    few=$(instructions "$name" "$command" "$FEW")
    many=$(instructions "$name" "$command" "$MANY")
    # Every message reaches all N receivers (the publisher is one of them in relay mode).
    printf '%-10s %14s %14s %12.0f\n' "$name" "$few" "$many" "$(echo "($many - $few) / (($MANY - $FEW) * $N)" | bc -l)"
done
