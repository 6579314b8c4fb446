#!/usr/bin/env bash
# Many HealthPolicies on a real API server (issue 16, item 3): 1,000 policies by default, each
# with one tcp dependency on its own loopback listener. Measures start → all reconciled (engine
# and status), edit → live checker p50/p99, status writes and Events per second in steady state
# and while 100 listeners flap, and the controller's RSS and CPU. Prints a Markdown table and
# writes it to target/scale/policies.md (or $HEALTHGATE_SCALE_OUT).
#   scripts/scale-policies.sh [policies]        (default 1000)
# Other knobs (environment): HEALTHGATE_SCALE_INTERVAL (check interval, default 2s),
# HEALTHGATE_SCALE_WRITE_QPS / HEALTHGATE_SCALE_WRITE_BURST (default 10 and 50, healthgate's own
# defaults). CI runs the same test without HEALTHGATE_SCALE=full: a 20-policy smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
out="${HEALTHGATE_SCALE_OUT:-$target/scale/policies.md}"
mkdir -p "$(dirname "$out")"
# openssl for the control plane's certificates; kube-apiserver, etcd and kubectl from the Go module.
scripts/install-deps.sh
scripts/build-k8s.sh
HEALTHGATE_SCALE=full \
HEALTHGATE_SCALE_POLICIES="${1:-${HEALTHGATE_SCALE_POLICIES:-1000}}" \
HEALTHGATE_SCALE_OUT="$(realpath -m "$out")" \
  cargo test --release --locked --test scale_k8s -- --nocapture
echo "table written to $out"
