#!/usr/bin/env bash
# Throughput, p99 and server CPU per request of healthgate's endpoints as ratios to a bare warp
# server, measured in the same run with wrk on loopback, plus the dependency load caused by
# probing /ready. wrk runs 2 threads by default: with one, the client is the bottleneck and hides
# the server's cost (BENCH_THREADS=1 reproduces the old numbers).
#   scripts/bench.sh [seconds-per-endpoint]     (default 10; release build)
#   scripts/bench.sh --smoke                    CI: the debug build, 1 s per endpoint; the
#                                               numbers mean nothing, the run proves the script works
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh
connections=32
threads="${BENCH_THREADS:-2}"
ticks_per_second=$(getconf CLK_TCK)
target="${CARGO_TARGET_DIR:-target}"

if [ "${1:-}" = "--smoke" ]; then
  duration=1; profile=debug
  cargo build --quiet --locked --bin healthgate --example bare_warp
else
  duration="${1:-10}"; profile=release
  scripts/install-deps.sh
  cargo build --release --quiet --locked --bin healthgate --example bare_warp
fi
healthgate="$target/$profile/healthgate"
bare_warp="$target/$profile/examples/bare_warp"
# Every statement is logged, so the statements caused by the checks can be counted exactly.
PG_EXTRA_OPTS="-c log_statement=all" start_services

hg_addr="127.0.0.1:$(free_port)"; bare_addr="127.0.0.1:$(free_port)"
policy="$svc_dir/policy.yaml"
cat >"$policy" <<YAML
apiVersion: healthgate.dev/v1alpha1
kind: HealthPolicy
metadata: {name: bench}
spec:
  defaults: {interval: 1s, timeout: 500ms}
  dependencies:
    - {name: postgres, type: postgres, postgres: {urlFrom: {env: DEMO_POSTGRES_URL}}}
    - {name: redis, type: redis, redis: {urlFrom: {env: DEMO_REDIS_URL}}}
    - {name: jobs, type: redisQueue, redisQueue: {urlFrom: {env: DEMO_REDIS_URL}, key: jobs, degradedAbove: 100}}
YAML
RUST_LOG=warn "$healthgate" serve --policy "$policy" --listen "$hg_addr" --drain-delay 0s &
hg_pid=$!; svc_pids+=($hg_pid)
"$bare_warp" "$bare_addr" &
bare_pid=$!; svc_pids+=($bare_pid)
wait_http "http://$hg_addr/health" "$hg_pid"
wait_http "http://$bare_addr/" "${svc_pids[-1]}"
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$hg_addr/api/users/bench")" = 404 ]; do sleep 0.2; done
psql -h 127.0.0.1 -p "$pg_port" -U app -d demo -qc "INSERT INTO users (id, email) VALUES ('bench', 'bench@example.com')"
sleep 1.5
# A second baseline sends exactly /ready's bytes, so the body's size is not mistaken for cost.
curl -s "http://$hg_addr/ready" >"$svc_dir/ready-body.json"
same_addr="127.0.0.1:$(free_port)"
"$bare_warp" "$same_addr" "$svc_dir/ready-body.json" &
same_pid=$!; svc_pids+=($same_pid)
wait_http "http://$same_addr/" "$same_pid"

