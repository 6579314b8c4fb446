//! The engine as a library, against a real Redis: staleness, diffing on apply, series removal.

mod support;

use std::time::{Duration, Instant};

use healthgate::api::HealthPolicySpec;
use healthgate::engine::{Engine, PolicyKey, PolicySnapshot};
use healthgate::health::{Overall, State};
use healthgate::metrics::Metrics;
use healthgate::policy::{Policy, UrlResolver, validate};
use support::services::Redis;

struct NoEnv;

impl UrlResolver for NoEnv {
    fn resolve(&self, _: &healthgate::api::UrlFrom) -> Result<String, String> {
        Err("not used".into())
    }

    fn resolve_ca(&self, _: &healthgate::api::CaFrom) -> Result<String, String> {
        Err("not used".into())
    }
}

fn policy(yaml: &str) -> Policy {
    let spec: HealthPolicySpec = serde_saphyr::from_str(yaml).unwrap();
    validate(&spec, &NoEnv).unwrap()
}

async fn wait_for(
    engine: &Engine,
    key: &PolicyKey,
    what: &str,
    cond: impl Fn(&PolicySnapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = engine.snapshot(key).expect("policy running");
        if cond(&report) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_older_than_max_staleness_is_unknown() {
    let redis = Redis::start();
    let engine = Engine::new(Metrics::new().checks);
    let key = PolicyKey::new("ns", "stale");
    let yaml = format!(
        "maxStaleness: 2s\ndefaults: {{interval: 500ms, timeout: 500ms}}\ndependencies:\n  \
         - {{name: cache, type: redis, redis: {{url: '{}'}}}}\n  \
         - {{name: extra, type: redis, critical: false, redis: {{url: '{}'}}}}",
        redis.url(),
        redis.url()
    );
    engine.apply(&key, policy(&yaml));
    wait_for(&engine, &key, "ok", |r| r.overall == Overall::Ok).await;

    let later = Instant::now() + Duration::from_secs(3);
    let stale = engine.snapshot_at(&key, later).unwrap();
    assert_eq!(stale.dependency("cache").unwrap().state, State::Unknown);
    assert_eq!(stale.dependency("extra").unwrap().state, State::Unknown);
    assert_eq!(
        stale.overall,
        Overall::Down,
        "a critical unknown downs the policy"
    );
    // The stale view still says when the last result was taken.
    assert!(!stale.dependency("cache").unwrap().never_checked());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_restarts_only_what_changed_and_removes_series() {
    let redis = Redis::start();
    let metrics = Metrics::new();
    let engine = Engine::new(metrics.checks.clone());
    let key = PolicyKey::new("ns", "diff");
    let base = format!(
        "defaults: {{interval: 200ms, timeout: 500ms}}\ndependencies:\n  \
         - {{name: a, type: redis, redis: {{url: '{url}'}}}}\n  \
         - {{name: b, type: redis, redis: {{url: '{url}'}}}}\n",
        url = redis.url()
    );
    let changes = engine.apply(&key, policy(&base));
    assert_eq!(changes.started, ["a", "b"]);
    wait_for(&engine, &key, "ok", |r| r.overall == Overall::Ok).await;

    // Same policy again: nothing restarts (level-triggered, idempotent).
    let changes = engine.apply(&key, policy(&base));
    assert_eq!(changes.unchanged, ["a", "b"]);
    assert!(
        changes.started.is_empty() && changes.restarted.is_empty() && changes.stopped.is_empty()
    );

    // Change b's interval, drop a, add c.
    let edited = format!(
        "defaults: {{interval: 200ms, timeout: 500ms}}\ndependencies:\n  \
         - {{name: b, type: redis, interval: 300ms, redis: {{url: '{url}'}}}}\n  \
         - {{name: c, type: tcp, tcp: {{address: '127.0.0.1:{port}'}}}}\n",
        url = redis.url(),
        port = redis.port
    );
    let changes = engine.apply(&key, policy(&edited));
    assert_eq!(changes.restarted, ["b"]);
    assert_eq!(changes.started, ["c"]);
    assert_eq!(changes.stopped, ["a"]);
    // b keeps its last result across the restart (same target), so readiness never blips.
    let snapshot = engine.snapshot(&key).unwrap();
    assert_eq!(snapshot.dependency("b").unwrap().state, State::Ok);
    wait_for(&engine, &key, "c ok", |r| {
        r.dependency("c").is_some_and(|c| c.state == State::Ok)
    })
    .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics.render();
    assert!(
        !text.contains(r#"name="a""#),
        "series of a removed dependency remain:\n{text}"
    );
    assert!(
        text.contains(r#"dependency_up{name="b",namespace="ns",policy="diff"} 1"#),
        "{text}"
    );

    assert!(engine.remove(&key));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics.render();
    assert!(
        !text.contains(r#"policy="diff""#),
        "series of a removed policy remain:\n{text}"
    );
    engine.shutdown().await;
}
