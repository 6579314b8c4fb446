//! The checkers' metrics. Every series a checker writes is removed by [`CheckMetrics::remove`]
//! when it stops, and a policy's status series when the policy goes, so a deleted dependency
//! leaves nothing behind on /metrics.

use std::time::Duration;

use chrono::Utc;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::PolicyKey;
use crate::checks::Observation;
use crate::health::{Outcome, Overall, State};
use crate::metrics::registered;

/// Check latencies span sub-millisecond pings to multi-second timeouts.
const CHECK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// How late a check starts: a healthy scheduler stays in the lowest buckets; seconds mean the
/// process cannot keep up with its checks.
const LAG_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const DEPENDENCY_LABELS: &[&str] = &["namespace", "policy", "name"];
const KIND_LABELS: &[&str] = &["namespace", "policy", "name", "type"];

#[derive(Clone)]
pub struct CheckMetrics {
    dependency_up: IntGaugeVec,
    check_duration: HistogramVec,
    check_results: IntCounterVec,
    dependency_state: IntGaugeVec,
    policy_status: IntGaugeVec,
    queue_depth: IntGaugeVec,
    cert_expiry: IntGaugeVec,
    check_last_run: IntGaugeVec,
    cascade_active: IntGaugeVec,
    maintenance_active: IntGaugeVec,
    upstream: IntGaugeVec,
    /// One series each, not per dependency: with 10,000 checks, per-check series of these would
    /// be most of /metrics and say little the duration histogram does not.
    check_lag: Histogram,
    checks_running: IntGauge,
}

/// The label values of one checker, fixed for its life.
pub struct CheckLabels {
    namespace: String,
    policy: String,
    name: String,
    kind: &'static str,
    /// `(result, reason)` pairs written so far, so [`CheckMetrics::remove`] finds them all.
    results: Vec<(&'static str, &'static str)>,
    /// The policy a `type: policy` dependency names.
    upstream: Option<String>,
}

impl CheckLabels {
    pub fn new(key: &PolicyKey, name: &str, kind: &'static str) -> Self {
        Self {
            namespace: key.namespace.clone(),
            policy: key.name.clone(),
            name: name.to_string(),
            kind,
            results: Vec::new(),
            upstream: None,
        }
    }

    fn dependency(&self) -> [&str; 3] {
        [&self.namespace, &self.policy, &self.name]
    }

    fn with_kind(&self) -> [&str; 4] {
        [&self.namespace, &self.policy, &self.name, self.kind]
    }
}

