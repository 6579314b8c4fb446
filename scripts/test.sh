#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian packages,
# the Kubernetes test binaries), then runs every test. Nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s (%ss)\n' "$1" "$SECONDS"; }

step "system packages: postgresql, redis, mariadb, prometheus, wrk, openssl, dnsmasq"
scripts/install-deps.sh
step "observability tools: rotel, OTLP sink deps, @grafana/schema"
scripts/install-test-tools.sh
step "container tools for the image and the test node: podman, containerd, runc, CNI plugins"
scripts/install-node-deps.sh
step "kube-apiserver, etcd, kubectl, kubelet, kube-controller-manager, kube-scheduler from the official Go modules (cached)"
scripts/build-k8s.sh
step "images: healthgate:dev (release build, FROM scratch) and the test node's pause and app images"
scripts/image.sh
scripts/node-images.sh
step "formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
step "cargo test"
cargo test --all-targets --no-fail-fast
cargo test --doc
step "benchmarks in smoke mode (they run and produce every number; timings are for scripts/bench.sh and scripts/scale.sh, not CI)"
scripts/bench.sh --smoke
scripts/scale.sh --smoke
step "fuzzing: policy documents, durations, redaction, request paths (30 s each)"
scripts/fuzz.sh 30
step "done"
