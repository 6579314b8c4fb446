//! Logs and traces.
//!
//! Logs: one JSON object per line on stderr (stdout is reserved for command output such as
//! `healthgate check`), filtered by `RUST_LOG`, written by a dedicated thread through a bounded
//! queue so a stalled reader drops lines instead of blocking requests (see [`sink`]). A line emitted inside a span carries that span's
//! `trace_id` and `span_id`, so logs and traces join.
//!
//! Traces: `tracing` spans become OpenTelemetry spans, exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the
//! standard variables: `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`, the default),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`,
//! `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`, `OTEL_SDK_DISABLED`. Without an endpoint nothing is
//! exported, but W3C `traceparent` is still honoured so log lines carry the caller's trace id.
//! Export never blocks a request: finished spans go into a bounded queue (see [`export`]) and
//! are dropped, and counted, when it is full or the collector fails.

mod export;
mod json;
mod sink;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use export::ExportSettings;

pub const DEFAULT_FILTER: &str = "info";
/// The service name when neither `OTEL_SERVICE_NAME` nor `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
pub const SERVICE_NAME: &str = "healthgate";
/// How long shutdown waits for the last spans to reach the collector.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long exit waits for queued log lines; a reader that takes longer is stalled.
pub const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it. Dropping it without
/// shutting down loses the spans still queued.
/// Whether spans are exported. Without an exporter nobody reads a request span, so the server
/// does not build one: at probe rates a span costs more than the whole /ready answer.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

pub struct Telemetry {
    provider: SdkTracerProvider,
    exporter: Option<export::Worker>,
}

impl Telemetry {
    /// Ends the trace pipeline: spans already finished are exported (within [`FLUSH_TIMEOUT`]).
    /// Call it last, after every span has ended: an open span is never exported.
    pub async fn shutdown(self) {
        let Self { provider, exporter } = self;
        // Stops new spans from entering the queue.
        let _ = provider.shutdown();
        if let Some(exporter) = exporter {
            exporter.flush_and_stop(FLUSH_TIMEOUT).await;
        }
        flush_logs();
    }
}

/// Installs logging and tracing for the process. Must run inside the Tokio runtime (the OTLP
/// exporter's connection lives on it). A second call keeps the first subscriber.
pub fn init() -> Telemetry {
    let settings = ExportSettings::from_env();
    let resource = resource();
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut exporter = None;
    let mut export_error = None;
    if let Some(settings) = &settings {
        match export::start(settings, &resource) {
            Ok((processor, worker)) => {
                builder = builder.with_span_processor(processor);
                exporter = Some(worker);
            }
            Err(e) => export_error = Some(e),
        }
    }
    let provider = builder.build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("healthgate");

    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // The access log covers every request; warp's own per-request lines would repeat it.
    filter = filter.add_directive("warp::filters::trace=off".parse().expect("valid directive"));
    // Spans of our own code are traced whatever RUST_LOG says about log lines.
    let otel = exporter.is_some().then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_level(false)
            .with_filter(Targets::new().with_target("healthgate", Level::INFO))
    });
    EXPORTING.store(exporter.is_some(), std::sync::atomic::Ordering::Relaxed);
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(json::JsonLayer::stderr().with_filter(filter))
        .try_init();

    match (&settings, export_error) {
        (Some(settings), None) => tracing::info!(
            endpoint = %settings.endpoint_for_log(),
            protocol = settings.protocol.as_str(),
            "exporting traces over OTLP"
        ),
        (Some(_), Some(error)) => {
            tracing::error!(%error, "cannot set up the OTLP trace exporter; traces are off")
        }
        (None, _) => {}
    }
    Telemetry { provider, exporter }
}

/// Writes out the log lines still queued (within [`LOG_FLUSH_TIMEOUT`]); call before exiting.
pub fn flush_logs() {
    sink::flush(LOG_FLUSH_TIMEOUT);
}

/// Logging only, for code paths that never trace (and tests of the library).
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::registry()
        .with(json::JsonLayer::stderr().with_filter(filter))
        .try_init();
}

fn resource() -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let mut builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named_by_env {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    builder.build()
}
