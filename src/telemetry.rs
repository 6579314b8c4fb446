//! Logging: one JSON object per line on stderr (stdout is reserved for command output such as
//! `healthgate check`), filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

pub const DEFAULT_FILTER: &str = "info";

pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // A second init (tests calling into the library) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
