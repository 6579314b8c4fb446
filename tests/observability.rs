//! Metrics checked with the real Prometheus tools: `promtool check metrics` on a running
//! healthgate's /metrics, and (in `dashboard`) every Grafana panel query run against a real
//! Prometheus that scraped it.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::healthgate::{Healthgate, http_get};
use support::policy;
use support::services::{Postgres, REPO, Redis};
use support::tools::{
    Prometheus, ensure_tools, numeric_samples, panel_queries, promtool, substitute,
};

const DASHBOARD: &str = "manifests/monitoring/grafana-dashboard.json";
const DASHBOARD_CONFIGMAP: &str = "manifests/monitoring/grafana-dashboard-configmap.yaml";
/// The policy's namespace, also the `namespace` target label Prometheus adds (as Kubernetes
/// service discovery does for the pod's namespace).
const NAMESPACE: &str = "shop";
const POLICY: &str = "obs";

/// A policy exercising the dependency kinds that standalone mode can check for real here. The
/// TCP dependency is critical and nothing listens there, so /ready answers 503 and the
/// dashboard's error panels have 5xx responses to show.
fn policy() -> String {
    policy::document_in(
        "shop",
        "obs",
        policy::FAST,
        &(policy::postgres("postgres", &policy::env("PG_URL"))
            + &policy::redis("redis", &policy::env("REDIS_URL"))
            + &policy::dep(
                "jobs",
                "type: redisQueue, redisQueue: {urlFrom: {env: REDIS_URL}, key: jobs, degradedAbove: 5, downAbove: 10}",
            )
            + &policy::tcp("nothing-listens", "127.0.0.1:1", true)
            // Another policy this one depends on; standalone serves one policy, so it is down
            // (config) and the dashboard's upstream panel has a series.
            + &policy::dep(
                "payments",
                "type: policy, critical: false, policy: {name: payments}",
            )),
    )
    // A window long past: the maintenance gauge has its series, at 0.
    .replace(
        "  dependencies:\n",
        "  maintenance: [{start: '2020-01-01T00:00:00Z', end: '2020-01-01T01:00:00Z'}]\n  dependencies:\n",
    )
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
    traffic(&hg);
    hg
}

