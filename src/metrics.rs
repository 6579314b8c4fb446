//! The Prometheus registry and the typed metrics healthgate exports. Labels are bounded: route
//! templates (never raw paths), dependency names from validated policies, closed reason sets.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The request-latency buckets the dashboards and SLO alerts are written against.
pub const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Check latencies span sub-millisecond pings to multi-second timeouts.
const CHECK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub const DEPENDENCY_LABELS: &[&str] = &["namespace", "policy", "name"];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub dependency_up: IntGaugeVec,
    pub db_pool_connections: IntGaugeVec,
    pub check_duration: HistogramVec,
    pub check_results: IntCounterVec,
    pub dependency_state: IntGaugeVec,
    pub policy_status: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests served, by method, route template and status code.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to serve an HTTP request, in seconds.",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "dependency_up",
                "1 if the dependency's last check succeeded (ok or degraded), else 0.",
            ),
            DEPENDENCY_LABELS,
        )
        .expect("valid metric");
        let db_pool_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "PostgreSQL pool connections by state (idle, active).",
            ),
            &["pool", "state"],
        )
        .expect("valid metric");
        let check_duration = HistogramVec::new(
            HistogramOpts::new(
                "healthgate_check_duration_seconds",
                "Duration of one dependency check, in seconds.",
            )
            .buckets(CHECK_BUCKETS.to_vec()),
            &["namespace", "policy", "name", "type"],
        )
        .expect("valid metric");
        let check_results = IntCounterVec::new(
            Opts::new(
                "healthgate_check_results_total",
                "Dependency check results by outcome and reason.",
            ),
            &["namespace", "policy", "name", "type", "result", "reason"],
        )
        .expect("valid metric");
        let dependency_state = IntGaugeVec::new(
            Opts::new(
                "healthgate_dependency_state",
                "Reported state of a dependency after thresholds: 1 for the current state, 0 for the others.",
            ),
            &["namespace", "policy", "name", "state"],
        )
        .expect("valid metric");
        let policy_status = IntGaugeVec::new(
            Opts::new(
                "healthgate_policy_status",
                "Aggregated readiness of a policy: 1 for the current status (ok, degraded, down), 0 for the others.",
            ),
            &["namespace", "policy", "status"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(dependency_up.clone()),
            Box::new(db_pool_connections.clone()),
            Box::new(check_duration.clone()),
            Box::new(check_results.clone()),
            Box::new(dependency_state.clone()),
            Box::new(policy_status.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            http_requests,
            http_duration,
            dependency_up,
            db_pool_connections,
            check_duration,
            check_results,
            dependency_state,
            policy_status,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format, as served on /metrics.
    pub fn render(&self) -> String {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }

    pub fn record_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
