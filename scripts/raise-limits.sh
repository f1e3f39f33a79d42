#!/usr/bin/env bash
# Raises the kernel and process limits a host needs to hold around a million WebSocket
# connections (one server) or to open them (load generators). Safe to re-run: it only
# ever raises a value, never lowers one. Run as root for the sysctls; without root it
# still reports what it would change.
#
# Usage: sudo scripts/raise-limits.sh [--dry-run] [--persist]
#   --dry-run  print what would change, change nothing
#   --persist  also write /etc/sysctl.d/90-wshub.conf and /etc/security/limits.d/90-wshub.conf
#              so the settings survive a reboot (services started by systemd need
#              LimitNOFILE= in their unit instead: see scripts/wshub.service.example)
#
# Each setting prints `ok` (already high enough), `changed OLD -> NEW`, or
# `could not apply: REASON` (read-only /proc/sys in a container, a hard limit the process
# cannot exceed, ...). The script exits 0 either way and lists what it could not apply.
set -uo pipefail

DRY=0 PERSIST=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --persist) PERSIST=1 ;;
        *) echo "usage: $0 [--dry-run] [--persist]" >&2; exit 2 ;;
    esac
done

CONNECTIONS=1048576
FAILED=()
PERSISTED=()

# set_sysctl KEY PATH CURRENT NEW: writes NEW unless it equals CURRENT (or --dry-run), and
# records it for --persist; what cannot be written is reported and listed in FAILED.
set_sysctl() {
    local key=$1 path=$2 current=$3 new=$4
    if [ "$current" = "$new" ]; then
        echo "    ok ($current)"
    elif [ $DRY = 1 ]; then
        echo "    would change '$current' -> '$new'"
    elif echo "$new" >"$path" 2>/dev/null; then
        echo "    changed '$current' -> '$new'"
    else
        echo "    could not apply: $path is not writable here (need root, or /proc/sys is read-only)"
        FAILED+=("$key=$new")
    fi
    PERSISTED+=("$key = $new")
}

