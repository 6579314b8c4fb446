#!/usr/bin/env bash
# Builds the two helper images the test node needs besides healthgate's own (scripts/image.sh),
# with no registry: both FROM scratch, written as OCI archives that `ctr images import` accepts.
#   localhost/pause:3.10       the sandbox image (tests/node/images/pause.c, static)
#   localhost/hg-app:1         the "app in another language" of the sidecar example:
#                              busybox httpd serving /www (static busybox, no shell entrypoint)
# Output: target/image/{pause,hg-app}.oci.tar. Cached on the inputs' hash.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target" = /* ]] || target="$root/$target"
work="$target/image"
src="$root/tests/node/images"

"$root/scripts/install-node-deps.sh"
CARGO_TARGET_DIR="$target" source "$root/scripts/lib/podman.sh"

mkdir -p "$work"
exec 9>"$work/.lock"
flock 9

want=$({ sha256sum "${BASH_SOURCE[0]}" "$src"/* /bin/busybox; gcc --version | head -1; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$work/.node-stamp" 2>/dev/null)" = "$want" ] \
  && [ -f "$work/pause.oci.tar" ] && [ -f "$work/hg-app.oci.tar" ]; then
  echo "node-images: up to date" >&2
  exit 0
fi

build() { # name context
  "${podman_cmd[@]}" build --network=none "${PODMAN_ULIMITS[@]}" --layers=false \
    -t "$1" -f "$2/Containerfile" "$2" >&2
  rm -f "$3"
  "${podman_cmd[@]}" save --format oci-archive -o "$3" "$1"
}

ctx="$work/pause-context"
rm -rf "$ctx" && mkdir -p "$ctx"
gcc -Os -static -o "$ctx/pause" "$src/pause.c"
strip "$ctx/pause"
cat >"$ctx/Containerfile" <<'CF'
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
CF
build localhost/pause:3.10 "$ctx" "$work/pause.oci.tar"

ctx="$work/hg-app-context"
rm -rf "$ctx" && mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/www"
cp /bin/busybox "$ctx/rootfs/bin/busybox"
echo "shop" >"$ctx/rootfs/www/index.html"
cat >"$ctx/Containerfile" <<'CF'
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]
CF
build localhost/hg-app:1 "$ctx" "$work/hg-app.oci.tar"

echo "$want" >"$work/.node-stamp"
echo "node-images: built into $work" >&2
