#!/usr/bin/env bash
# Quick start: starts a throwaway PostgreSQL and Redis from the system binaries (installing them
# if missing), runs healthgate with examples/demo-policy.yaml, and shows /ready.
# Serves until Ctrl-C; `scripts/run.sh --once` shows the probes and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
[ "${1:-}" = "--once" ] && once=true
listen="${HEALTHGATE_LISTEN:-127.0.0.1:8080}"

scripts/install-deps.sh
cargo build --quiet --bin healthgate

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
work=$(mktemp -d /tmp/healthgate-demo.XXXXXX)
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  as_pg=(runuser -u postgres --)
  chown postgres "$work"
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_port=$(free_port); redis_port=$(free_port)
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U app --auth=trust >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
"${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U app demo
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)

export DEMO_POSTGRES_URL="postgres://app@127.0.0.1:$pg_port/demo"
export DEMO_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export DATABASE_URL="$DEMO_POSTGRES_URL"
echo "postgres on 127.0.0.1:$pg_port, redis on 127.0.0.1:$redis_port"

target/debug/healthgate serve --policy examples/demo-policy.yaml --listen "$listen" --drain-delay 1s &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://$listen/health" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || { echo "healthgate exited; see its log above" >&2; exit 1; }
  sleep 0.1
done
sleep 2.5   # one check interval, so /ready shows real results
psql -h 127.0.0.1 -p "$pg_port" -U app -d demo -qc \
  "INSERT INTO users (id, email) VALUES ('demo', 'demo@example.com') ON CONFLICT DO NOTHING" || true

show() { echo; echo "\$ curl -s http://$listen$1"; curl -s -w '\n(HTTP %{http_code})\n' "http://$listen$1"; }
show /ready
show /api/users/demo
echo
echo "the non-critical 'search' dependency points at a closed port, so the service reports degraded (207)."
if $once; then
  exit 0
fi
echo "healthgate is serving on http://$listen (/health /ready /metrics /api/users/{id}); Ctrl-C stops everything."
wait "${pids[-1]}"
