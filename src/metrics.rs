//! The Prometheus registry. Each component owns its series: it registers them itself
//! (`fn register(&Registry) -> Self`, next to the code that writes them) and removes what it
//! inserted. Labels are bounded: route templates (never raw paths), dependency names from
//! validated policies, closed reason sets.

use prometheus::core::Collector;
use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

use crate::controller::ControllerMetrics;
use crate::engine::CheckMetrics;
use crate::server::HttpMetrics;
use crate::server::users::PoolMetrics;

/// `reason` values of `healthgate_trace_spans_dropped_total`: the export queue was full, or the
/// collector did not take a batch (down, slow, refused).
pub const SPAN_DROP_REASONS: &[&str] = &["queue_full", "export_failed"];

/// Every component's metrics on one registry: what /metrics serves.
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub checks: CheckMetrics,
    pub controller: ControllerMetrics,
    pub pool: PoolMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        span_exports().register(&registry);
        registered(&registry, log_lines().dropped.clone());
        Self {
            http: HttpMetrics::register(&registry),
            checks: CheckMetrics::register(&registry),
            controller: ControllerMetrics::register(&registry),
            pool: PoolMetrics::register(&registry),
            registry,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `collector` and hands it back; for components' `register` functions.
pub fn registered<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

/// The trace exporter's counters. The exporter is process-wide and starts before any registry
/// exists, so these live in a static that every [`Metrics`] registers.
#[derive(Debug)]
pub struct SpanExportMetrics {
    pub dropped: IntCounterVec,
    pub exported: IntCounter,
}

impl SpanExportMetrics {
    fn register(&self, registry: &Registry) {
        registered(registry, self.dropped.clone());
        registered(registry, self.exported.clone());
    }
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

/// The log sink's counter. Like the span exporter, the sink is process-wide and starts before
/// any registry exists.
#[derive(Debug)]
pub struct LogMetrics {
    pub dropped: IntCounter,
}

pub fn log_lines() -> &'static LogMetrics {
    static METRICS: std::sync::OnceLock<LogMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| LogMetrics {
        dropped: IntCounter::new(
            "healthgate_log_lines_dropped_total",
            "Log lines dropped because stderr was not read fast enough (the queue to it was full).",
        )
        .expect("valid metric"),
    })
}
