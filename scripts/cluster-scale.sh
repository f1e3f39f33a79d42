#!/usr/bin/env bash
# The cluster at scale on one machine: INSTANCES wshub instances (--shards 1 each) on one
# private Redis, PER_INSTANCE connections each (every instance under the 20,000 open-file cap),
# and one broadcast per second, from a publisher on the first instance, to every connection of
# the cluster, for SECONDS seconds.
#
# Usage: scripts/cluster-scale.sh [INSTANCES=5] [PER_INSTANCE=19000] [SECONDS=60]
#        e.g. scripts/cluster-scale.sh 5 2000 10 for a quick trial  (results in target/cluster-scale/)
#
# The connections are held by `wshub-load fanout --broadcast` with one --url per instance:
# spread round-robin over the instances and over worker processes (each under the cap) and
# source addresses (127.0.0.2 upwards, 5,000 connections each), each subscribed to a topic
# first so that it is registered before the first broadcast. The broadcasts go from the first
# instance through Redis (`P:all`) to the others. Reported: delivered against expected
# (INSTANCES x PER_INSTANCE x SECONDS), p50/p99/max latency (broadcast sent to received, on this
# machine's monotonic clock), each instance's RSS (sampled every 2 s: before the load, the
# largest while the connections are held, and VmHWM; the difference over PER_INSTANCE is the
# bytes per connection, subscribed to one topic), Redis's CPU over the broadcasting (and its RSS), each
# instance's counters from /stats (Redis refused/dropped, inbox refusals, evictions).
#
# Bounded: the load run has a timeout (ramp + SECONDS + 90 s); every process started here
# (instances, Redis, the load and its workers, the sampler) is stopped on exit, by PID.
# The CPU time each part used is reported too: on a shared machine the latency is the figure
# that suffers, and these say how much CPU the run got against how much it needed.
# LOAD_CONNECT_RATE (default 5000/s) and LOAD_PROCESSES (default: as few as the cap allows)
# tune the load tool. Nothing is pinned: other work on the machine shares the CPUs, and the
# summary prints the load average to say how much.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
INSTANCES=${1:-5}
PER=${2:-19000}
SECS=${3:-60}
RATE=${LOAD_CONNECT_RATE:-5000}
for v in "$INSTANCES" "$PER" "$SECS"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [INSTANCES=5] [PER_INSTANCE=19000] [SECONDS=60]" >&2; exit 2; }
done
# Every connection is a file descriptor, in the instance and in the load tool.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if ((PER + 200 > NOFILE)); then
    echo "$PER connections per instance do not fit under the open-file limit ($NOFILE) with room to spare" >&2
    exit 2
fi
TOTAL=$((INSTANCES * PER))
OUT=target/cluster-scale
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
at_exit 'rm -rf "$WORK"'

cargo build --release --quiet -p wshub -p wshub-load
start_redis "$WORK/redis"
PIDS=() PORTS=() URLS=()
for ((i = 0; i < INSTANCES; i++)); do
    start_wshub "$OUT/wshub-$i.log" --shards 1 --redis "redis://127.0.0.1:$REDIS_PORT" --cluster-prefix scale
    PIDS+=("$SERVER_PID") PORTS+=("$PORT") URLS+=(--url "ws://127.0.0.1:$PORT/")
done
echo "redis-server pid $REDIS_PID port $REDIS_PORT; wshub pids ${PIDS[*]}; nofile $NOFILE; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
sleep 1.5 # every instance has seen the others' heartbeat

# Every 2 s: seconds, Redis CPU (ticks) and RSS (KiB), then each instance's RSS (KiB).
sample() {
    local start=$SECONDS pid line
    while true; do
        line="$((SECONDS - start)) $(cpu_ticks "$REDIS_PID") $(proc_kib VmRSS "$REDIS_PID")"
        for pid in "${PIDS[@]}"; do line+=" $(proc_kib VmRSS "$pid")"; done
        echo "$line"
        sleep 2
    done
}
sample >"$OUT/samples.txt" 2>/dev/null &
track_pid $!

