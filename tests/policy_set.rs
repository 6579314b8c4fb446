//! Standalone mode with a set of policies: a directory of policy files and multi-document files,
//! reloaded as one set, with `type: policy` dependencies between them. Real Redis, real binary.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::healthgate::{Healthgate, bin};
use support::kube_env::SETTLE;
use support::policy;
use support::services::Redis;

fn document(name: &str, dependencies: &str) -> String {
    policy::document_in("shop", name, policy::FAST, dependencies)
}

fn on_policy(name: &str, upstream: &str) -> String {
    policy::dep(name, &format!("type: policy, policy: {{name: {upstream}}}"))
}

fn write(dir: &Path, file: &str, text: &str) {
    // Written aside and renamed, as editors and ConfigMap volumes do, so no poll sees half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[test]
fn a_directory_of_policies_is_served_and_reloaded_as_one_set() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = policy::redis("cache", &policy::inline(&redis.url()));
    write(dir.path(), "payments.yaml", &document("payments", &cache));
    write(
        dir.path(),
        "checkout.yaml",
        &document("checkout", &on_policy("payments", "payments")),
    );
    // Two policies in one file, separated by `---`.
    write(
        dir.path(),
        "more.yml",
        &format!(
            "{}---\n{}",
            document("inventory", &cache),
            document("search", &cache)
        ),
    );
    let hg = Healthgate::start_path(dir.path(), &[], &[]);
    hg.wait_ready_status(200, SETTLE);
    let body = hg.get("/ready").json();
    for check in [
        "shop/payments/cache",
        "shop/checkout/payments",
        "shop/inventory/cache",
        "shop/search/cache",
    ] {
        assert_eq!(body["checks"][check]["status"], "ok", "{check}: {body:#}");
    }

    // Both policies started together: checkout waited for payments' first result instead of
    // reporting the never-checked cache as an outage.
    let metrics = hg.get("/metrics").body;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("healthgate_check_results_total{")
                && l.contains(r#"name="payments""#)
                && l.contains(r#"result="down""#)),
        "checkout saw a down at start-up:\n{metrics}"
    );

    // The cache goes: checkout is down because of payments, and says why.
    redis.stop();
    hg.wait_until("checkout down because of payments", SETTLE, |hg| {
        hg.get("/ready/shop/checkout").json()["checks"]["payments"]["reason"] == "upstream"
    });
    let checkout = hg.get("/ready/shop/checkout");
    assert_eq!(checkout.status, 503, "{}", checkout.body);
    let error = checkout.json()["checks"]["payments"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.starts_with("policy shop/payments is down: cache is down (connect: "),
        "{error}"
    );
    redis.restart();
    hg.wait_ready_status(200, SETTLE);

    // A file removed: its policies go; the others keep running.
    std::fs::remove_file(dir.path().join("more.yml")).unwrap();
    hg.wait_until("inventory and search removed", SETTLE, |hg| {
        hg.get("/ready/shop/inventory").status == 404 && hg.get("/ready/shop/search").status == 404
    });
    assert_eq!(hg.get("/ready/shop/payments").status, 200);

    // A file that would close a cycle is refused with its field path; the last good set stays.
    write(
        dir.path(),
        "loop.yaml",
        &document("payments-audit", &on_policy("checkout", "checkout")),
    );
    write(
        dir.path(),
        "checkout.yaml",
        &document(
            "checkout",
            &(on_policy("payments", "payments") + &on_policy("audit", "payments-audit")),
        ),
    );
    hg.wait_until("the cycle reported", SETTLE, |hg| {
        hg.logs()
            .join("\n")
            .contains("closes a cycle of policy dependencies")
    });
    let logs = hg.logs().join("\n");
    assert!(
        logs.contains(
            "checkout.yaml: spec.dependencies[1].policy.name: closes a cycle of policy \
             dependencies: checkout → payments-audit → checkout"
        ),
        "{logs}"
    );
    assert_eq!(hg.get("/ready/shop/payments-audit").status, 404);
    let checkout = hg.get("/ready/shop/checkout").json();
    assert!(checkout["checks"]["audit"].is_null(), "{checkout:#}");

    // A new valid file is picked up.
    std::fs::remove_file(dir.path().join("loop.yaml")).unwrap();
    write(
        dir.path(),
        "checkout.yaml",
        &document("checkout", &on_policy("payments", "payments")),
    );
    write(dir.path(), "ledger.yaml", &document("ledger", &cache));
    hg.wait_until("ledger served", Duration::from_secs(10), |hg| {
        hg.get("/ready/shop/ledger").status == 200
    });
}

#[test]
fn check_refuses_a_set_with_duplicates_or_cycles_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = policy::tcp("db", "127.0.0.1:1", true);
    write(dir.path(), "a.yaml", &document("a", &on_policy("b", "b")));
    write(
        dir.path(),
        "b.yaml",
        &format!(
            "{}---\n{}",
            document("b", &on_policy("a", "a")),
            document("a", &tcp)
        ),
    );
    let out = Command::new(bin())
        .args(["check", "--policy"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("b.yaml: policy shop/a is already defined in a.yaml"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "a.yaml: spec.dependencies[0].policy.name: closes a cycle of policy dependencies: \
             a → b → a"
        ),
        "{stderr}"
    );
}

/// Redis PINGs served so far (each redis check sends one).
fn pings(redis: &Redis) -> u64 {
    let stats: String = redis.cmd(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn identical_checks_of_many_policies_share_one_probe_run_and_each_policy_sees_it() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = policy::redis("cache", &policy::inline(&redis.url()));
    let names: Vec<String> = (0..8).map(|i| format!("team-{i}")).collect();
    let set: Vec<String> = names.iter().map(|n| document(n, &cache)).collect();
    write(dir.path(), "teams.yaml", &set.join("---\n"));
    // The same target checked with another timeout is another probe run.
    write(
        dir.path(),
        "slow.yaml",
        &policy::document_in(
            "shop",
            "slow",
            "interval: 300ms, timeout: 700ms",
            &policy::redis("cache", &policy::inline(&redis.url())),
        ),
    );
    let hg = Healthgate::start_path(dir.path(), &[], &[]);
    hg.wait_ready_status(200, SETTLE);

    let window = Duration::from_secs(3);
    let before = pings(&redis);
    std::thread::sleep(window);
    let sent = pings(&redis) - before;
    // Two distinct runs (the 8 identical checks, and "slow") every 300 ms: about 20 in 3 s,
    // where 9 separate checkers would send about 90.
    let intervals = window.as_millis() as u64 / 300;
    assert!(
        (intervals..=2 * (intervals + 2)).contains(&sent),
        "{sent} PINGs in {window:?}"
    );
    let body = hg.get("/ready").json();
    let shared_at = &body["checks"]["shop/team-0/cache"]["checked_at"];
    for name in &names {
        let check = &body["checks"][format!("shop/{name}/cache")];
        assert_eq!(check["status"], "ok", "{body:#}");
        assert_eq!(
            &check["checked_at"], shared_at,
            "one run, seen by all: {body:#}"
        );
    }

    // Every policy sees the shared run fail, each through its own thresholds.
    redis.stop();
    hg.wait_until("every policy down", SETTLE, |hg| {
        names
            .iter()
            .chain([&"slow".to_string()])
            .all(|n| hg.get(&format!("/ready/shop/{n}")).status == 503)
    });
}
