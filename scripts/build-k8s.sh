#!/usr/bin/env bash
# Builds the Kubernetes binaries used by the integration tests from the Go module in tests/k8s
# into target/k8s-bin/: the control plane (kube-apiserver, etcd, kubectl) and the node
# (kubelet, kube-controller-manager, kube-scheduler; see tests/support/node.rs).
#
# Cached: the binaries are stamped with a hash of everything that determines them (go.mod,
# go.sum, the Go sources, this script, the Go version). A run whose hash matches the stamp
# does nothing, so the test harness can call this before every test binary.
#
# Go caches stay in Go's default places (GOMODCACHE=$(go env GOMODCACHE),
# GOCACHE=$(go env GOCACHE)) unless the caller sets them: they then survive `cargo clean`
# and fresh clones on the same machine, which turns a cold build into a link-only one.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/tests/k8s"
out="${K8S_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/k8s-bin}"
[[ "$out" = /* ]] || out="$root/$out"
bins=(kube-apiserver etcd kubectl kubelet kube-controller-manager kube-scheduler)

if ! command -v go >/dev/null; then
  echo "build-k8s: 'go' not found on PATH; Go >= 1.24 is needed to build the test control plane" >&2
  exit 1
fi

# Go needs a cache directory; without HOME (some CI sandboxes) it has no default, so fall back
# to one under target/.
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
  export GOCACHE="$root/target/go-cache" GOMODCACHE="${GOMODCACHE:-$root/target/go-mod}"
fi

mkdir -p "$out"

# Test binaries may run this concurrently (cargo nextest, several `cargo test --test`): one
# builds, the rest wait and then find a matching stamp.
exec 9>"$out/.lock"
flock 9

hash_inputs() {
  {
    go version
    cat "$mod/go.mod" "$mod/go.sum" "${BASH_SOURCE[0]}"
    (cd "$mod" && find . -name '*.go' -type f | LC_ALL=C sort | xargs -r sha256sum)
  } | sha256sum | cut -d' ' -f1
}

want="$(hash_inputs)"
have="$(cat "$out/.stamp" 2>/dev/null || true)"
all_present=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || all_present=0; done
if [ "$want" = "$have" ] && [ "$all_present" = 1 ]; then
  [ -n "${BUILD_K8S_QUIET:-}" ] || echo "build-k8s: up to date in $out" >&2
  exit 0
fi

cd "$mod"
k8s_version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
major="$(echo "$k8s_version" | sed -E 's/^v([0-9]+)\..*/\1/')"
minor="$(echo "$k8s_version" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"

# Without these the binaries report v0.0.0-master, and kubectl's version-skew check and
# anything that reads /version would see a version that does not exist.
xflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  xflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  xflags+=" -X $pkg.gitTreeState=clean"
done

echo "build-k8s: building kube-apiserver, kubectl, kubelet, kube-controller-manager, kube-scheduler $k8s_version and etcd into $out (first build takes minutes)" >&2
start=$(date +%s)
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# CGO off: upstream ships these static as well, and it skips the C toolchain entirely.
# -p=2 matches the 2-core CI machines; more parallel compiles only add memory pressure.
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -p=2 -trimpath \
  -ldflags="-s -w$xflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./cmd/etcd \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$out/$b"; done
echo "$want" >"$out/.stamp"
echo "build-k8s: done in $(($(date +%s) - start))s" >&2
