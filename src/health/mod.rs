//! Pure health logic: per-dependency hysteresis, staleness and aggregation. No I/O, no clocks
//! read here — callers pass `now` — so every rule is covered by table-driven tests.

mod aggregate;
pub mod maintenance;
mod state;

pub use aggregate::{Overall, aggregate};
pub use state::{Hysteresis, Outcome, Reason, State, Window, effective_state};
