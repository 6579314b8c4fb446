#!/usr/bin/env bash
# Installs the system packages the tests and the quick start need, only when missing.
# Idempotent: a second run with everything present touches nothing.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
command -v promtool >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
# The tls check's tests make certificates and serve them with the openssl CLI.
command -v openssl >/dev/null || need+=(openssl)
# The dns check's tests run their own DNS server (the binary only: no system service).
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# The mysql check's tests run their own MariaDB server.
[ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The Debian packages start system services we do not use; the tests run their own instances.
  for svc in redis-server prometheus postgresql mariadb; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi
