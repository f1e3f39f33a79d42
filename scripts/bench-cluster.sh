#!/usr/bin/env bash
# A cluster against one instance, same subscribers, same publisher load:
#
#   cluster   INSTANCES wshub instances (--shards 1 each) on one private Redis, SUBSCRIBERS
#             spread over them round-robin by wshub-load (several --url's), the publisher on
#             the first: every publication crosses Redis to the others;
#   single    one instance with all SUBSCRIBERS, on the same Redis (it publishes there too);
#   no-redis  one instance without --redis (the single server's own cost, for reference;
#             CLUSTER_NO_REDIS=0 skips it).
#
# Usage: scripts/bench-cluster.sh [INSTANCES=3] [SUBSCRIBERS=18000] [ROUNDS=3]   (results in target/bench-cluster/)
#
# The load: CLUSTER_MESSAGES (default 200) x CLUSTER_SIZE (64) B published by one publisher
# as fast as a window of CLUSTER_WINDOW (8) unacknowledged publishes allows (the windowed
# burst of scripts/compare.sh): deliveries/s, p50/p99 latency (publish to receipt), loss.
# Per run also, Redis's CPU per publication, two ways:
#   - process: redis-server's used_cpu_user+sys (INFO cpu, µs) over the load run, less its
#     idle rate (the instances' heartbeats, this script's INFO calls) measured over 3 s just
#     after, with the same instances and connections, ÷ publications. Everything Redis did
#     for a publication: reading the pipelined PUBLISH, running it, writing it to every
#     subscribed instance. Shown only where it is larger than the idle CPU it is corrected
#     for (else "noise"): that takes thousands of publications, e.g.
#     CLUSTER_MESSAGES=20000 CLUSTER_NO_REDIS=0 scripts/bench-cluster.sh 3 30;
#   - command: INFO commandstats' usec_per_call for PUBLISH (statistics reset before the
#     run): the command alone, without the socket reads and writes. It is wall time inside
#     the command, so on a busy machine it includes time Redis was preempted.
# And each instance's CPU over the run (/proc/PID/stat) and RSS after it (VmRSS; VmHWM is
# its peak over its life, the ramp included).
#
# Nothing is pinned: 3 servers, Redis and the load share the machine's CPUs (2 here), so the
# cluster does not get more CPU than the single instance; what it shows is the cost of going
# through Redis, not a scale-out. Configurations alternate within each round; the median of
# the rounds is kept. Redis is private: a free port, a temporary directory, persistence off,
# stopped at exit (as every instance is).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
INSTANCES=${1:-3}
SUBS=${2:-18000}
ROUNDS=${3:-3}
MESSAGES=${CLUSTER_MESSAGES:-200}
SIZE=${CLUSTER_SIZE:-64}
WINDOW=${CLUSTER_WINDOW:-8}
OUT=target/bench-cluster
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/runs.jsonl
: >"$RESULTS"
WORK=$(mktemp -d)
at_exit 'rm -rf "$WORK"'

cargo build --release --quiet -p wshub -p wshub-load
start_redis "$WORK/redis"
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
echo "redis-server pid $REDIS_PID on port $REDIS_PORT; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

