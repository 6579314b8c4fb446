//! Shared helpers for the integration tests; each test binary includes this with `mod support;`.

pub mod apiserver;
pub mod healthgate;
pub mod kube_env;
pub mod services;
pub mod tools;
