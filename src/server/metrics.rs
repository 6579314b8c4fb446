//! Request metrics: one counter and one histogram, labelled by method, route template and status.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::metrics::registered;

/// The request-latency buckets the dashboards and SLO alerts are written against.
pub const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
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
        }
    }

    pub fn record(&self, method: &str, route: &str, status: warp::http::StatusCode, seconds: f64) {
        let labels = [method, route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.duration.with_label_values(&labels).observe(seconds);
    }
}
