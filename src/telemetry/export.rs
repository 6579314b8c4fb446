//! The OTLP span pipeline: a span processor that never blocks and one export task.
//!
//! The SDK's batch processor drops spans silently when its queue is full; here a drop is
//! counted in `healthgate_trace_spans_dropped_total{reason}` so a dashboard shows incomplete
//! traces. `on_end` only tries to enqueue; the task batches the queue and exports one batch at
//! a time, each bounded by a deadline, so a down or slow collector costs requests nothing.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::metrics::{SpanExportMetrics, span_exports};

// Defaults of the batch settings; each can be changed by its standard OTEL_BSP_* variable.
/// Finished spans waiting for export (OTEL_BSP_MAX_QUEUE_SIZE). At ~1 KiB each this bounds the
/// memory a down collector can cost to a few MiB; past it, spans are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request, the OTLP SDKs' default (OTEL_BSP_MAX_EXPORT_BATCH_SIZE).
const MAX_BATCH: usize = 512;
/// A batch goes out when it is full or this long after its first span
/// (OTEL_BSP_SCHEDULE_DELAY); shorter than the SDKs' 5 s so traces show up while one looks.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Upper bound on one export, retries included (OTEL_BSP_EXPORT_TIMEOUT); the batch is
/// dropped after it.
const EXPORT_DEADLINE: Duration = Duration::from_secs(10);
/// Per-request timeout when OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT is not set (the spec's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What the standard OTEL_* variables ask for; `None` when traces are not exported.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    pub protocol: Protocol,
    endpoint: String,
    timeout: Duration,
    batch: BatchSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchSettings {
    queue_capacity: usize,
    max_batch: usize,
    delay: Duration,
    deadline: Duration,
}

impl ExportSettings {
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none") {
            return None;
        }
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
            .map(str::trim)
        {
            Some("grpc") => Protocol::Grpc,
            // http/protobuf is the specification's default; http/json is not built in.
            _ => Protocol::HttpProtobuf,
        };
        let millis = |name: &str| {
            var(name)
                .and_then(|ms| ms.trim().parse().ok())
                .map(Duration::from_millis)
        };
        let count = |name: &str| {
            var(name)
                .and_then(|n| n.trim().parse::<usize>().ok())
                .filter(|n| *n > 0)
        };
        let timeout = millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .unwrap_or(DEFAULT_TIMEOUT);
        let queue_capacity = count("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(QUEUE_CAPACITY);
        let batch = BatchSettings {
            queue_capacity,
            // The specification: a batch is never larger than the queue.
            max_batch: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
                .unwrap_or(MAX_BATCH)
                .min(queue_capacity),
            delay: millis("OTEL_BSP_SCHEDULE_DELAY").unwrap_or(BATCH_DELAY),
            deadline: millis("OTEL_BSP_EXPORT_TIMEOUT").unwrap_or(EXPORT_DEADLINE),
        };
        Some(Self {
            protocol,
            endpoint,
            timeout,
            batch,
        })
    }

    /// The endpoint with any credentials in it masked.
    pub fn endpoint_for_log(&self) -> String {
        crate::secret::redact_url(&self.endpoint)
    }
}

/// Builds the exporter from the environment and starts the export task.
pub fn start(
    settings: &ExportSettings,
    resource: &Resource,
) -> Result<(QueueProcessor, Worker), String> {
    let mut exporter = match settings.protocol {
        Protocol::Grpc => SpanExporter::builder().with_tonic().build(),
        Protocol::HttpProtobuf => {
            // Same TLS stack as the HTTP checks: rustls with ring, webpki roots.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .timeout(settings.timeout)
                .build()
                .map_err(|e| e.to_string())?;
            SpanExporter::builder()
                .with_http()
                .with_http_client(ReqwestClient(client))
                .build()
        }
    }
    .map_err(|e| e.to_string())?;
    exporter.set_resource(resource);
    let (tx, rx) = mpsc::channel(settings.batch.queue_capacity);
    let (stop_tx, stop_rx) = oneshot::channel();
    let metrics = span_exports();
    let task = tokio::spawn(run(exporter, settings.batch, rx, stop_rx, metrics));
    Ok((
        QueueProcessor { queue: tx, metrics },
        Worker {
            stop: stop_tx,
            task,
        },
    ))
}