LIMIT=$((TOTAL / RATE + SECS + 90))
PROCESS_ARGS=()
[[ -n ${LOAD_PROCESSES:-} ]] && PROCESS_ARGS=(--processes "$LOAD_PROCESSES")
# CPU over the load run: Redis, each instance (/proc/PID/stat), and the load tool with its
# workers (the shell's children's times, which it is the only one reaped meanwhile).
# `times` must run in this shell, not in a $(...) subshell, whose children are not these.
children_cpu_s() {
    times >"$WORK/times"
    tail -n 1 "$WORK/times" | awk '{ for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } } END { print t }'
}
INSTANCE_CPU0=()
for pid in "${PIDS[@]}"; do INSTANCE_CPU0+=("$(cpu_ticks "$pid")"); done
children_cpu_s >"$WORK/load-cpu0"
REDIS_CPU0=$(cpu_ticks "$REDIS_PID")
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
LOAD_START=$SECONDS
rc=0
timeout "$LIMIT" target/release/wshub-load fanout "${URLS[@]}" --broadcast --connections "$TOTAL" \
    "${PROCESS_ARGS[@]}" --connect-rate "$RATE" --publishers 1 --messages "$SECS" --rate 1 --size 64 \
    --timeout "$((LIMIT - 10))s" --server-pid "${PIDS[0]}" --json >"$OUT/load.json" 2>"$OUT/load.err" || rc=$?
