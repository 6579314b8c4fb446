# podman as it works on these machines; sourced by image.sh and node-images.sh.
# A private store under target/podman: vfs because overlay needs kernel features and privileges
# these machines lack; runc because crun refuses the hybrid cgroup v1 + v2 hierarchy; cgroupfs
# and a file events backend because there is no systemd. Builds and runs also need explicit
# ulimits (PODMAN_ULIMITS): root here lacks CAP_SYS_RESOURCE, so runc cannot raise the defaults.
podman_target="${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target}"
podman_cmd=(podman --root "$podman_target/podman/root" --runroot "$podman_target/podman/run"
  --storage-driver=vfs --runtime=runc --cgroup-manager=cgroupfs --events-backend=file)
PODMAN_ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
