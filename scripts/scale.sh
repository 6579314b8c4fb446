#!/usr/bin/env bash
# How healthgate scales, from one run on this machine (a benchmark, not a test):
#   checks    one process with 10 → 10,000 checks (scripts/lib/scale_checks.py): CPU, RSS,
#             /metrics time and size, /ready p99, spread of check starts, scheduler lag
#   idle      the quick start's demo policy: idle RSS and start → first ready answer
#   chart     CPU and RSS against the number of checks, as SVG (scripts/results/scale.svg)
#   scripts/scale.sh            full run (release build), tables in target/scale/*.md
#   scripts/scale.sh --smoke    CI: the debug build, 10 and 100 checks, short windows; only
#                               asserts that every measurement runs and produces numbers
# The "policies" part (1,000 HealthPolicies on a real API server) is scripts/scale-policies.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

target="${CARGO_TARGET_DIR:-target}"
out="$target/scale"
mkdir -p "$out"
if [ "${1:-}" = "--smoke" ]; then
  profile=debug; sizes=(10 100); interval=1; measure=3; chart="$out/scale-smoke.svg"
  cargo build --quiet --locked --bin healthgate
else
  profile=release; sizes=(10 100 1000 10000); interval=10; measure=30; chart=scripts/results/scale.svg
  scripts/install-deps.sh
  cargo build --release --quiet --locked --bin healthgate
fi
bin="$target/$profile/healthgate"
start_services
ulimit -n "$(ulimit -Hn)"

python3 scripts/lib/scale_checks.py "$bin" "$out/checks.json" "$interval" "$measure" "${sizes[@]}" \
  | tee "$out/checks.md"
python3 scripts/lib/scale_idle.py "$bin" examples/demo-policy.yaml | tee "$out/idle.md"
python3 scripts/lib/scale_chart.py "$out/checks.json" "$chart"
echo "chart: $chart"
