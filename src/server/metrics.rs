//! Request metrics: one counter and one histogram, labelled by method, route template and status;
//! and connection metrics: how many are open, and the connection-level errors clients cause.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use warp::http::{Method, StatusCode};

use crate::metrics::registered;

/// The request-latency buckets the dashboards and SLO alerts are written against.
pub const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// `kind` values of `healthgate_http_connection_errors_total`.
pub const CONNECTION_ERROR_KINDS: &[&str] = &[
    "incomplete",
    "header_timeout",
    "malformed",
    "reset",
    "other",
];

/// The route templates the server labels requests with; the hot path has a handle per
/// (route, method, status) for these, so counting a probe is two atomic adds, not two label
/// lookups under a lock.
const ROUTES: &[&str] = &[
    "/health",
    "/ready",
    "/ready/{namespace}/{name}",
    "/metrics",
    "/api/users/{id}",
    super::UNMATCHED_ROUTE,
];
const METHODS: &[Method] = &[Method::GET, Method::HEAD];
const STATUSES: &[u16] = &[200, 207, 503, 404, 405, 400, 401, 403, 500];

/// One label set's series, looked up on first use.
struct Handles {
    requests: IntCounter,
    duration: Histogram,
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    handles: Arc<[OnceLock<Handles>]>,
    pub(super) connections: IntGauge,
    connection_errors: IntCounterVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Self {
        let labels = &["method", "route", "status"];
        Self {
            requests: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "http_requests_total",
                        "HTTP requests served, by method, route template and status code.",
                    ),
                    labels,
                )
                .expect("valid metric"),
            ),
            duration: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "http_request_duration_seconds",
                        "Time to serve an HTTP request, in seconds.",
                    )
                    .buckets(HTTP_BUCKETS.to_vec()),
                    labels,
                )
                .expect("valid metric"),
            ),
            handles: (0..ROUTES.len() * METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            connections: registered(
                registry,
                IntGauge::new(
                    "healthgate_http_connections",
                    "HTTP connections open now (at most --max-connections).",
                )
                .expect("valid metric"),
            ),
            connection_errors: registered(registry, {
                let errors = IntCounterVec::new(
                    Opts::new(
                        "healthgate_http_connection_errors_total",
                        "HTTP connections that ended in an error, by kind: incomplete (the client \
                         hung up mid-request), header_timeout, malformed, reset, other.",
                    ),
                    &["kind"],
                )
                .expect("valid metric");
                for kind in CONNECTION_ERROR_KINDS {
                    errors.with_label_values(&[kind]);
                }
                errors
            }),
        }
    }

    pub fn connection_error(&self, kind: &'static str) {
        self.connection_errors.with_label_values(&[kind]).inc();
    }

    pub fn record(&self, method: &Method, route: &str, status: StatusCode, seconds: f64) {
        match self.slot(method, route, status) {
            Some(slot) => {
                let handles = slot.get_or_init(|| {
                    let labels = [method.as_str(), route, status.as_str()];
                    Handles {
                        requests: self.requests.with_label_values(&labels),
                        duration: self.duration.with_label_values(&labels),
                    }
                });
                handles.requests.inc();
                handles.duration.observe(seconds);
            }
            None => {
                let labels = [method.as_str(), route, status.as_str()];
                self.requests.with_label_values(&labels).inc();
                self.duration.with_label_values(&labels).observe(seconds);
            }
        }
    }

    fn slot(&self, method: &Method, route: &str, status: StatusCode) -> Option<&OnceLock<Handles>> {
        let route = ROUTES
            .iter()
            .position(|r| std::ptr::eq(*r, route) || *r == route)?;
        let method = METHODS.iter().position(|m| m == method)?;
        let status = STATUSES.iter().position(|s| *s == status.as_u16())?;
        self.handles
            .get((route * METHODS.len() + method) * STATUSES.len() + status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_and_the_slow_path_count_in_the_same_series() {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry);
        for _ in 0..3 {
            metrics.record(&Method::GET, "/ready", StatusCode::OK, 0.001);
        }
        metrics.record(&Method::POST, "/ready", StatusCode::OK, 0.001);
        metrics.record(&Method::GET, "/ready", StatusCode::IM_A_TEAPOT, 0.001);
        let count = |labels: [&str; 3]| metrics.requests.with_label_values(&labels).get();
        assert_eq!(count(["GET", "/ready", "200"]), 3);
        assert_eq!(count(["POST", "/ready", "200"]), 1);
        assert_eq!(count(["GET", "/ready", "418"]), 1);
        let observed = metrics
            .duration
            .with_label_values(&["GET", "/ready", "200"])
            .get_sample_count();
        assert_eq!(observed, 3);
    }
}
