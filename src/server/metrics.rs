//! Request metrics: one counter and one histogram, labelled by method, route template and status;
//! and connection metrics: how many are open, and the connection-level errors clients cause.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

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

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
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

    pub fn record(&self, method: &str, route: &str, status: warp::http::StatusCode, seconds: f64) {
        let labels = [method, route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.duration.with_label_values(&labels).observe(seconds);
    }
}
