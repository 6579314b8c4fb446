//! The JSON log line format: `timestamp`, `level`, `message`, the event's fields, `target`, and
//! inside a span the OpenTelemetry `trace_id` and `span_id` of the innermost one. Every line is
//! one JSON object with unique keys: an event field that would collide with one of those keys is
//! written as `field.<name>`. A `?`-recorded field whose Debug text is a JSON array (a `Vec` of
//! names, say) is written as that array, not as a string of it.
//!
//! A layer rather than tracing-subscriber's `Json` formatter: the ids live in the OpenTelemetry
//! layer's span data, reachable only through the dispatcher, which a layer is handed at
//! registration; and that formatter writes every `?` field, lists included, as a string.

use std::fmt;
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
    /// Takes one complete line; never blocks (see [`super::sink`]).
    sink: fn(Vec<u8>),
}

impl JsonLayer {
    pub fn stderr() -> Self {
        Self {
            dispatch: OnceLock::new(),
            sink: super::sink::write_line,
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
        for (key, value) in fields.values {
            if RESERVED.contains(&key.as_str()) {
                line.0.push((format!("field.{key}"), value));
            } else {
                line.0.push((key, value));
            }
        }
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
        // Whole lines only, so concurrent lines never interleave.
        (self.sink)(text);
    }
}

/// Keys the line itself writes; event fields never take them.
const RESERVED: &[&str] = &[
    "timestamp",
    "level",
    "message",
    "target",
    "trace_id",
    "span_id",
];

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
    /// Every text on a line goes through the one redaction routine: client libraries log
    /// through this subscriber too, and they do not know what is secret.
    fn put(&mut self, field: &Field, value: Value) {
        let value = match value {
            Value::String(text) => Value::String(crate::secret::redact(&text).into_owned()),
            other => other,
        };
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
        let text = format!("{value:?}");
        let array = text
            .starts_with('[')
            .then(|| serde_json::from_str::<Value>(&text).ok())
            .flatten()
            .filter(Value::is_array);
        self.put(field, array.unwrap_or_else(|| text.into()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn capture(emit: impl FnOnce()) -> Vec<Value> {
        static LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());
        let layer = JsonLayer {
            dispatch: OnceLock::new(),
            sink: |line| LINES.lock().unwrap().extend_from_slice(&line),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let text = std::mem::take(&mut *LINES.lock().unwrap());
        String::from_utf8(text)
            .unwrap()
            .lines()
            .map(|line| {
                let keys = object_keys(line);
                let mut unique = keys.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(keys.len(), unique.len(), "duplicate keys in {line}");
                serde_json::from_str(line).unwrap()
            })
            .collect()
    }

    /// The top-level keys of a JSON object in order, duplicates kept (serde_json's map would
    /// silently keep only the last).
    fn object_keys(line: &str) -> Vec<String> {
        struct Keys(Vec<String>);
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                mut self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    self.0.push(key);
                }
                Ok(self.0)
            }
        }
        use serde::Deserializer;
        serde_json::Deserializer::from_str(line)
            .deserialize_map(Keys(Vec::new()))
            .unwrap_or_else(|e| panic!("not a JSON object: {e}: {line}"))
    }

    #[test]
    fn lines_have_unique_keys_and_real_arrays() {
        let started = vec!["cache".to_string(), "web".to_string()];
        let lines = capture(|| {
            tracing::info!(target = "redis://db:6379", started = ?started, "policy applied");
            tracing::warn!(problems = ?vec!["a \"quoted\" \u{1b} problem"], "odd debug text");
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["target"], "healthgate::telemetry::json::tests");
        assert_eq!(lines[0]["field.target"], "redis://db:6379");
        assert_eq!(lines[0]["started"], serde_json::json!(["cache", "web"]));
        assert_eq!(lines[0]["message"], "policy applied");
        // Debug text that is not JSON stays a string rather than being mangled.
        assert!(lines[1]["problems"].is_string(), "{}", lines[1]);
    }
}
