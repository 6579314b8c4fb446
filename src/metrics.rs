//! The Prometheus registry and the typed metrics healthgate exports. Labels are bounded: route
//! templates (never raw paths), dependency names from validated policies, closed reason sets.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The request-latency buckets the dashboards and SLO alerts are written against.
pub const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Check latencies span sub-millisecond pings to multi-second timeouts.
const CHECK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub const DEPENDENCY_LABELS: &[&str] = &["namespace", "policy", "name"];

/// `result` values of `healthgate_reconciles_total`, pre-created so `rate()` has a series from
/// the first scrape on.
pub const RECONCILE_RESULTS: &[&str] = &["success", "error"];

/// `reason` values of `healthgate_trace_spans_dropped_total`: the export queue was full, or the
/// collector did not take a batch (down, slow, refused).
pub const SPAN_DROP_REASONS: &[&str] = &["queue_full", "export_failed"];

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
    pub queue_depth: IntGaugeVec,
    pub check_last_run: IntGaugeVec,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub leader: IntGauge,
    pub status_writes: IntCounter,
    pub spans_dropped: IntCounterVec,
    pub spans_exported: IntCounter,
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
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "healthgate_queue_depth",
                "Messages waiting in a checked queue (list length, stream length or pending entries) when it was last read.",
            ),
            DEPENDENCY_LABELS,
        )
        .expect("valid metric");
        let check_last_run = IntGaugeVec::new(
            Opts::new(
                "healthgate_check_last_run_timestamp_seconds",
                "Unix time at which the dependency's last check finished, in seconds.",
            ),
            DEPENDENCY_LABELS,
        )
        .expect("valid metric");
        let reconciles = IntCounterVec::new(
            Opts::new(
                "healthgate_reconciles_total",
                "HealthPolicy reconciliations by result (success, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "healthgate_reconcile_errors_total",
                "Failed HealthPolicy reconciliations by bounded error reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "healthgate_leader",
            "1 while this replica holds the leader lease and writes policy status, else 0.",
        )
        .expect("valid metric");
        let status_writes = IntCounter::new(
            "healthgate_status_writes_total",
            "HealthPolicy status updates written to the Kubernetes API.",
        )
        .expect("valid metric");
        let spans_dropped = span_exports().dropped.clone();
        let spans_exported = span_exports().exported.clone();
        for result in RECONCILE_RESULTS {
            reconciles.with_label_values(&[result]);
        }
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(dependency_up.clone()),
            Box::new(db_pool_connections.clone()),
            Box::new(check_duration.clone()),
            Box::new(check_results.clone()),
            Box::new(dependency_state.clone()),
            Box::new(policy_status.clone()),
            Box::new(queue_depth.clone()),
            Box::new(check_last_run.clone()),
            Box::new(reconciles.clone()),
            Box::new(reconcile_errors.clone()),
            Box::new(leader.clone()),
            Box::new(status_writes.clone()),
            Box::new(spans_dropped.clone()),
            Box::new(spans_exported.clone()),
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
            queue_depth,
            check_last_run,
            reconciles,
            reconcile_errors,
            leader,
            status_writes,
            spans_dropped,
            spans_exported,
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

    /// One finished reconciliation: `Ok` counts a success, `Err(reason)` an error with its
    /// bounded reason (`Error::metric_label`).
    pub fn record_reconcile(&self, outcome: Result<(), &str>) {
        match outcome {
            Ok(()) => self.reconciles.with_label_values(&["success"]).inc(),
            Err(reason) => {
                self.reconciles.with_label_values(&["error"]).inc();
                self.reconcile_errors.with_label_values(&[reason]).inc();
            }
        }
    }

    pub fn record_request(
        &self,
        method: &str,
        route: &str,
        status: warp::http::StatusCode,
        seconds: f64,
    ) {
        let labels = [method, route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(seconds);
    }
}

/// The trace exporter's counters. The exporter is process-wide and starts before any registry
/// exists, so these live in a static that every [`Metrics`] registers.
#[derive(Debug)]
pub struct SpanExportMetrics {
    pub dropped: IntCounterVec,
    pub exported: IntCounter,
}

pub fn span_exports() -> &'static SpanExportMetrics {
    static METRICS: std::sync::OnceLock<SpanExportMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let dropped = IntCounterVec::new(
            Opts::new(
                "healthgate_trace_spans_dropped_total",
                "Finished trace spans that were not exported, by reason (queue_full, export_failed).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in SPAN_DROP_REASONS {
            dropped.with_label_values(&[reason]);
        }
        let exported = IntCounter::new(
            "healthgate_trace_spans_exported_total",
            "Trace spans the OTLP collector accepted.",
        )
        .expect("valid metric");
        SpanExportMetrics { dropped, exported }
    })
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
