//! Maintenance windows against a real Redis: inside a window a failing dependency degrades the
//! service instead of downing it, and the window's end takes effect at once. Standalone on the
//! real binary, and in Kubernetes mode on the real API server (status, Events).

mod support;

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::Value;
use support::healthgate::Healthgate;
use support::kube_env::{SETTLE, condition_status, env};
use support::policy;
use support::services::{Redis, free_port};

/// An RFC 3339 time `offset` from now (negative: in the past), whole seconds.
fn at(offset: chrono::Duration) -> String {
    (Utc::now() + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A window end `offset` from now: the instant, and as written in the policy.
fn end_in(offset: chrono::Duration) -> (chrono::DateTime<Utc>, String) {
    let text = at(offset);
    let instant = chrono::DateTime::parse_from_rfc3339(&text)
        .unwrap()
        .to_utc();
    (instant, text)
}

/// `document` with `windows` as its spec.maintenance.
fn with_maintenance(document: &str, windows: &str) -> String {
    document.replace(
        "  dependencies:\n",
        &format!("  maintenance: {windows}\n  dependencies:\n"),
    )
}

#[test]
fn a_failing_dependency_degrades_inside_a_window_and_downs_when_it_closes() {
    let mut redis = Redis::start();
    let closed_port = free_port();
    let (ends, ends_text) = end_in(chrono::Duration::seconds(8));
    let deps = policy::redis("cache", &policy::inline(&redis.url()))
        + &policy::tcp("legacy", &format!("127.0.0.1:{closed_port}"), true);
    let windows = format!(
        "[{{start: '{}', end: '{}', dependencies: [cache]}}, \
         {{schedule: '* * * * *', duration: 1h, timeZone: Europe/Berlin, dependencies: [legacy]}}]",
        at(chrono::Duration::minutes(-1)),
        ends_text,
    );
    let hg = Healthgate::start(
        &with_maintenance(&policy::fast("shop", &deps), &windows),
        &[],
        &[],
    );
    // `legacy` never answers, but a recurring window (every minute, open an hour) covers it:
    // degraded, so the service is too (207), where it would be down (503) without the window.
    hg.wait_until("legacy held by its window, cache checked", SETTLE, |hg| {
        let body = hg.get("/ready").json();
        body["checks"]["legacy"]["reason"] == "maintenance"
            && body["checks"]["cache"]["status"] == "ok"
    });
    let ready = hg.get("/ready");
    assert_eq!(ready.status, 207, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["checks"]["legacy"]["status"], "degraded", "{body:#}");
    assert_eq!(body["checks"]["cache"]["status"], "ok", "{body:#}");

    redis.stop();
    hg.wait_until("cache held by its window", SETTLE, |hg| {
        hg.get("/ready").json()["checks"]["cache"]["reason"] == "maintenance"
    });
    let ready = hg.get("/ready");
    assert_eq!(ready.status, 207, "{}", ready.body);
    let body = ready.json();
    let cache = &body["checks"]["cache"];
    assert_eq!(cache["status"], "degraded", "{body:#}");
    assert_eq!(cache["reason"], "maintenance", "{body:#}");
    assert!(
        cache["error"].is_string(),
        "the failure is still shown: {body:#}"
    );
    let until = cache["maintenance_until"].as_str().unwrap_or_default();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(until).map(|t| t.to_utc()),
        Ok(ends),
        "{body:#}"
    );
    assert_eq!(
        hg.metric(r#"healthgate_maintenance_active{name="cache",namespace="",policy="shop"}"#),
        Some(1.0)
    );

    // The window closes: down at once (the cached answer expires at the boundary), without
    // waiting for another check.
    let took = hg.wait_ready_status(503, SETTLE);
    let late = Utc::now() - ends;
    assert!(
        late < chrono::Duration::milliseconds(1500),
        "503 {late:?} after the window closed (waited {took:?})"
    );
    let body = hg.get("/ready").json();
    assert_eq!(body["checks"]["cache"]["reason"], "connect", "{body:#}");
    assert!(body["checks"]["cache"]["maintenance_until"].is_null());
    assert_eq!(body["checks"]["legacy"]["reason"], "maintenance");
    assert_eq!(
        hg.metric(r#"healthgate_maintenance_active{name="cache",namespace="",policy="shop"}"#),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_shows_in_status_and_its_start_and_end_are_events() {
    let env = env("maintenance").await;
    let mut redis = Redis::start();
    let _hg = env.start("hg-0");
    let (ends, ends_text) = end_in(chrono::Duration::seconds(12));
    let windows = format!(
        "[{{start: '{}', end: '{ends_text}'}}]",
        at(chrono::Duration::minutes(-1)),
    );
    env.apply(&with_maintenance(
        &policy::fast(
            "shop",
            &policy::redis("cache", &policy::inline(&redis.url())),
        ),
        &windows,
    ));
    env.wait_policy("shop", "Maintenance True", |p| {
        condition_status(p, "Maintenance").as_deref() == Some("True")
            && condition_status(p, "Ready").as_deref() == Some("True")
    });

    redis.stop();
    let held = env.wait_policy("shop", "cache held for maintenance", |p| {
        p["status"]["dependencies"][0]["reason"] == "maintenance"
    });
    assert_eq!(held["status"]["dependencies"][0]["state"], "degraded");
    assert_eq!(
        condition_status(&held, "Ready").as_deref(),
        Some("True"),
        "{held:#}"
    );
    let started = wait_event(&env, "MaintenanceStarted");
    assert!(
        started["note"]
            .as_str()
            .unwrap_or_default()
            .contains("cache until"),
        "{started:#}"
    );
    assert_eq!(started["type"], "Normal");
    assert!(
        env.events_with_reason("shop", "DependencyDown").is_empty(),
        "planned downtime is not an outage"
    );

    // The window closes while Redis is still down: the outage is real from then on.
    let ended = env.wait_policy("shop", "Ready False after the window", |p| {
        condition_status(p, "Ready").as_deref() == Some("False")
    });
    assert!(Utc::now() >= ends, "not before the window's end");
    assert_eq!(
        condition_status(&ended, "Maintenance").as_deref(),
        Some("False")
    );
    wait_event(&env, "MaintenanceEnded");
    let down = wait_event(&env, "DependencyDown");
    assert_eq!(down["note"], "cache is down (connect)");
}

fn wait_event(env: &support::kube_env::Env<'_>, reason: &str) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(event) = env.events_with_reason("shop", reason).into_iter().next() {
            return event;
        }
        assert!(Instant::now() < deadline, "no {reason} Event");
        std::thread::sleep(Duration::from_millis(200));
    }
}
