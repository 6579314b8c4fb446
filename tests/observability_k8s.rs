//! The dashboard's controller panels (reconciles, leader, status writes) on a healthgate in
//! Kubernetes mode: a real kube-apiserver, a real Prometheus scraping the controller, and each
//! controller panel query returning this controller's data.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::kube_env::{SETTLE, env};
use support::policy;
use support::services::{REPO, Redis};
use support::tools::{Prometheus, numeric_samples, panel_queries, substitute};

/// The panels whose data only Kubernetes mode produces.
const CONTROLLER_METRICS: &[&str] = &[
    "healthgate_reconciles_total",
    "healthgate_leader",
    "healthgate_status_writes_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_panels_show_a_kubernetes_mode_healthgate() {
    let env = env("dashboard").await;
    let redis = Redis::start();
    let hg = env.start("hg-0");
    let redis_url = policy::inline(&redis.url());
    env.apply(&policy::fast("shop", &policy::redis("cache", &redis_url)));
    hg.wait_until("the policy served", SETTLE, |hg| {
        hg.try_get(&format!("/ready/{}/shop", env.ns))
            .is_ok_and(|r| r.status == 200)
    });
    hg.wait_until("leadership", SETTLE, |hg| {
        hg.metric("healthgate_leader") == Some(1.0)
    });
    let prom = Prometheus::start(
        &[format!("127.0.0.1:{}", hg.port)],
        &[("namespace", env.ns.as_str())],
    );

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{REPO}/manifests/monitoring/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let queries: Vec<_> = panel_queries(&dashboard)
        .into_iter()
        .filter(|q| CONTROLLER_METRICS.iter().any(|m| q.expr.contains(m)))
        .collect();
    assert_eq!(queries.len(), 3, "reconciles, leader, status writes");

    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let missing: Vec<String> = queries
            .iter()
            .filter_map(|q| {
                let expr = substitute(&q.expr, &env.ns, "shop");
                let answer = prom.query_range(&expr, 30, 1);
                assert_eq!(answer["status"], "success", "{expr}: {answer}");
                (numeric_samples(&answer) == 0).then(|| format!("{}: {expr}", q.panel))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "controller panels without data:\n{}\n{}",
            missing.join("\n"),
            prom.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The leader panel shows this replica leading.
    let leader = prom.query(&format!(
        "max by (instance) (healthgate_leader{{namespace=~\"{}\"}})",
        env.ns
    ));
    assert_eq!(leader["data"]["result"][0]["value"][1], "1", "{leader}");
    let reconciled = prom.query(&format!(
        "sum(healthgate_reconciles_total{{namespace=~\"{}\", result=\"success\"}})",
        env.ns
    ));
    let count: f64 = reconciled["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{reconciled}");
    let writes = prom.query(&format!(
        "sum(healthgate_status_writes_total{{namespace=~\"{}\"}})",
        env.ns
    ));
    let written: f64 = writes["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(written >= 1.0, "the leader wrote status: {writes}");
}
