#!/usr/bin/env bash
# Installs the observability tools the tests drive, only when missing. Idempotent.
#   - prometheus + promtool (Debian package, via install-deps.sh)
#   - rotel (PyPI; ships rotel-agent, a Rust OTLP collector) and the Python OTLP sink's
#     dependencies (opentelemetry-proto, grpcio) in a virtualenv
#   - the dashboard type-check project (tests/dashboard: @grafana/schema + typescript, npm ci)
#   - grpc-health-probe (Go module, built into $tools/bin)
# The virtualenv lives at $HEALTHGATE_TOOLS_DIR (default target/test-tools); tests find it there.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

tools="${HEALTHGATE_TOOLS_DIR:-$PWD/target/test-tools}"
venv="$tools/venv"
# Versions known to work together; bump deliberately.
py_pkgs=(rotel==0.0.1a15 opentelemetry-proto==1.38.0 grpcio==1.76.0 protobuf==6.33.0)

mkdir -p "$tools"
# Test binaries run in parallel and each may call this script: one at a time.
exec 9>"$tools/.lock"
flock 9

if ! command -v python3 >/dev/null; then
  echo "python3 is required" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import venv' 2>/dev/null; then
  mkdir -p "$tools"
  python3 -m venv "$venv" 2>/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  }
fi
stamp="$venv/.installed"
want="${py_pkgs[*]}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
  || ! "$venv/bin/python" -c 'import rotel, grpc, opentelemetry.proto' 2>/dev/null; then
  echo "installing into $venv: $want" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${py_pkgs[@]}"
  echo "$want" >"$stamp"
fi

dash=tests/dashboard
if [ -f "$dash/package-lock.json" ]; then
  if [ ! -x "$dash/node_modules/.bin/tsc" ] || [ "$dash/package-lock.json" -nt "$dash/node_modules/.package-lock.json" ]; then
    command -v npm >/dev/null || {
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    }
    (cd "$dash" && npm ci --silent --no-audit --no-fund)
  fi
fi

# grpc-health-probe, the client kubelet-style gRPC health checks are judged with (Go module).
ghp_version=v0.4.63
ghp="$tools/bin/grpc-health-probe"
if [ "$(cat "$ghp.version" 2>/dev/null)" != "$ghp_version" ] || [ ! -x "$ghp" ]; then
  command -v go >/dev/null || { echo "go is required to build grpc-health-probe" >&2; exit 1; }
  echo "building grpc-health-probe $ghp_version into $tools/bin" >&2
  # Go needs a cache directory; without HOME (some CI sandboxes) it has no default.
  if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
    export GOCACHE="$tools/go-cache" GOMODCACHE="${GOMODCACHE:-$tools/go-mod}"
  fi
  CGO_ENABLED=0 GOBIN="$tools/bin" go install -trimpath \
    "github.com/grpc-ecosystem/grpc-health-probe@$ghp_version"
  echo "$ghp_version" >"$ghp.version"
fi
