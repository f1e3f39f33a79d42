#!/usr/bin/env bash
# Measures the server's user-space memory per idle WebSocket connection.
#
# Usage: scripts/mem-per-conn.sh [--tls] [N=19000] [extra wshub args...]
#
# Starts one wshub running the hub protocol (one shard, pinned to CPU 0 when taskset
# exists; pass --echo to measure the echo handler instead), opens N idle
# connections with `wshub-load hold` (pinned to CPU 1), and compares the server's RSS
# before and after. Every wait is bounded; the load and the server are stopped on any
# exit. Exits 0 only if all N connections were established.
#
# --tls: serve wss:// with a fresh self-signed certificate (scripts/gencert.sh) and
# hold the connections with scripts/wss-hold.py (python3, standard library) instead,
# each past its TLS handshake, upgrade and welcome.
#
# MEM_URL_PATH sets the path and query the clients connect to (default `/`), e.g.
# MEM_URL_PATH='/?token=t1' with `--auth token --auth-token t1=ann` to measure
# authenticated connections.
#
# N defaults to 19000 because the server, like every process here, may have at most
# 20000 open files: one server process cannot hold many more connections than that.
set -euo pipefail

TLS=0
if [[ ${1:-} == --tls ]]; then
    TLS=1
    shift
fi
N=${1:-19000}
[[ $# -gt 0 ]] && shift
EXTRA_SERVER_ARGS=("$@")
if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [--tls] [N=19000] [extra wshub args...]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
RATE=5000
SERVER_PID=""
LOAD_PID=""
WORK=$(mktemp -d)

# True while the process exists and is not a zombie waiting to be reaped
# (kill -0 alone succeeds on zombies).
alive() {
    local state
    state=$(sed -E 's/.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z ]]
}

# Sends SIGTERM, gives the process $2 seconds to exit, then SIGKILL.
stop_process() {
    local pid=$1 grace=$2 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "pid $pid did not stop within ${grace}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop_process "$LOAD_PID" 10
    stop_process "$SERVER_PID" 10
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nobody listens on, below the ephemeral range so the load's own outgoing
# connections can never have taken it.
pick_port() {
    local port listening
    # /proc/net/tcp lists "addr:PORT" in hex; state 0A is LISTEN.
    listening=$(awk 'FNR > 1 && $4 == "0A" { n = split($2, a, ":"); print a[n] }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null | while read -r hex; do echo $((16#$hex)); done)
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 12000))
        grep -qx "$port" <<<"$listening" || { echo "$port"; return 0; }
    done
    echo "no free port found" >&2
    return 1
}

kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$2/status"; }
tcp_mem_pages() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }

SERVER_PIN=()
LOAD_PIN=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    SERVER_PIN=(taskset -c 0)
    LOAD_PIN=(taskset -c 1)
fi

echo "building release binaries..." >&2
timeout 1200 cargo build --release -p wshub -p wshub-load >&2

if ((TLS)); then
    scripts/gencert.sh "$WORK/cert" 2>/dev/null
    EXTRA_SERVER_ARGS+=(--tls-cert "$WORK/cert/cert.pem" --tls-key "$WORK/cert/key.pem")
fi

PORT=$(pick_port)
"${SERVER_PIN[@]}" target/release/wshub --listen "127.0.0.1:$PORT" --shards 1 \
    --log-level warn "${EXTRA_SERVER_ARGS[@]}" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

# Wait (at most 15 s) until the port accepts a TCP connection.
for ((i = 0; ; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    if ! alive "$SERVER_PID"; then
        echo "wshub exited during startup:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    if ((i >= 150)); then
        echo "wshub did not accept connections on port $PORT within 15 s" >&2
        exit 1
    fi
    sleep 0.1
done
sleep 1 # let the probe connection above be closed and forgotten

RSS_BEFORE=$(kib VmRSS "$SERVER_PID")
TCP_MEM_BEFORE=$(tcp_mem_pages)

if ((TLS)); then
    "${LOAD_PIN[@]}" python3 scripts/wss-hold.py 127.0.0.1 "$PORT" "$N" "$WORK/cert/cert.pem" \
        --path "${MEM_URL_PATH:-/}" >"$WORK/load.out" 2>"$WORK/load.err" &
else
    "${LOAD_PIN[@]}" target/release/wshub-load hold --url "ws://127.0.0.1:$PORT${MEM_URL_PATH:-/}" \
        --connections "$N" --connect-rate "$RATE" --duration 20s >"$WORK/load.out" 2>"$WORK/load.err" &
fi
LOAD_PID=$!

# The ramp takes N/RATE seconds plus at most a 10 s handshake timeout; allow slack.
READY_TIMEOUT=$((N / RATE + 40))
for ((i = 0; ; i++)); do
    READY=$(grep -m1 '^READY ' "$WORK/load.out" || true)
    [[ -n $READY ]] && break
    if ! alive "$LOAD_PID"; then
        echo "wshub-load exited before READY:" >&2
        cat "$WORK/load.out" "$WORK/load.err" >&2
        exit 1
    fi
    if ((i >= READY_TIMEOUT * 10)); then
        echo "no READY line from wshub-load within ${READY_TIMEOUT}s" >&2
        exit 1
    fi
    sleep 0.1
done
ESTABLISHED=$(sed -E 's/.*established=([0-9]+).*/\1/' <<<"$READY")
FAILED=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$READY")

sleep 2 # let the server settle (allocator, lazily created per-connection state)
RSS_AFTER=$(kib VmRSS "$SERVER_PID")
HWM_AFTER=$(kib VmHWM "$SERVER_PID")
TCP_MEM_AFTER=$(tcp_mem_pages)
PAGE=$(getconf PAGESIZE)

echo "connections requested:   $N"
echo "connections established: $ESTABLISHED (failed: $FAILED)"
echo "server RSS before:       $RSS_BEFORE KiB"
echo "server RSS after:        $RSS_AFTER KiB (peak VmHWM $HWM_AFTER KiB)"
# sockstat's "mem" counts pages of queued socket buffers, client and server ends
# together; an idle connection with empty queues adds (next to) nothing to it.
echo "kernel TCP buffer memory: $TCP_MEM_BEFORE -> $TCP_MEM_AFTER pages of $PAGE bytes (/proc/net/sockstat, both ends)"
if ((ESTABLISHED > 0)); then
    echo "user-space bytes per connection: $(((RSS_AFTER - RSS_BEFORE) * 1024 / ESTABLISHED))"
    echo "kernel TCP buffer bytes per connection (both ends): $(((TCP_MEM_AFTER - TCP_MEM_BEFORE) * PAGE / ESTABLISHED))"
fi

stop_process "$LOAD_PID" 15
LOAD_PID=""
echo "--- wshub-load summary"
grep -v '^READY ' "$WORK/load.out" || true
if [[ -s $WORK/load.err ]]; then
    echo "--- wshub-load stderr"
    cat "$WORK/load.err"
fi
stop_process "$SERVER_PID" 15
SERVER_PID=""
if [[ -s $WORK/server.log ]]; then
    echo "--- wshub log (last 20 lines)"
    tail -n 20 "$WORK/server.log"
fi

if ((ESTABLISHED != N)); then
    echo "FAIL: only $ESTABLISHED of $N connections were established" >&2
    exit 1
fi
