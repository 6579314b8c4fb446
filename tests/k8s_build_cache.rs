//! `scripts/build-k8s.sh` is a no-op when nothing changed: a second run rebuilds nothing.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-k8s.sh");

fn run() -> (String, Duration) {
    let started = Instant::now();
    let out = Command::new(SCRIPT)
        .env_remove("BUILD_K8S_QUIET")
        .output()
        .expect("running build-k8s.sh");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build-k8s.sh failed:\n{stderr}");
    (stderr, started.elapsed())
}

fn modified(dir: &std::path::Path) -> Vec<(String, SystemTime)> {
    ["kube-apiserver", "etcd", "kubectl", ".stamp"]
        .iter()
        .map(|name| {
            (
                name.to_string(),
                std::fs::metadata(dir.join(name))
                    .and_then(|m| m.modified())
                    .expect(name),
            )
        })
        .collect()
}

#[test]
fn a_second_run_with_nothing_changed_rebuilds_nothing() {
    run(); // builds if needed (cold in CI, or when the Go sources changed)
    let (stderr, _) = run();
    let dir: PathBuf = stderr
        .lines()
        .find_map(|l| l.strip_prefix("build-k8s: up to date in "))
        .unwrap_or_else(|| panic!("the second run did not report up to date:\n{stderr}"))
        .trim()
        .into();
    let before = modified(&dir);
    let (stderr, took) = run();
    assert!(stderr.contains("up to date"), "{stderr}");
    assert_eq!(
        modified(&dir),
        before,
        "a binary or the stamp was rewritten"
    );
    assert!(
        took < Duration::from_secs(10),
        "an up-to-date check took {took:?}"
    );
}
