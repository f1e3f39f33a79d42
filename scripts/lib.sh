# shellcheck shell=bash
# Helpers for the scripts in scripts/. Source it from the repository root, after `set -euo
# pipefail`:   cd "$(dirname "$0")/.." && . scripts/lib.sh
#
# It installs an EXIT trap that stops every process started with start_server / start_wshub
# or registered with track_pid (by PID, never by name), then runs what at_exit registered.
# Scripts add their own clean-up with at_exit instead of a trap of their own.
#
#   start_wshub LOG [ARGS...]    target/release/wshub on 127.0.0.1:0, then as start_server
#   start_server LOG COMMAND...  runs COMMAND (stdout and stderr to LOG), waits (bounded) for
#                                its "listening on [ws[s]://]127.0.0.1:PORT" line; sets
#                                SERVER_PID and PORT
#   stop_pid PID [GRACE=10]      SIGTERM, up to GRACE seconds, then SIGKILL; reaps it
#   track_pid PID                stop PID on exit too (a load generator started with &)
#   wait_until [--while-alive PID] SECONDS COMMAND...
#                                polls COMMAND every 0.1 s until it succeeds: 0; 1 after
#                                SECONDS; 2 as soon as PID is gone
#   alive PID                    the process exists and is not a zombie
#   proc_kib FIELD PID           a /proc/PID/status figure in KiB (VmRSS, VmHWM)
#   tcp_mem_pages                kernel TCP socket buffer memory, in pages (/proc/net/sockstat)
#   pin_cpus                     SERVER_PIN=(taskset -c 0) LOAD_PIN=(taskset -c 1), when
#                                taskset exists and there are 2 CPUs or more; else empty
#   as_root COMMAND...           COMMAND as root (directly, or through sudo)
#   need_apt_package CMD PKG     installs Debian package PKG unless CMD is on the PATH
#   free_port                    a TCP port on 127.0.0.1 that the OS says is free now
#   start_redis DIR              a private redis-server (Debian's; installed when missing) on
#                                a free port, persistence off, its files in DIR; waits until
#                                it answers PING; sets REDIS_PID and REDIS_PORT
#   cpu_ticks PID                utime + stime of PID, in clock ticks (/proc/PID/stat)

# Bound for a server's "listening" line; it normally comes within milliseconds.
START_TIMEOUT=${START_TIMEOUT:-15}
SERVER_PID="" PORT="" REDIS_PID="" REDIS_PORT=""
SERVER_PIN=() LOAD_PIN=()
_LIB_PIDS=() _LIB_AT_EXIT=()

alive() {
    local state
    state=$(sed -E 's/.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z ]]
}

track_pid() { _LIB_PIDS+=("$1"); }

at_exit() { _LIB_AT_EXIT+=("$1"); }

stop_pid() {
    local pid=$1 grace=${2:-10} i other kept=()
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
    # Reaped: the PID may now be reused by anyone, so it must not be signalled again.
    for other in "${_LIB_PIDS[@]}"; do [[ $other == "$pid" ]] || kept+=("$other"); done
    _LIB_PIDS=("${kept[@]}")
}

_lib_exit() {
    local i
    for ((i = ${#_LIB_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${_LIB_PIDS[i]}"; done
    for ((i = ${#_LIB_AT_EXIT[@]} - 1; i >= 0; i--)); do eval "${_LIB_AT_EXIT[i]}"; done
}
trap _lib_exit EXIT
trap 'exit 130' INT TERM

wait_until() {
    local watch="" deadline
    if [[ $1 == --while-alive ]]; then watch=$2; shift 2; fi
    deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if [[ -n $watch ]] && ! alive "$watch"; then return 2; fi
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

_listening_port() {
    PORT=$(grep -m1 -oE 'listening on (wss?://)?127\.0\.0\.1:[0-9]+' "$1" | sed 's/.*://') && [[ -n $PORT ]]
}

start_server() {
    local log=$1 rc=0
    shift
    # Emptied here, not only by the redirect below: that happens in the child, after the
    # fork, and until then the wait below could read a previous run's port from LOG.
    : >"$log"
    "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    wait_until --while-alive "$SERVER_PID" "$START_TIMEOUT" _listening_port "$log" || rc=$?
    if ((rc != 0)); then
        if ((rc == 2)); then echo "server exited during startup: $*" >&2
        else echo "no \"listening on 127.0.0.1:PORT\" line within ${START_TIMEOUT}s from: $*" >&2; fi
        cat "$log" >&2
        exit 1
    fi
}

start_wshub() {
    local log=$1
    shift
    # Info level: the "listening" line is logged at info.
    start_server "$log" "${SERVER_PIN[@]}" target/release/wshub --listen 127.0.0.1:0 --log-level info "$@"
}

proc_kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$2/status"; }

tcp_mem_pages() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }

pin_cpus() {
    if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
        SERVER_PIN=(taskset -c 0)
        LOAD_PIN=(taskset -c 1)
    fi
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

need_apt_package() {
    command -v "$1" >/dev/null && return 0
    echo "== installing $2 (Debian package)" >&2
    as_root apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >&2
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_redis() {
    local dir=$1 rc=0
    need_apt_package redis-server redis-server
    mkdir -p "$dir"
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
    REDIS_PID=$!
    track_pid "$REDIS_PID"
    _redis_up() { [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
    wait_until --while-alive "$REDIS_PID" "$START_TIMEOUT" _redis_up || rc=$?
    if ((rc != 0)); then
        echo "redis-server on port $REDIS_PORT did not answer PING (rc $rc)" >&2
        cat "$dir/redis.log" >&2 || true
        exit 1
    fi
}

cpu_ticks() { sed -E 's/.*\) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
