#!/usr/bin/env bash
# Measures the server's user-space memory per idle WebSocket connection.
#
# Usage: scripts/mem-per-conn.sh [--tls] [--user] [--topics K] [N=19000] [extra wshub args...]
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
# --user gives each connection its own user (`?user=u0x<index>`, open mode); --topics K
# subscribes each to K topics after the upgrade (hub protocol): `global`, shared by all,
# and K-1 of its own (`room.0x<index>.<k>`), each acknowledged before READY. Together they
# are the deployed profile: `--user --topics 3`. Not with --tls.
#
# MEM_SERVER_BIN runs another wshub binary (e.g. one built from an earlier commit, to
# compare before and after in one session); the default is the fresh release build.
#
# N defaults to 19000 because the server, like every process here, may have at most
# 20000 open files: one server process cannot hold many more connections than that.
set -euo pipefail

TLS=0 USER_ARGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --tls) TLS=1 ;;
        --user) USER_ARGS+=(--user) ;;
        --topics) USER_ARGS+=(--topics "${2:?--topics needs a count}"); shift ;;
        *) break ;;
    esac
    shift
done
if ((TLS)) && ((${#USER_ARGS[@]} > 0)); then
    echo "--user and --topics are for ws:// (wshub-load hold), not --tls" >&2
    exit 2
fi
N=${1:-19000}
[[ $# -gt 0 ]] && shift
EXTRA_SERVER_ARGS=("$@")
if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [--tls] [--user] [--topics K] [N=19000] [extra wshub args...]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
. scripts/lib.sh
RATE=5000
WORK=$(mktemp -d)
at_exit 'rm -rf "$WORK"'
pin_cpus

echo "building release binaries..." >&2
timeout 1200 cargo build --release -p wshub -p wshub-load >&2

if ((TLS)); then
    scripts/gencert.sh "$WORK/cert" 2>/dev/null
    EXTRA_SERVER_ARGS+=(--tls-cert "$WORK/cert/cert.pem" --tls-key "$WORK/cert/key.pem")
fi

if [[ -n ${MEM_SERVER_BIN:-} ]]; then
    start_server "$WORK/server.log" "${SERVER_PIN[@]}" "$MEM_SERVER_BIN" --listen 127.0.0.1:0 --log-level info \
        --shards 1 "${EXTRA_SERVER_ARGS[@]}"
else
    start_wshub "$WORK/server.log" --shards 1 "${EXTRA_SERVER_ARGS[@]}"
fi

RSS_BEFORE=$(proc_kib VmRSS "$SERVER_PID")
TCP_MEM_BEFORE=$(tcp_mem_pages)

if ((TLS)); then
    "${LOAD_PIN[@]}" python3 scripts/wss-hold.py 127.0.0.1 "$PORT" "$N" "$WORK/cert/cert.pem" \
        --path "${MEM_URL_PATH:-/}" >"$WORK/load.out" 2>"$WORK/load.err" &
else
    "${LOAD_PIN[@]}" target/release/wshub-load hold --url "ws://127.0.0.1:$PORT${MEM_URL_PATH:-/}" \
        --connections "$N" --connect-rate "$RATE" --duration 20s "${USER_ARGS[@]}" \
        >"$WORK/load.out" 2>"$WORK/load.err" &
fi
LOAD_PID=$!
track_pid "$LOAD_PID"

# The ramp takes N/RATE seconds plus at most a 10 s handshake timeout; allow slack.
READY_TIMEOUT=$((N / RATE + 40))
# The Python wss holder handshakes 100-300 connections a second (2 shared cores), not RATE.
((TLS)) && READY_TIMEOUT=$((N / 50 + 60))
ready() { READY=$(grep -m1 '^READY ' "$WORK/load.out"); }
rc=0
wait_until --while-alive "$LOAD_PID" "$READY_TIMEOUT" ready || rc=$?
if ((rc == 2)); then
    echo "wshub-load exited before READY:" >&2
    cat "$WORK/load.out" "$WORK/load.err" >&2
    exit 1
elif ((rc != 0)); then
    echo "no READY line from wshub-load within ${READY_TIMEOUT}s" >&2
    exit 1
fi
ESTABLISHED=$(sed -E 's/.*established=([0-9]+).*/\1/' <<<"$READY")
FAILED=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$READY")

sleep 2 # let the server settle (allocator, lazily created per-connection state)
RSS_AFTER=$(proc_kib VmRSS "$SERVER_PID")
HWM_AFTER=$(proc_kib VmHWM "$SERVER_PID")
TCP_MEM_AFTER=$(tcp_mem_pages)
PAGE=$(getconf PAGESIZE)

echo "server:                  ${MEM_SERVER_BIN:-target/release/wshub} ${USER_ARGS[*]}"
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

stop_pid "$LOAD_PID" 15
echo "--- wshub-load summary"
grep -v '^READY ' "$WORK/load.out" || true
if [[ -s $WORK/load.err ]]; then
    echo "--- wshub-load stderr"
    cat "$WORK/load.err"
fi
stop_pid "$SERVER_PID" 15
if [[ -s $WORK/server.log ]]; then
    echo "--- wshub log (last 20 lines)"
    tail -n 20 "$WORK/server.log"
fi

if ((ESTABLISHED != N)); then
    echo "FAIL: only $ESTABLISHED of $N connections were established" >&2
    exit 1
fi