LOAD_SECS=$((SECONDS - LOAD_START))
REDIS_CPU1=$(cpu_ticks "$REDIS_PID")
children_cpu_s >"$WORK/load-cpu1"
LOAD_CPU_S=$(python3 -c "print(round($(cat "$WORK/load-cpu1") - $(cat "$WORK/load-cpu0"), 2))")
INSTANCE_TICKS=()
for i in "${!PIDS[@]}"; do INSTANCE_TICKS+=("$(($(cpu_ticks "${PIDS[i]}") - INSTANCE_CPU0[i]))"); done
PUBLISH=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | grep '^cmdstat_publish:' || true)
HWM=() STATS=()
for i in "${!PIDS[@]}"; do
    HWM+=("$(proc_kib VmHWM "${PIDS[i]}")")
    STATS+=("$(curl -s --max-time 5 "http://127.0.0.1:${PORTS[i]}/stats" || echo '{}')")
done
printf '%s\n' "${STATS[@]}" >"$OUT/stats.jsonl"
for pid in "${PIDS[@]}"; do stop_pid "$pid" 10; done

python3 - "$OUT" "$INSTANCES" "$PER" "$SECS" "$rc" "$LOAD_SECS" "$((REDIS_CPU1 - REDIS_CPU0))" "$(getconf CLK_TCK)" \
    "$PUBLISH" "$LOAD_CPU_S" "${INSTANCE_TICKS[*]}" "${HWM[@]}" <<'PY'
import json, os, sys
out, k, per, secs, rc, load_secs, redis_ticks, hz, publish = sys.argv[1], *map(int, sys.argv[2:9]), sys.argv[9]
load_cpu_s, instance_cpu_s = float(sys.argv[10]), [int(t) / int(sys.argv[8]) for t in sys.argv[11].split()]
hwm = [int(h) for h in sys.argv[12:]]
lines = open(os.path.join(out, "load.json")).read().strip().splitlines()
try:
    r = json.loads(lines[-1])
except (IndexError, ValueError):
    r = None
stats = [json.loads(l) if l.strip() else {} for l in open(os.path.join(out, "stats.jsonl"))]
samples = [list(map(int, l.split())) for l in open(os.path.join(out, "samples.txt")) if len(l.split()) == 3 + k]
loadavg = " ".join(open("/proc/loadavg").read().split()[:3])
total = k * per
res = []
say = lambda t="": (print(t), res.append(t))
say("## Cluster scale: %d instances x %s connections = %s, one broadcast per second for %d s" % (k, format(per, ","), format(total, ","), secs))
say()
say("Command: `scripts/cluster-scale.sh %d %d %d`; load average when it ended: %s (%d CPUs; other work shares them)." % (k, per, secs, loadavg, os.cpu_count()))
say()
if r is None:
    say("wshub-load gave no JSON (exit %d); see %s/load.err" % (rc, out))
else:
    lat = r["latency_us"]
    say("| figure | value |")
    say("| --- | ---: |")
    say("| connections subscribed / asked | %s / %s (connect failures %d, dropped by the servers %d) |" % (
        format(r["subscribed"], ","), format(total, ","), r.get("connect_failed_total", 0), r["subscribers_dropped"]))
    say("| broadcasts sent | %d (publish errors %d) |" % (r["sent"], r["publish_errors"]))
    say("| delivered / expected | %s / %s (lost %s, duplicates %d) |" % (format(r["received"], ","), format(r["expected"], ","), format(r["lost"], ","), r["duplicates"]))
    say("| latency p50 / p99 / max | %.1f / %.1f / %.1f ms |" % (lat["p50"] / 1e3, lat["p99"] / 1e3, lat["max"] / 1e3))
    say("| load-tool processes | %d (plus the parent with the publisher) |" % r["processes"])
held = [s for s in samples if s[0] <= load_secs]
for i in range(k):
    peak = max((s[3 + i] for s in held), default=0)
    st = stats[i] if i < len(stats) else {}
    c = st.get("cluster") or {}
    before = samples[0][3 + i] if samples else 0
    say("| instance %d: RSS before / while holding (largest 2 s sample) / VmHWM | %.1f / %.1f / %.1f MiB (%s B per connection) |" % (
        i, before / 1024, peak / 1024, hwm[i] / 1024, format(round((peak - before) * 1024 / per), ",")))
    say("| instance %d: /stats | handshakes %s, Redis published %s received %s refused %s dropped %s, inbox refused %s, evictions %s |" % (
        i, st.get("handshakes", "?"), c.get("published", "?"), c.get("received", "?"), c.get("refused", "?"), c.get("dropped", "?"),
        sum(st.get("inbox_refused", [])) if st else "?", st.get("evictions", "?")))
redis_ms = redis_ticks * 1000 / hz
say("| Redis CPU over the whole load run (%d s: ramp, %d broadcasts, heartbeats) | %.0f ms (%.2f ms/s) |" % (load_secs, secs, redis_ms, redis_ms / max(load_secs, 1)))
ours = load_cpu_s + sum(instance_cpu_s) + redis_ms / 1000
say("| CPU over the load run: instances (each) / load tool / Redis / all | %s / %.1f / %.2f / %.1f s: %.2f of the %d CPUs' %d s |" % (
    " + ".join("%.1f" % c for c in instance_cpu_s), load_cpu_s, redis_ms / 1000, ours, ours / (os.cpu_count() * max(load_secs, 1)),
    os.cpu_count(), load_secs))
if r is not None and r["received"]:
    say("| CPU per delivery, everything this run started (connecting included) | %.1f µs |" % (ours * 1e6 / r["received"]))
say("| Redis RSS, largest sample | %.1f MiB |" % (max((s[2] for s in samples), default=0) / 1024))
say("| Redis PUBLISH (INFO commandstats over the run) | %s |" % (publish.split(":", 1)[1] if ":" in publish else "n/a"))
open(os.path.join(out, "summary.md"), "w").write("\n".join(res) + "\n")
print("\nwritten: %s/summary.md" % out)
ok = r is not None and r["lost"] == 0 and r["subscribed"] == total and rc == 0
sys.exit(0 if ok else 1)
PY
