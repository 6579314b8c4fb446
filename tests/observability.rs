//! Metrics checked with the real Prometheus tools: `promtool check metrics` on a running
//! healthgate's /metrics, and (in `dashboard`) every Grafana panel query run against a real
//! Prometheus that scraped it.

mod support;

use std::time::Duration;

use support::healthgate::Healthgate;
use support::services::{Postgres, Redis};
use support::tools::promtool;

/// A policy exercising every dependency kind that standalone mode can check for real here.
fn policy() -> String {
    "apiVersion: healthgate.dev/v1alpha1\nkind: HealthPolicy\nmetadata: {name: obs, namespace: shop}\nspec:\n  \
     defaults: {interval: 300ms, timeout: 500ms}\n  dependencies:\n    \
     - {name: postgres, type: postgres, postgres: {urlFrom: {env: PG_URL}}}\n    \
     - {name: redis, type: redis, redis: {urlFrom: {env: REDIS_URL}}}\n    \
     - {name: jobs, type: redisQueue, redisQueue: {urlFrom: {env: REDIS_URL}, key: jobs, degradedAbove: 5, downAbove: 10}}\n    \
     - {name: nothing-listens, type: tcp, critical: false, tcp: {address: \"127.0.0.1:1\"}}\n"
        .to_string()
}

/// A healthgate with real dependencies that has served every route, so every family has series.
fn busy_healthgate(pg: &Postgres, redis: &Redis) -> Healthgate {
    redis.cmd::<i64>(&["RPUSH", "jobs", "a", "b", "c"]);
    let hg = Healthgate::start(
        &policy(),
        &[
            ("PG_URL", &pg.url()),
            ("REDIS_URL", &redis.url()),
            ("DATABASE_URL", &pg.url()),
        ],
        &[],
    );
    hg.wait_until("all checks ran", Duration::from_secs(15), |hg| {
        hg.try_get("/ready").is_ok_and(|r| {
            let body = r.json();
            ["postgres", "redis", "jobs", "nothing-listens"]
                .iter()
                .all(|name| !body["checks"][name]["checked_at"].is_null())
        })
    });
    hg.wait_until("users table migrated", Duration::from_secs(15), |hg| {
        hg.try_get("/api/users/nobody")
            .is_ok_and(|r| r.status == 404)
    });
    for path in ["/health", "/ready", "/ready/shop/obs", "/no/such/route"] {
        hg.get(path);
    }
    hg
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let hg = busy_healthgate(&pg, &redis);
    let text = hg.get("/metrics").body;

    let lint = promtool(&["check", "metrics"], Some(&text), None);
    assert_eq!(
        (lint.code, lint.stdout.trim(), lint.stderr.trim()),
        (0, "", ""),
        "promtool check metrics on:\n{text}"
    );

    // Every family is documented and typed, and the ones a standalone run produces are there.
    for family in [
        "http_requests_total",
        "http_request_duration_seconds",
        "dependency_up",
        "db_pool_connections",
        "healthgate_check_duration_seconds",
        "healthgate_check_results_total",
        "healthgate_check_last_run_timestamp_seconds",
        "healthgate_dependency_state",
        "healthgate_policy_status",
        "healthgate_queue_depth",
        "healthgate_reconciles_total",
        "healthgate_leader",
        "healthgate_status_writes_total",
        "healthgate_trace_spans_dropped_total",
        "healthgate_trace_spans_exported_total",
    ] {
        assert!(
            text.contains(&format!("\n# HELP {family} "))
                || text.starts_with(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{text}"
        );
        assert!(
            text.contains(&format!("\n# TYPE {family} ")),
            "no TYPE for {family}:\n{text}"
        );
    }
    let sample = |series: &str| hg.metric(series);
    assert_eq!(
        sample(r#"healthgate_queue_depth{name="jobs",namespace="shop",policy="obs"}"#),
        Some(3.0)
    );
    let now = chrono::Utc::now().timestamp() as f64;
    let last_run = sample(
        r#"healthgate_check_last_run_timestamp_seconds{name="postgres",namespace="shop",policy="obs"}"#,
    )
    .expect("last-run timestamp of postgres");
    assert!(
        (now - last_run).abs() < 10.0,
        "last run {last_run}, now {now}"
    );
    assert!(
        sample(r#"http_requests_total{method="GET",route="unmatched",status="404"}"#)
            .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        !text.contains("/no/such/route"),
        "raw paths never become labels"
    );
    assert!(
        !text.contains(support::services::PG_PASSWORD),
        "a credential leaked into /metrics"
    );
}
