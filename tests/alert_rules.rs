//! The PrometheusRule in manifests/monitoring, proven with promtool: its `.spec` passes
//! `promtool check rules` and the unit tests in tests/alerts/rules.test.yaml.

mod support;

use std::collections::BTreeSet;

use support::services::REPO;
use support::tools::promtool;

fn yaml(path: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(format!("{REPO}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Writes the rule groups (the PrometheusRule's `.spec`) and the unit tests into a temp dir.
fn rules_dir() -> tempfile::TempDir {
    let rule = yaml("manifests/monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML, so the spec is written as promtool reads it without re-encoding to YAML.
    std::fs::write(
        dir.path().join("healthgate-rules.yaml"),
        serde_json::to_string_pretty(&rule["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        format!("{REPO}/tests/alerts/rules.test.yaml"),
        dir.path().join("rules.test.yaml"),
    )
    .unwrap();
    dir
}

#[test]
fn prometheus_rule_passes_promtool_check_rules() {
    let dir = rules_dir();
    let out = promtool(
        &["check", "rules", "healthgate-rules.yaml"],
        None,
        Some(dir.path()),
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("SUCCESS"), "{}", out.stdout);
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let dir = rules_dir();
    let out = promtool(
        &["test", "rules", "rules.test.yaml"],
        None,
        Some(dir.path()),
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("SUCCESS"), "{}", out.stdout);
}

#[test]
fn every_alert_has_a_unit_test_that_sees_it_fire() {
    let rule = yaml("manifests/monitoring/prometheusrule.yaml");
    let alerts: BTreeSet<String> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    for required in [
        "HealthgateDependencyDown",
        "HealthgateDependencyDegraded",
        "HealthgateHighErrorRatio",
        "HealthgateLatencySLOBurnFast",
        "HealthgateChecksStale",
        "HealthgateReconcileErrors",
    ] {
        assert!(alerts.contains(required), "{required} missing: {alerts:?}");
    }
    let tests = yaml("tests/alerts/rules.test.yaml");
    let fired: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .filter(|case| {
            case["exp_alerts"]
                .as_array()
                .is_some_and(|alerts| !alerts.is_empty())
        })
        .filter_map(|case| case["alertname"].as_str().map(String::from))
        .collect();
    let untested: Vec<_> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts never seen firing in a unit test: {untested:?}"
    );
}

#[test]
fn service_monitor_scrapes_metrics_and_keeps_policy_namespaces() {
    let monitor = yaml("manifests/monitoring/servicemonitor.yaml");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["honorLabels"], true);
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "healthgate"
    );
    let kustomization = yaml("manifests/monitoring/kustomization.yaml");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for file in ["servicemonitor.yaml", "prometheusrule.yaml"] {
        assert!(resources.contains(&file), "{resources:?}");
    }
}