/// One round of every kind of request: probes, the users API (found, missing, invalid id),
/// metrics and an unmatched path.
fn traffic(hg: &Healthgate) {
    for path in [
        "/health",
        "/ready",
        "/ready/shop/obs",
        "/api/users/nobody",
        "/api/users/bad.id",
        "/metrics",
        "/no/such/route",
    ] {
        hg.get(path);
    }
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
        "healthgate_pod_gate_writes_total",
        "healthgate_pod_gate_last_write_age_seconds",
        "healthgate_pod_gates_pending",
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

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{REPO}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

fn substitute_vars(expr: &str) -> String {
    substitute(expr, NAMESPACE, POLICY)
}

#[test]
fn dashboard_configmap_carries_the_dashboard_json_for_the_grafana_sidecar() {
    let configmap: Value = serde_saphyr::from_str(&read(DASHBOARD_CONFIGMAP)).unwrap();
    assert_eq!(configmap["kind"], "ConfigMap");
    assert_eq!(configmap["metadata"]["labels"]["grafana_dashboard"], "1");
    let embedded = configmap["data"]["healthgate.json"]
        .as_str()
        .expect("data.healthgate.json");
    assert_eq!(
        embedded,
        read(DASHBOARD),
        "{DASHBOARD_CONFIGMAP} is out of date: embed {DASHBOARD} again"
    );
    let resources: Value =
        serde_saphyr::from_str(&read("manifests/monitoring/kustomization.yaml")).unwrap();
    assert!(
        resources["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "grafana-dashboard-configmap.yaml")
    );
}

fn type_check(path: &std::path::Path) -> std::process::Output {
    ensure_tools();
    Command::new("node")
        .arg(format!("{REPO}/tests/dashboard/check.mjs"))
        .arg(path)
        .output()
        .expect("running node")
}

#[test]
fn dashboard_type_checks_against_grafana_schema() {
    let out = type_check(&std::path::Path::new(REPO).join(DASHBOARD));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The check is real: an unknown key and a wrongly typed value are both rejected.
    let dir = tempfile::tempdir().unwrap();
    for (what, mutate) in [
        (
            "unknown panel key",
            Box::new(|d: &mut Value| d["panels"][1]["legendd"] = Value::Bool(true))
                as Box<dyn Fn(&mut Value)>,
        ),
        (
            "grid width as a string",
            Box::new(|d: &mut Value| d["panels"][1]["gridPos"]["w"] = "wide".into()),
        ),
        (
            "unknown legend placement",
            Box::new(|d: &mut Value| {
                d["panels"][1]["options"]["legend"]["placement"] = "upside-down".into()
            }),
        ),
    ] {
        let mut broken = dashboard();
        mutate(&mut broken);
        let path = dir.path().join("broken.json");
        std::fs::write(&path, serde_json::to_string_pretty(&broken).unwrap()).unwrap();
        let out = type_check(&path);
        assert!(!out.status.success(), "{what} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("error TS"),
            "{what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Panels whose metrics have no series in standalone mode: a reconcile error has a reason label
/// only once one happened. Their queries must still be valid PromQL. The other controller panels
/// are data-checked on a Kubernetes-mode healthgate in tests/observability_k8s.rs.
const KUBERNETES_ONLY: &[&str] = &["healthgate_reconcile_errors_total"];

#[test]
fn every_dashboard_panel_query_returns_data_from_a_real_prometheus() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let hg = Arc::new(busy_healthgate(&pg, &redis));
    let prom = Prometheus::start(
        &[format!("127.0.0.1:{}", hg.port)],
        &[("namespace", NAMESPACE)],
    );
    // Steady traffic while Prometheus scrapes, as a live service has.
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::spawn({
        let (hg, stop) = (hg.clone(), stop.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                traffic(&hg);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });

    // The variables resolve to this healthgate's policy.
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let names: BTreeSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["datasource", "namespace", "policy"]));
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 15, "{} panel queries", queries.len());

    let deadline = Instant::now() + Duration::from_secs(45);
    let missing = loop {
        let mut missing = Vec::new();
        for variable in variables.iter().filter(|v| v["type"] == "query") {
            let definition = variable["query"]["query"].as_str().unwrap();
            let (selector, label) = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|inner| inner.rsplit_once(", "))
                .unwrap_or_else(|| panic!("unexpected variable query {definition}"));
            let answer = prom.series(&substitute_vars(selector));
            let values: BTreeSet<String> = answer
                .iter()
                .filter_map(|s| s[label].as_str().map(String::from))
                .collect();
            let want = if label == "namespace" {
                NAMESPACE
            } else {
                POLICY
            };
            if !values.contains(want) {
                missing.push(format!("variable {}: {values:?}", variable["name"]));
            }
        }
        for query in &queries {
            let expr = substitute_vars(&query.expr);
            let answer = prom.query_range(&expr, 30, 1);
            assert_eq!(
                answer["status"], "success",
                "{}: {expr} is not valid PromQL: {answer}",
                query.panel
            );
            let kubernetes_only = KUBERNETES_ONLY.iter().any(|m| expr.contains(m));
            if !kubernetes_only && numeric_samples(&answer) == 0 {
                missing.push(format!("{}: {expr}", query.panel));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(prom.target_health(), ["up"], "{}", prom.log());
    assert!(
        missing.is_empty(),
        "queries without data:\n{}\n/metrics:\n{}",
        missing.join("\n"),
        http_get(hg.port, "/metrics", Duration::from_secs(5))
            .unwrap()
            .body
    );
    // The panels' data is this healthgate's: the readiness panel shows the dead TCP
    // dependency as down (3) and postgres as ok (1).
    let states = prom.query(&substitute_vars(
        &queries
            .iter()
            .find(|q| q.panel.starts_with("Readiness state per dependency"))
            .unwrap()
            .expr,
    ));
    let state_of = |name: &str| {
        states["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["metric"]["name"] == name)
            .map(|s| s["value"][1].as_str().unwrap().to_string())
    };
    assert_eq!(
        state_of("nothing-listens").as_deref(),
        Some("3"),
        "{states}"
    );
    assert_eq!(state_of("postgres").as_deref(), Some("1"), "{states}");
}
