//! healthgate: declarative dependency health checks for Kubernetes services.
//!
//! The crate is split the way the data flows: [`api`] (the CRD wire types) →
//! [`policy`] (validated, defaulted domain model) → [`engine`] (background checkers writing a
//! cache) → [`health`] (pure state machine and aggregation) → [`server`] (probes read the cache).
#![forbid(unsafe_code)]

pub mod api;

pub use api::{HealthPolicy, HealthPolicySpec};
pub mod app;
pub mod checks;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod first_sync;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod secret;
pub mod server;
pub mod standalone;
pub mod telemetry;
