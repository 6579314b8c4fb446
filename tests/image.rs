//! The container image from `scripts/image.sh`, run the way the manifests run it: under
//! podman + runc, read-only root filesystem, as UID 65532, no shell in the image. The same
//! layout as the Dockerfile (which needs registries these machines cannot reach).

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::healthgate::request;
use support::services::{Redis, free_port};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const IMAGE: &str = "localhost/healthgate:dev";
const UID: &str = "65532";

fn build_image() {
    let status = Command::new("bash")
        .arg(format!("{REPO}/scripts/image.sh"))
        .status()
        .expect("running scripts/image.sh");
    assert!(status.success(), "scripts/image.sh failed: {status}");
}

/// podman with the same store and flags as scripts/lib/podman.sh.
fn podman(args: &[&str]) -> Output {
    let script = format!("source {REPO}/scripts/lib/podman.sh && \"${{podman_cmd[@]}}\" \"$@\"",);
    Command::new("bash")
        .args(["-c", &script, "podman"])
        .args(args)
        .output()
        .expect("running podman")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `podman run` as the manifests run it: read-only root, non-root, loopback only. The ulimits
/// are needed on these machines (no CAP_SYS_RESOURCE to raise rlimits).
fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--network=host",
        "--read-only",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    args.extend_from_slice(extra);
    args
}

/// Removes the container even when an assertion fails.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

/// The last instruction `word` of the Dockerfile's final stage, e.g. `USER 65532:65532`.
fn dockerfile_instruction(word: &str) -> String {
    let text = std::fs::read_to_string(format!("{REPO}/Dockerfile")).expect("Dockerfile");
    let final_stage = text
        .rsplit_once("\nFROM ")
        .expect("a multi-stage Dockerfile")
        .1;
    final_stage
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{word} ")))
        .next_back()
        .unwrap_or_else(|| panic!("no {word} in the Dockerfile's final stage"))
        .trim()
        .to_string()
}

#[test]
fn the_image_has_the_dockerfile_layout_and_no_shell() {
    build_image();
    let inspect: serde_json::Value =
        serde_json::from_str(&podman_ok(&["image", "inspect", IMAGE])).expect("inspect JSON");
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], dockerfile_instruction("USER"));
    assert_eq!(config["User"], format!("{UID}:{UID}"));
    let entrypoint: serde_json::Value =
        serde_json::from_str(&dockerfile_instruction("ENTRYPOINT")).expect("exec-form ENTRYPOINT");
    assert_eq!(config["Entrypoint"], entrypoint);
    let cmd: serde_json::Value =
        serde_json::from_str(&dockerfile_instruction("CMD")).expect("exec-form CMD");
    assert_eq!(config["Cmd"], cmd);
    let port = dockerfile_instruction("EXPOSE");
    assert!(
        config["ExposedPorts"].get(format!("{port}/tcp")).is_some(),
        "EXPOSE {port} missing: {config}"
    );
    let copy = dockerfile_instruction("COPY");
    assert!(
        copy.ends_with(entrypoint[0].as_str().unwrap()),
        "the Dockerfile copies the binary to {copy}, the image runs {entrypoint}"
    );

    for shell in ["/bin/sh", "/bin/bash", "/bin/busybox"] {
        let out = podman(&run_args(&[
            "--rm",
            "--entrypoint",
            shell,
            IMAGE,
            "-c",
            "true",
        ]));
        assert!(!out.status.success(), "{shell} exists in the image");
    }
}

#[test]
fn the_image_runs_read_only_as_nonroot_and_answers_health() {
    build_image();
    let version = podman_ok(&run_args(&["--rm", IMAGE, "--version"]));
    assert_eq!(
        version.trim(),
        format!("healthgate {}", env!("CARGO_PKG_VERSION")),
        "`healthgate --version` inside the image"
    );

    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {{name: image}}\n\
             spec:\n  defaults: {{interval: 1s}}\n  dependencies:\n    - name: cache\n      \
             type: redis\n      redis: {{url: \"{}\"}}\n",
            redis.url()
        ),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mount = format!("{}:/etc/healthgate/policy.yaml:ro", policy.display());
    let name = format!("healthgate-image-test-{}", std::process::id());
    let id = podman_ok(&run_args(&[
        "--detach",
        "--name",
        &name,
        "--volume",
        &mount,
        IMAGE,
        "serve",
        "--policy",
        "/etc/healthgate/policy.yaml",
        "--listen",
        &listen,
    ]));
    let container = Container(id.trim().to_string());

    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        match request(port, "GET", "/ready", Duration::from_secs(2)) {
            Ok(reply) if reply.status == 200 => break reply,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "/ready not 200 within 30s: {:?}\nlogs:\n{}",
                    other.map(|r| (r.status, r.body)),
                    String::from_utf8_lossy(&podman(&["logs", &container.0]).stderr)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(
        ready.json()["checks"]["cache"]["status"],
        "ok",
        "{}",
        ready.body
    );
    let health = request(port, "GET", "/health", Duration::from_secs(2)).expect("/health");
    assert_eq!(health.status, 200, "{}", health.body);

    // What the kernel says about the running process, not what the image claims.
    let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &container.0]);
    let pid = pid.trim();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert!(
        uids.split_whitespace().all(|u| u == UID),
        "healthgate runs as {uids}, not {UID}"
    );
    let mounts =
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("process mountinfo");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    let options = root.split_whitespace().nth(5).expect("mount options");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "root filesystem is not read-only: {root}"
    );
}