impl CheckMetrics {
    pub fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(
                registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Self {
            dependency_up: gauge(
                "dependency_up",
                "1 if the dependency's last check succeeded (ok or degraded), else 0.",
                DEPENDENCY_LABELS,
            ),
            check_duration: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "healthgate_check_duration_seconds",
                        "Duration of one dependency check, in seconds.",
                    )
                    .buckets(CHECK_BUCKETS.to_vec()),
                    KIND_LABELS,
                )
                .expect("valid metric"),
            ),
            check_results: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "healthgate_check_results_total",
                        "Dependency check results by outcome and reason.",
                    ),
                    &["namespace", "policy", "name", "type", "result", "reason"],
                )
                .expect("valid metric"),
            ),
            dependency_state: gauge(
                "healthgate_dependency_state",
                "Reported state of a dependency after thresholds: 1 for the current state, 0 for the others.",
                &["namespace", "policy", "name", "state"],
            ),
            policy_status: gauge(
                "healthgate_policy_status",
                "Aggregated readiness of a policy: 1 for the current status (ok, degraded, down), 0 for the others.",
                &["namespace", "policy", "status"],
            ),
            queue_depth: gauge(
                "healthgate_queue_depth",
                "Messages waiting in a checked queue (list length, stream length or pending entries) when it was last read.",
                DEPENDENCY_LABELS,
            ),
            cert_expiry: gauge(
                "healthgate_tls_cert_expiry_timestamp_seconds",
                "Unix time at which the certificate a TLS check was last shown expires (notAfter), in seconds.",
                DEPENDENCY_LABELS,
            ),
            check_last_run: gauge(
                "healthgate_check_last_run_timestamp_seconds",
                "Unix time at which the dependency's last check finished, in seconds.",
                DEPENDENCY_LABELS,
            ),
            cascade_active: gauge(
                "healthgate_cascade_protection_active",
                "1 while cascade protection holds this critical dependency (down on enough replicas, counted as non-critical), else 0. Only for policies with cascadeProtection enabled.",
                DEPENDENCY_LABELS,
            ),
            upstream: gauge(
                "healthgate_dependency_upstream",
                "1 for a type: policy dependency, naming the policy it depends on (label upstream), so alerts can tell a dependency down because of its upstream.",
                &["namespace", "policy", "name", "upstream"],
            ),
            maintenance_active: gauge(
                "healthgate_maintenance_active",
                "1 while a maintenance window covering this dependency is open (a failure then degrades instead of downing), else 0. Only for policies with maintenance windows.",
                DEPENDENCY_LABELS,
            ),
            check_lag: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "healthgate_check_lag_seconds",
                        "How late checks start: actual start minus planned start, in seconds.",
                    )
                    .buckets(LAG_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            checks_running: registered(
                registry,
                IntGauge::new(
                    "healthgate_checks_running",
                    "Probe runs in progress now (a run shared by identical checks counts once).",
                )
                .expect("valid metric"),
            ),
        }
    }

    pub fn observe_lag(&self, lag: Duration) {
        self.check_lag.observe(lag.as_secs_f64());
    }

    pub fn running(&self) -> &IntGauge {
        &self.checks_running
    }

    /// One finished check run.
    pub fn record(
        &self,
        labels: &mut CheckLabels,
        observation: &Observation,
        state: State,
        latency: Duration,
    ) {
        self.check_duration
            .with_label_values(&labels.with_kind())
            .observe(latency.as_secs_f64());
        let result = outcome_str(observation.outcome);
        let reason = observation.reason.as_str();
        let [ns, policy, name, kind] = labels.with_kind();
        self.check_results
            .with_label_values(&[ns, policy, name, kind, result, reason])
            .inc();
        if !labels.results.contains(&(result, reason)) {
            labels.results.push((result, reason));
        }
        let dependency = labels.dependency();
        self.dependency_up
            .with_label_values(&dependency)
            .set(i64::from(observation.outcome != Outcome::Down));
        self.check_last_run
            .with_label_values(&dependency)
            .set(Utc::now().timestamp());
        if let Some(depth) = observation.queue_depth {
            self.queue_depth
                .with_label_values(&dependency)
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        if let Some(not_after) = observation.cert_not_after {
            self.cert_expiry
                .with_label_values(&dependency)
                .set(not_after);
        }
        let [ns, policy, name] = dependency;
        for candidate in State::ALL {
            self.dependency_state
                .with_label_values(&[ns, policy, name, candidate.as_str()])
                .set(i64::from(candidate == state));
        }
    }

    /// Every series [`CheckMetrics::record`] wrote for these labels.
    pub fn remove(&self, labels: &CheckLabels) {
        let _ = self.check_duration.remove_label_values(&labels.with_kind());
        let [ns, policy, name, kind] = labels.with_kind();
        for (result, reason) in &labels.results {
            let _ = self
                .check_results
                .remove_label_values(&[ns, policy, name, kind, result, reason]);
        }
        let dependency = labels.dependency();
        let _ = self.dependency_up.remove_label_values(&dependency);
        let _ = self.check_last_run.remove_label_values(&dependency);
        let _ = self.queue_depth.remove_label_values(&dependency);
        let _ = self.cert_expiry.remove_label_values(&dependency);
        let _ = self.cascade_active.remove_label_values(&dependency);
        let _ = self.maintenance_active.remove_label_values(&dependency);
        if let Some(upstream) = &labels.upstream {
            let [ns, policy, name] = dependency;
            let _ = self
                .upstream
                .remove_label_values(&[ns, policy, name, upstream]);
        }
        for state in State::ALL {
            let _ = self
                .dependency_state
                .remove_label_values(&[ns, policy, name, state.as_str()]);
        }
    }

    pub fn set_policy_status(&self, key: &PolicyKey, status: Overall) {
        for candidate in [Overall::Ok, Overall::Degraded, Overall::Down] {
            self.policy_status
                .with_label_values(&[&key.namespace, &key.name, candidate.as_str()])
                .set(i64::from(candidate == status));
        }
    }

    /// Written on each scrape from the snapshot; removed with the checker's other series.
    pub fn set_protection(&self, key: &PolicyKey, dependency: &str, active: bool) {
        self.cascade_active
            .with_label_values(&[&key.namespace, &key.name, dependency])
            .set(i64::from(active));
    }

    /// Marks a `type: policy` dependency for the life of its checker.
    pub fn set_upstream(&self, labels: &mut CheckLabels, upstream: &str) {
        labels.upstream = Some(upstream.to_string());
        let [ns, policy, name] = labels.dependency();
        self.upstream
            .with_label_values(&[ns, policy, name, upstream])
            .set(1);
    }

    /// Written on each scrape from the snapshot; removed with the checker's other series.
    pub fn set_maintenance(&self, key: &PolicyKey, dependency: &str, active: bool) {
        self.maintenance_active
            .with_label_values(&[&key.namespace, &key.name, dependency])
            .set(i64::from(active));
    }

    pub fn remove_policy(&self, key: &PolicyKey) {
        for status in [Overall::Ok, Overall::Degraded, Overall::Down] {
            let _ = self.policy_status.remove_label_values(&[
                &key.namespace,
                &key.name,
                status.as_str(),
            ]);
        }
    }
}

pub fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Degraded => "degraded",
        Outcome::Down => "down",
    }
}
