# Shell helpers shared by run.sh and bench.sh: throwaway PostgreSQL and Redis on free ports.
# Source it, then call start_services; stop_services runs on EXIT. PG_EXTRA_OPTS adds server options.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_services() {
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  svc_dir=$(mktemp -d /tmp/healthgate-svc.XXXXXX)
  chmod 755 "$svc_dir"
  as_pg=()
  if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
    chown postgres "$svc_dir"
  fi
  svc_pids=()
  trap stop_services EXIT
  pg_port=$(free_port); redis_port=$(free_port)
  "${as_pg[@]}" "$pg_bin/initdb" -D "$svc_dir/pg" -U app --auth=trust >/dev/null
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$svc_dir/pg" -l "$svc_dir/pg.log" -w \
    -o "-p $pg_port -k $svc_dir -c listen_addresses=127.0.0.1 ${PG_EXTRA_OPTS:-}" start >/dev/null
  "${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U app demo
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$svc_dir" >"$svc_dir/redis.log" 2>&1 &
  svc_pids+=($!)
  export DEMO_POSTGRES_URL="postgres://app@127.0.0.1:$pg_port/demo"
  export DEMO_REDIS_URL="redis://127.0.0.1:$redis_port/0"
  export DATABASE_URL="$DEMO_POSTGRES_URL"
}

stop_services() {
  for pid in "${svc_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$svc_dir/pg" -m fast stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$svc_dir"
}

# wait_http URL PID: waits until URL answers with any status, failing if PID exits first.
wait_http() {
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" != 000 ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited before $1 answered" >&2; return 1; }
    sleep 0.1
  done
  echo "$1 did not answer" >&2; return 1
}