/// Enqueues finished sampled spans without waiting; a full queue drops the span.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    metrics: &'static SpanExportMetrics,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            self.metrics
                .dropped
                .with_label_values(&["queue_full"])
                .inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The export task is stopped by `Worker::flush_and_stop`, which can await it.
        Ok(())
    }
}

/// The export task's handle.
pub struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Exports what is queued, then stops; gives up after `timeout`.
    pub async fn flush_and_stop(self, timeout: Duration) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            abort.abort();
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "trace export did not finish before shutdown; remaining spans are lost"
            );
        }
    }
}

async fn run(
    exporter: SpanExporter,
    settings: BatchSettings,
    mut queue: mpsc::Receiver<SpanData>,
    mut stop: oneshot::Receiver<()>,
    metrics: &'static SpanExportMetrics,
) {
    let BatchSettings {
        max_batch,
        delay,
        deadline,
        ..
    } = settings;
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        // Wait for the first span of a batch, or for shutdown.
        tokio::select! {
            first = queue.recv() => match first {
                Some(span) => batch.push(span),
                None => break,
            },
            _ = &mut stop => break,
        }
        let send_at = tokio::time::Instant::now() + delay;
        let mut stopping = false;
        while batch.len() < max_batch {
            tokio::select! {
                next = queue.recv() => match next {
                    Some(span) => batch.push(span),
                    None => break,
                },
                _ = tokio::time::sleep_until(send_at) => break,
                _ = &mut stop, if !stopping => stopping = true,
            }
            if stopping {
                break;
            }
        }
        export(&exporter, std::mem::take(&mut batch), deadline, metrics).await;
        if stopping {
            break;
        }
    }
    // Shutdown: everything already queued goes out.
    queue.close();
    while let Ok(span) = queue.try_recv() {
        batch.push(span);
        if batch.len() == max_batch {
            export(&exporter, std::mem::take(&mut batch), deadline, metrics).await;
        }
    }
    if !batch.is_empty() {
        export(&exporter, batch, deadline, metrics).await;
    }
    let _ = exporter.shutdown();
}

async fn export(
    exporter: &SpanExporter,
    batch: Vec<SpanData>,
    deadline: Duration,
    metrics: &SpanExportMetrics,
) {
    let count = batch.len() as u64;
    match tokio::time::timeout(deadline, exporter.export(batch)).await {
        Ok(Ok(())) => metrics.exported.inc_by(count),
        outcome => {
            metrics
                .dropped
                .with_label_values(&["export_failed"])
                .inc_by(count);
            let error = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {deadline:?}"),
            };
            // Not inside any span, so this line cannot feed back into the queue.
            tracing::debug!(spans = count, %error, "trace export failed");
        }
    }
}

/// reqwest 0.12 (the crate's HTTP client) as the OTLP/HTTP transport.
#[derive(Debug)]
struct ReqwestClient(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for ReqwestClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut builder = self
            .0
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        let mut out = Response::builder().status(status).body(body)?;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Option<ExportSettings> {
        ExportSettings::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(settings(&[]).is_none());
        assert!(settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_none());
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(settings(&[endpoint]).is_some());
        assert!(settings(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).is_none());
        assert!(settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).is_none());
    }

    #[test]
    fn protocol_and_timeout_follow_the_standard_variables() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        let s = settings(&[endpoint]).unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        let s = settings(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.timeout, Duration::from_millis(2500));
        let s = settings(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn batch_settings_follow_the_otel_bsp_variables() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        let s = settings(&[endpoint]).unwrap();
        assert_eq!(
            s.batch,
            BatchSettings {
                queue_capacity: QUEUE_CAPACITY,
                max_batch: MAX_BATCH,
                delay: BATCH_DELAY,
                deadline: EXPORT_DEADLINE,
            }
        );
        let s = settings(&[
            endpoint,
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "3000"),
        ])
        .unwrap();
        assert_eq!(
            s.batch,
            BatchSettings {
                queue_capacity: 100,
                max_batch: 100,
                delay: Duration::from_secs(60),
                deadline: Duration::from_secs(3),
            }
        );
        // Nonsense keeps the default rather than a zero-sized queue.
        let s = settings(&[endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).unwrap();
        assert_eq!(s.batch.queue_capacity, QUEUE_CAPACITY);
    }

    #[test]
    fn endpoint_credentials_are_masked_in_logs() {
        let s = settings(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://user:hunter2@collector:4318",
        )])
        .unwrap();
        assert!(!s.endpoint_for_log().contains("hunter2"));
    }
}