redis_publish_usec_per_call() {
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | sed -nE 's/^cmdstat_publish:.*usec_per_call=([0-9.]+).*/\1/p'
}
now() { date +%s.%N; }
redis_cpu_us() { redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.0f\n", s * 1e6 }'; }

run() { # name instances redis(0|1) round
    local name=$1 count=$2 redis=$3 round=$4 i pids=() urls=() redis_args=()
    ((redis)) && redis_args=(--redis "$REDIS_URL" --cluster-prefix "bench$round$name")
    for ((i = 0; i < count; i++)); do
        start_wshub "$OUT/$name-$round-$i.log" --shards 1 "${redis_args[@]}"
        pids+=("$SERVER_PID") urls+=(--url "ws://127.0.0.1:$PORT/")
    done
    # Every instance sees the others (heartbeats, one per second) before the load starts.
    local idle0 idle1 idle_t0 idle_t1 t0 r0 r1 cpu0=() line
    if ((redis)); then
        sleep 1.5
        redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
    fi
    for i in "${pids[@]}"; do cpu0+=("$(cpu_ticks "$i")"); done
    r0=$(redis_cpu_us) t0=$(now)
    line=$(timeout 300 target/release/wshub-load fanout "${urls[@]}" --connections "$SUBS" --publishers 1 \
        --messages "$MESSAGES" --size "$SIZE" --window "$WINDOW" --timeout 120s --server-pid "${pids[0]}" \
        --json 2>>"$OUT/load.log" | tail -n 1) || true
    r1=$(redis_cpu_us)
    local idle_per_s=0 secs net=-1 cmd="" gross=0
    if ((redis)); then
        secs=$(python3 -c "print($(now) - $t0)")
        cmd=$(redis_publish_usec_per_call)
        # Redis's idle rate with the same instances (connections closed by now).
        idle0=$(redis_cpu_us) idle_t0=$(now)
        sleep 3
        idle1=$(redis_cpu_us) idle_t1=$(now)
        idle_per_s=$(python3 -c "print(round(($idle1 - $idle0) / ($idle_t1 - $idle_t0)))")
        net=$(python3 -c "print(max(0, round($r1 - $r0 - $idle_per_s * $secs)))")
        gross=$((r1 - r0))
    fi
    local procs=()
    for i in "${!pids[@]}"; do
        procs+=("$(($(cpu_ticks "${pids[i]}") - cpu0[i])):$(proc_kib VmRSS "${pids[i]}"):$(proc_kib VmHWM "${pids[i]}")")
    done
    for i in "${pids[@]}"; do stop_pid "$i" 5; done
    python3 - "$name" "$count" "$round" "$net" "$idle_per_s" "${cmd:-0}" "$(getconf CLK_TCK)" "$line" "$gross" "${procs[@]}" >>"$RESULTS" <<'PY'
import json, sys
name, count, rnd, redis_us, idle_per_s, cmd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
hz, line, gross = int(sys.argv[7]), sys.argv[8], int(sys.argv[9])
try:
    r = json.loads(line)
except ValueError:
    r = {"error": "no JSON from wshub-load: " + line[:200]}
r.update(config=name, instances=count, round=rnd)
r["instance_procs"] = [dict(zip(("cpu_ms", "rss_kib", "hwm_kib"), (int(t) * 1000 // hz, int(a), int(b))))
                       for t, a, b in (p.split(":") for p in sys.argv[10:])]
if redis_us >= 0:
    r["redis_cpu_us"], r["redis_idle_us_per_s"], r["redis_publish_usec_per_call"] = redis_us, idle_per_s, cmd
    r["redis_cpu_gross_us"] = gross
    # The correction is an estimate: the figure means something only when the publications'
    # own CPU is at least what was subtracted.
    resolved = r.get("sent") and redis_us >= gross - redis_us
    r["redis_us_per_publication"] = redis_us / r["sent"] if resolved else None
print(json.dumps(r))
PY
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
if "error" in r: print("  %-9s round %d: %s" % (r["config"], r["round"], r["error"])); sys.exit()
l = r["latency_us"]
per = r.get("redis_us_per_publication")
redis = "" if "redis_cpu_us" not in r else "  Redis %s us/publication (PUBLISH %.2f us; CPU %d us, idle %d us/s)" % (
    "noise" if per is None else "%.2f" % per, r["redis_publish_usec_per_call"], r["redis_cpu_gross_us"], r["redis_idle_us_per_s"])
print("  %-9s round %d: %6d subs, %d x %d B: %9.0f delivered/s  p50 %6.1f ms  p99 %6.1f ms  lost %d%s  RSS MiB %s" % (
    r["config"], r["round"], r["subscribed"], r["sent"], r["size"], r["delivered_per_sec"], l["p50"] / 1e3, l["p99"] / 1e3,
    r["lost"], redis, "/".join("%.1f" % (p["rss_kib"] / 1024) for p in r["instance_procs"])))'
}

for round in $(seq "$ROUNDS"); do
    echo "round $round (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    run cluster "$INSTANCES" 1 "$round"
    run single 1 1 "$round"
    if [[ ${CLUSTER_NO_REDIS:-1} != 0 ]]; then run no-redis 1 0 "$round"; fi
done

python3 - "$RESULTS" "$OUT/summary.md" "$INSTANCES" "$SUBS" "$ROUNDS" "$MESSAGES" "$SIZE" "$WINDOW" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out, k, n, rounds, messages, size, window = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7], sys.argv[8]
ok = [r for r in rows if "error" not in r]
def med(config, f):
    vals = [f(r) for r in ok if r["config"] == config]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
configs = [c for c in ("cluster", "single", "no-redis") if any(r["config"] == c for r in ok)]
label = {"cluster": "%d instances x %s" % (k, format(n // k, ",")), "single": "1 instance x %s, on Redis" % format(n, ","),
         "no-redis": "1 instance x %s, no Redis" % format(n, ",")}
lines = []
say = lambda t="": (print(t), lines.append(t))
say("## %s subscribers: %d instances against 1, %s x %s B, window %s, median of %d round(s)" % (format(n, ","), k, messages, size, window, rounds))
say()
say("| configuration | deliveries/s | p50 (ms) | p99 (ms) | lost | Redis CPU per publication, process (µs) | PUBLISH command (µs) | servers' CPU, all instances (ms) | RSS per instance after (MiB) |")
say("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
fmt = lambda v, f: "n/a" if v is None else (f.format(v) if "{" in f else f % v)
for c in configs:
    rss = [med(c, lambda r, i=i: r["instance_procs"][i]["rss_kib"] / 1024 if i < len(r["instance_procs"]) else None)
           for i in range(k if c == "cluster" else 1)]
    say("| %s | %s | %s | %s | %d | %s | %s | %s | %s |" % (label[c], fmt(med(c, lambda r: r["delivered_per_sec"]), "{:,.0f}"),
        fmt(med(c, lambda r: r["latency_us"]["p50"] / 1e3), "%.1f"), fmt(med(c, lambda r: r["latency_us"]["p99"] / 1e3), "%.1f"),
        sum(r["lost"] for r in ok if r["config"] == c),
        "n/a" if c == "no-redis" else fmt(med(c, lambda r: r.get("redis_us_per_publication")), "%.2f").replace("n/a", "noise"),
        fmt(med(c, lambda r: r.get("redis_publish_usec_per_call")), "%.2f"),
        fmt(med(c, lambda r: sum(p["cpu_ms"] for p in r["instance_procs"])), "%.0f"),
        " / ".join(fmt(v, "%.1f") for v in rss)))
say()
say("Unpinned: the instances, Redis and wshub-load share all %s CPUs. Redis CPU per publication, process:" % __import__("os").cpu_count())
say("INFO cpu's used_cpu_user+sys over the load run less the idle rate measured just after, ÷ publications;")
say("PUBLISH command: INFO commandstats usec_per_call. Load average at the end: %s." % " ".join(open("/proc/loadavg").read().split()[:3]))
open(out, "w").write("\n".join(lines) + "\n")
print("\nwritten: " + out)
failed = [r for r in rows if "error" in r or r.get("lost", 0) > 0]
sys.exit(1 if failed else 0)
PY
