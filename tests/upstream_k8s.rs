//! `type: policy` on the real API server: a policy that depends on another one is down *because
//! of* it, names the root cause, and a cycle of such dependencies is rejected with its field path
//! while the last good spec keeps running.

mod support;

use support::kube_env::{condition_status, env};
use support::policy;
use support::services::Redis;

fn on_policy(name: &str, upstream: &str) -> String {
    policy::dep(name, &format!("type: policy, policy: {{name: {upstream}}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_on_another_is_down_with_the_root_cause_and_cycles_are_rejected() {
    let env = env("upstream").await;
    let mut redis = Redis::start();
    let hg = env.start_with("hg-0", &[], &["--details", "always"]);
    let cache = policy::redis("cache", &policy::inline(&redis.url()));
    env.apply_ready("payments", &cache);
    env.apply_ready("checkout", &on_policy("payments", "payments"));

    redis.stop();
    let down = env.wait_policy("checkout", "checkout down because of payments", |p| {
        p["status"]["dependencies"][0]["state"] == "down"
    });
    assert_eq!(down["status"]["dependencies"][0]["reason"], "upstream");
    assert_eq!(condition_status(&down, "Ready").as_deref(), Some("False"));
    let ready = hg.get(&format!("/ready/{}/checkout", env.ns));
    assert_eq!(ready.status, 503, "{}", ready.body);
    let error = ready.json()["checks"]["payments"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let root = format!(
        "policy {}/payments is down: cache is down (connect: ",
        env.ns
    );
    assert!(
        error.starts_with(&root),
        "{error:?} should start with {root:?}"
    );

    // payments → checkout would close payments → checkout → payments.
    env.apply(&policy::fast(
        "payments",
        &(cache.clone() + &on_policy("checkout", "checkout")),
    ));
    let invalid = env.wait_policy("payments", "payments Invalid", |p| {
        condition_status(p, "Invalid").as_deref() == Some("True")
    });
    let message = invalid["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Invalid")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        message,
        "spec.dependencies[1].policy.name: closes a cycle of policy dependencies: \
         payments → checkout → payments"
    );
    // The last good spec keeps running: payments still checks only its cache.
    let payments = hg.get(&format!("/ready/{}/payments", env.ns)).json();
    assert!(payments["checks"]["checkout"].is_null(), "{payments:#}");

    redis.restart();
    env.wait_policy("checkout", "checkout ready again", |p| {
        condition_status(p, "Ready").as_deref() == Some("True")
    });
}
