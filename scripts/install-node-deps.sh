#!/usr/bin/env bash
# Installs what the container image build (scripts/image.sh) and the test node
# (tests/support/node.rs) need, from Debian only, and only when missing. Idempotent.
#   - podman + runc: build and run OCI images without a daemon (vfs storage, see image.sh)
#   - containerd + runc: the container runtime behind the test kubelet
#   - containernetworking-plugins: bridge, host-local and portmap CNI plugins for pod networking
#   - busybox-static: the shell-less app image and the test pause image need a static binary
#   - gcc + libc6-dev: the pause program (a few lines of C, linked statically)
#   - iproute2, openssl, ca-certificates: the node's bridge, its certificates, the image's CA bundle
# Nothing is started: the Debian packages' services are blocked, the tests run their own
# containerd with a private config, sockets and state.
set -euo pipefail

need=()
command -v podman >/dev/null || need+=(podman)
[ -x /usr/sbin/runc ] || need+=(runc)
command -v containerd >/dev/null || need+=(containerd)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# Static, because it is copied alone into a FROM-scratch image; Debian's `busybox` is dynamic
# (busybox-static replaces it).
bb_ldd="$(ldd /bin/busybox 2>&1 || true)"
bb_applets="$(/bin/busybox --list 2>/dev/null || true)"
[[ "$bb_ldd" == *"not a dynamic"* && $'\n'"$bb_applets"$'\n' == *$'\nhttpd\n'* ]] || need+=(busybox-static)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(ls /usr/lib/*/libc.a 2>/dev/null)" ] || need+=(libc6-dev)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)

if [ ${#need[@]} -gt 0 ]; then
  echo "install-node-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  # containerd's package would start a system-wide daemon; the tests want only their own.
  policy=/usr/sbin/policy-rc.d
  created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ -z "$created_policy" ] || $SUDO rm -f "$policy"
  $SUDO systemctl disable --now containerd >/dev/null 2>&1 || true
fi
