//! The JSON log line format: `timestamp`, `level`, `message`, the event's fields, `target`, and
//! inside a span the OpenTelemetry `trace_id` and `span_id` of the innermost one.
//!
//! A layer rather than a `fmt` formatter because the ids live in the OpenTelemetry layer's span
//! data, reachable only through the dispatcher, which a layer is handed at registration.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

pub struct JsonLayer {
    dispatch: OnceLock<WeakDispatch>,
    writer: fn() -> Box<dyn Write>,
}

impl JsonLayer {
    pub fn stderr() -> Self {
        Self {
            dispatch: OnceLock::new(),
            writer: || Box::new(std::io::stderr().lock()),
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Line(Vec::with_capacity(fields.values.len() + 6));
        line.insert(
            "timestamp",
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level", meta.level().as_str().into());
        if let Some(message) = fields.message.take() {
            line.insert("message", message);
        }
        line.0.extend(fields.values);
        line.insert("target", meta.target().into());
        // The innermost span the event happened in, whatever this layer's filter says of it.
        let span = if event.is_contextual() {
            ctx.current_span().id().cloned()
        } else {
            event.parent().cloned()
        };
        if let (Some(id), Some(dispatch)) = (span, self.dispatch.get().and_then(|d| d.upgrade()))
            && let Some(cx) = tracing_opentelemetry::get_otel_context(&id, &dispatch)
        {
            let span = cx.span();
            let context = span.span_context();
            if context.is_valid() {
                line.insert("trace_id", context.trace_id().to_string().into());
                line.insert("span_id", context.span_id().to_string().into());
            }
        }
        let mut text = serde_json::to_vec(&line).expect("a log line serialises");
        text.push(b'\n');
        // One write per line so concurrent lines never interleave.
        let _ = (self.writer)().write_all(&text);
    }
}

/// The keys of one line in the order they are written: fixed ones first, then the event's.
struct Line(Vec<(String, Value)>);

impl Line {
    fn insert(&mut self, key: &str, value: Value) {
        self.0.push((key.to_string(), value));
    }
}

impl Serialize for Line {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Default)]
struct Fields {
    message: Option<Value>,
    values: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            self.values.push((field.name().to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
