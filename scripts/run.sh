#!/usr/bin/env bash
# Quick start: starts a throwaway PostgreSQL and Redis from the system binaries (installing them
# if missing), runs healthgate with examples/demo-policy.yaml, and shows /ready.
# Serves until Ctrl-C; `scripts/run.sh --once` shows the probes and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

once=false
[ "${1:-}" = "--once" ] && once=true
listen="${HEALTHGATE_LISTEN:-127.0.0.1:8080}"

scripts/install-deps.sh
cargo build --quiet --bin healthgate
start_services
echo "postgres on 127.0.0.1:$pg_port, redis on 127.0.0.1:$redis_port"

target/debug/healthgate serve --policy examples/demo-policy.yaml --listen "$listen" --drain-delay 1s &
hg_pid=$!
svc_pids+=($hg_pid)
wait_http "http://$listen/health" "$hg_pid"
sleep 2.5   # one check interval, so /ready shows real results
psql -h 127.0.0.1 -p "$pg_port" -U app -d demo -qc \
  "INSERT INTO users (id, email) VALUES ('demo', 'demo@example.com') ON CONFLICT DO NOTHING" || true

show() { echo; echo "\$ curl -s http://$listen$1"; curl -s -w '\n(HTTP %{http_code})\n' "http://$listen$1"; }
show /ready
show /api/users/demo
echo
echo "The non-critical 'search' dependency points at a closed port, so the service reports degraded (207)."
if $once; then
  exit 0
fi
echo "healthgate is serving on http://$listen (/health /ready /metrics /api/users/{id}); Ctrl-C stops everything."
wait "$hg_pid"
