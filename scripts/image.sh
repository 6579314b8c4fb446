#!/usr/bin/env bash
# Builds the healthgate container image without any registry: the release binary, then an OCI
# image FROM scratch holding exactly that binary, the shared libraries it links (from ldd), the
# CA bundle and a passwd/group naming UID 65532. No shell, no package manager.
#
#   scripts/image.sh            → image localhost/healthgate:dev in podman's store under
#                                 target/podman, and target/image/healthgate-dev.oci.tar
#   ctr -n k8s.io images import target/image/healthgate-dev.oci.tar     (containerd)
#   podman load -i target/image/healthgate-dev.oci.tar                  (another podman store)
#
# The layout matches the Dockerfile's (which needs Docker Hub and gcr.io): the binary at
# /usr/local/bin/healthgate, USER 65532:65532, EXPOSE 8080, ENTRYPOINT the binary, CMD serve.
# The Dockerfile's base (distroless/cc) carries more files (tzdata, libssl, os-release); the
# binary uses none of them. tests/image.rs checks that both files agree.
#
# Cached: the image is rebuilt only when the binary, its libraries or this script change.
# Env: IMAGE (default localhost/healthgate:dev), CARGO_TARGET_DIR, SKIP_CARGO_BUILD=1 to package
# an already built target/release/healthgate.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target" = /* ]] || target="$root/$target"
image="${IMAGE:-localhost/healthgate:dev}"
work="$target/image"
archive="$work/$(basename "${image%%:*}")-${image##*:}.oci.tar"
uid=65532

"$root/scripts/install-node-deps.sh"

CARGO_TARGET_DIR="$target" source "$root/scripts/lib/podman.sh"

# `cargo test` hands its children CARGO_MANIFEST_DIR, CARGO_PKG_* and more; some build scripts
# (ring's) rerun when those change, which would turn every call from a test into a full release
# rebuild. Build with the environment a shell has.
for v in $(compgen -e | grep -E '^CARGO_(MANIFEST_|PKG_|CRATE_|BIN_|PRIMARY_|TARGET_TMPDIR)' || true); do
  unset "$v"
done
unset CARGO

if [ -z "${SKIP_CARGO_BUILD:-}" ]; then
  echo "image: cargo build --release --bin healthgate" >&2
  (cd "$root" && CARGO_TARGET_DIR="$target" nice -n 10 cargo build --release --locked --bin healthgate)
fi
bin="$target/release/healthgate"
[ -x "$bin" ] || { echo "image: $bin missing" >&2; exit 1; }

mkdir -p "$work"
exec 9>"$work/.lock"
flock 9

# Every library the dynamic loader resolves, and the loader itself (the `/lib64/ld-linux…`
# line has no `=>`). mawk, Debian's awk, has no `\s`.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
[ -n "$libs" ] || { echo "image: ldd found no libraries for $bin" >&2; exit 1; }

want=$({ sha256sum "$bin" "${BASH_SOURCE[0]}"; for l in $libs; do sha256sum "$(readlink -f "$l")"; done; echo "$image"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$work/.stamp" 2>/dev/null)" = "$want" ] && [ -f "$archive" ] \
  && "${podman_cmd[@]}" image exists "$image"; then
  echo "image: $image up to date ($archive)" >&2
  exit 0
fi

start=$(date +%s)
ctx="$work/context"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp"
cp "$bin" "$ctx/rootfs/usr/local/bin/healthgate"
for l in $libs; do
  # Keep the path the binary asks for (symlinks resolved), so the loader finds it unchanged.
  mkdir -p "$ctx/rootfs$(dirname "$l")"
  cp -L "$l" "$ctx/rootfs$l"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
# The same names as distroless: root, nobody and nonroot (65532), so tools that map a UID to
# a name (ps, `id` in a debug container) find one. No login shell exists.
cat >"$ctx/rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$uid:$uid:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$ctx/rootfs/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:$uid:
EOF
chmod 1777 "$ctx/rootfs/tmp"
cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
USER $uid:$uid
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/healthgate"]
CMD ["serve"]
EOF

echo "image: building $image" >&2
"${podman_cmd[@]}" build --network=none "${PODMAN_ULIMITS[@]}" \
  --layers=false -t "$image" -f "$ctx/Containerfile" "$ctx" >&2
rm -f "$archive"
# oci-archive keeps the full name in org.opencontainers.image.ref.name, so `ctr images import`
# registers it as localhost/healthgate:dev with no --base-name.
"${podman_cmd[@]}" save --format oci-archive -o "$archive" "$image"
echo "$want" >"$work/.stamp"
echo "image: $image → $archive in $(($(date +%s) - start))s" >&2