# raise_sysctl KEY WANTED WHY: raise a single-number sysctl to at least WANTED.
raise_sysctl() {
    local key=$1 wanted=$2 why=$3 path current
    path=/proc/sys/${key//.//}
    printf '%-36s %s\n' "$key" "# $why"
    if [ ! -e "$path" ]; then
        echo "    not present on this kernel (module not loaded?): skipped"
        return
    fi
    current=$(cat "$path")
    if [ "$current" -ge "$wanted" ] 2>/dev/null; then
        set_sysctl "$key" "$path" "$current" "$current"
    else
        set_sysctl "$key" "$path" "$current" "$wanted"
    fi
}

# raise_triple KEY "MIN DEFAULT MAX" WHY: for tcp_mem/rmem/wmem-style triples, raise each
# field that is lower than wanted (every field is only raised, never lowered).
raise_triple() {
    local key=$1 wanted=$2 why=$3 path current new
    path=/proc/sys/${key//.//}
    printf '%-36s %s\n' "$key" "# $why"
    current=$(tr -s '\t ' ' ' <"$path" 2>/dev/null) || { echo "    not present: skipped"; return; }
    new=$(python3 -c 'import sys; a=list(map(int,sys.argv[1].split())); b=list(map(int,sys.argv[2].split())); print(" ".join(str(max(x,y)) for x,y in zip(a,b)))' "$current" "$wanted")
    set_sysctl "$key" "$path" "$current" "$new"
}

raise_sysctl fs.nr_open $((CONNECTIONS + 65536)) \
    "most file descriptors one process may have; bounds every nofile limit below"
raise_sysctl fs.file-max $((CONNECTIONS * 2)) \
    "file descriptors system-wide (server and load generators on one host)"
raise_sysctl net.core.somaxconn 65535 \
    "accept queue per listener; reconnect storms arrive faster than one accept loop"
raise_sysctl net.ipv4.tcp_max_syn_backlog 65535 "half-open connections queued per listener"
raise_sysctl net.core.netdev_max_backlog 65535 "packets queued per CPU before the stack drops them"
raise_sysctl net.netfilter.nf_conntrack_max $((CONNECTIONS * 2)) \
    "connection tracking entries, when conntrack is loaded: a full table drops new connections"
# Load generators open many connections from one host: a wide ephemeral port range (and
# many source addresses: wshub-load binds 127.0.0.x) avoids running out of ports.
printf '%-36s %s\n' net.ipv4.ip_local_port_range "# ephemeral ports for outgoing connections (load generators)"
if read -r low high </proc/sys/net/ipv4/ip_local_port_range; then
    if [ "$low" -le 1024 ] && [ "$high" -ge 65535 ]; then
        echo "    ok ($low $high)"
    elif [ $DRY = 1 ]; then
        echo "    would change '$low $high' -> '1024 65535'"
    elif echo "1024 65535" >/proc/sys/net/ipv4/ip_local_port_range 2>/dev/null; then
        echo "    changed '$low $high' -> '1024 65535'"
    else
        echo "    could not apply: not writable here"
        FAILED+=("net.ipv4.ip_local_port_range=1024 65535")
    fi
    PERSISTED+=("net.ipv4.ip_local_port_range = 1024 65535")
fi
# Mostly idle sockets: their buffers stay small, but a million of them still need the
# stack's total allowance (in 4 KiB pages: 1M sockets x a few pages) to be large enough,
# or the kernel goes into memory pressure and starts shrinking buffers of busy sockets.
raise_triple net.ipv4.tcp_mem "786432 1048576 1572864" "TCP memory for all sockets, in pages: min pressure max"
raise_triple net.ipv4.tcp_rmem "4096 16384 6291456" "per-socket receive buffer: min default max (bytes)"
raise_triple net.ipv4.tcp_wmem "4096 16384 4194304" "per-socket send buffer: min default max (bytes)"

echo "== this shell (ulimit -n)"
soft=$(ulimit -Sn) hard=$(ulimit -Hn)
printf '%-36s %s\n' "nofile (this shell and its children)" "# every connection is a file descriptor"
if [ "$soft" = unlimited ] || [ "$soft" -ge "$CONNECTIONS" ]; then
    echo "    ok ($soft)"
elif [ $DRY = 1 ]; then
    echo "    would raise the soft limit $soft -> $CONNECTIONS (hard limit $hard)"
elif ulimit -Hn "$CONNECTIONS" 2>/dev/null && ulimit -Sn "$CONNECTIONS" 2>/dev/null; then
    echo "    changed $soft -> $CONNECTIONS (applies to this shell only: source this script, or use --persist)"
else
    ulimit -Sn "$hard" 2>/dev/null && echo "    raised the soft limit to the hard limit $hard"
    echo "    could not apply: the hard limit is $hard and this process cannot raise it"
    echo "    (a container or an outer limit caps it; one wshub process then holds about $((hard - 100)) connections)"
    FAILED+=("nofile=$CONNECTIONS (hard limit $hard)")
fi

if [ $PERSIST = 1 ]; then
    echo "== persisting"
    if [ $DRY = 1 ]; then
        echo "    would write /etc/sysctl.d/90-wshub.conf and /etc/security/limits.d/90-wshub.conf"
    else
        { echo "# written by wshub scripts/raise-limits.sh"; printf '%s\n' "${PERSISTED[@]}"; } \
            >/etc/sysctl.d/90-wshub.conf 2>/dev/null && echo "    wrote /etc/sysctl.d/90-wshub.conf" ||
            { echo "    could not write /etc/sysctl.d/90-wshub.conf"; FAILED+=("persist sysctl"); }
        printf '# written by wshub scripts/raise-limits.sh\n*    soft nofile %d\n*    hard nofile %d\n' \
            "$CONNECTIONS" "$CONNECTIONS" >/etc/security/limits.d/90-wshub.conf 2>/dev/null &&
            echo "    wrote /etc/security/limits.d/90-wshub.conf (new login sessions)" ||
            { echo "    could not write /etc/security/limits.d/90-wshub.conf"; FAILED+=("persist limits"); }
    fi
fi

echo
if [ $DRY = 1 ]; then
    echo "raise-limits: dry run, nothing changed"
elif [ ${#FAILED[@]} -eq 0 ]; then
    echo "raise-limits: everything is at or above what a million connections need"
else
    echo "raise-limits: could not apply ${#FAILED[@]} setting(s):"
    printf '  - %s\n' "${FAILED[@]}"
fi
exit 0