# CPU time (user + system) a process has used, in clock ticks, from /proc/PID/stat.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wrk prints "Requests/sec: N", "N requests in", and with --latency a "99% X" line in ms/us/s.
# The server's CPU per request comes from its /proc ticks over the run divided by the requests.
measure() {
  local url=$1 pid=$2 out rps p99 requests t0 t1
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$url")
  t1=$(cpu_ticks "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  cpu_us=$(python3 -c "print(($t1 - $t0) / $ticks_per_second * 1e6 / $requests)")
  echo "$rps $p99 ${non2xx:-0} $cpu_us"
}

pg_statements() { grep -c 'statement: SELECT 1' "$svc_dir/pg.log" || true; }
redis_cmds() { redis-cli -p "$redis_port" INFO stats | awk -F: '/total_commands_processed/ {print $2+0}'; }

echo "warming up"; wrk -t"$threads" -c"$connections" -d2s "http://$bare_addr/" >/dev/null; wrk -t"$threads" -c"$connections" -d2s "http://$hg_addr/ready" >/dev/null

read -r bare_rps bare_p99 _ bare_cpu < <(measure "http://$bare_addr/" "$bare_pid")
# Dependency load while idle and while /ready is hammered, over the same duration. The redis
# count includes the INFO that reads it.
pg0=$(pg_statements); r0=$(redis_cmds); sleep "$duration"; pg1=$(pg_statements); r1=$(redis_cmds)
read -r ready_rps ready_p99 ready_non2xx ready_cpu < <(measure "http://$hg_addr/ready" "$hg_pid")
pg2=$(pg_statements); r2=$(redis_cmds)
read -r same_rps same_p99 _ same_cpu < <(measure "http://$same_addr/" "$same_pid")
read -r health_rps health_p99 _ health_cpu < <(measure "http://$hg_addr/health" "$hg_pid")
read -r metrics_rps metrics_p99 _ metrics_cpu < <(measure "http://$hg_addr/metrics" "$hg_pid")
read -r users_rps users_p99 _ users_cpu < <(measure "http://$hg_addr/api/users/bench" "$hg_pid")
# Second baseline at the end, so drift during the run shows.
read -r bare2_rps bare2_p99 _ bare2_cpu < <(measure "http://$bare_addr/" "$bare_pid")
base_rps=$(python3 -c "print(($bare_rps + $bare2_rps) / 2)")
base_p99=$(python3 -c "print(($bare_p99 + $bare2_p99) / 2)")
base_cpu=$(python3 -c "print(($bare_cpu + $bare2_cpu) / 2)")

row() { python3 -c "print(f'| $1 | {$2:,.0f} | {$2/$base_rps:.2f}x | {$3:.2f} | {$3/$base_p99:.2f}x | {$4:.1f} | {$4/$base_cpu:.2f}x |')"; }
echo
echo "wrk -t$threads -c$connections -d${duration}s on loopback, $(nproc) cores shared by client and server; baseline = bare warp answering a static 15-byte JSON 200 (mean of a run before and after); server CPU = utime+stime from /proc over the run / requests"
echo
echo "| endpoint | req/s | vs bare | p99 ms | p99 vs bare | server CPU µs/req | CPU vs bare |"
echo "|---|---|---|---|---|---|---|"
row "bare warp (baseline)" "$base_rps" "$base_p99" "$base_cpu"
row "/health" "$health_rps" "$health_p99" "$health_cpu"
row "/ready" "$ready_rps" "$ready_p99" "$ready_cpu"
row "bare warp, /ready body ($(stat -c %s "$svc_dir/ready-body.json") bytes)" "$same_rps" "$same_p99" "$same_cpu"
row "/metrics" "$metrics_rps" "$metrics_p99" "$metrics_cpu"
row "/api/users/{{id}}" "$users_rps" "$users_p99" "$users_cpu"
python3 -c "print(f'/ready against bare warp sending the same bytes: {$ready_rps/$same_rps:.2f}x req/s, {$ready_cpu/$same_cpu:.2f}x CPU/req')"
echo
echo "/ready non-2xx responses during its run: $ready_non2xx (the policy is all-ok, so 0 expected)"
echo "dependency load over ${duration}s: idle: postgres $((pg1 - pg0)) statements, redis $((r1 - r0)) commands;" \
     "under /ready load ($(python3 -c "print(round($ready_rps * $duration))") probes): postgres $((pg2 - pg1)) statements, redis $((r2 - r1)) commands"
if [ "$profile" = debug ]; then
  # Smoke mode: every number was produced and the all-ok policy answered 2xx throughout.
  python3 -c "assert min($bare_rps, $health_rps, $ready_rps, $metrics_rps, $users_rps, $same_rps) > 0 and min($bare_cpu, $ready_cpu, $health_cpu) > 0 and '$ready_non2xx' in ('', '0'), 'bench smoke failed'"
  echo "bench smoke: ok"
fi

