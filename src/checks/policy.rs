//! `type: policy`: another HealthPolicy's aggregated status, read from the engine that runs it
//! (no I/O). A policy that depends on a service's policy is down *because of* that service, and
//! says which of its dependencies is the root cause.

use std::sync::Arc;
use std::time::Duration;

use super::{CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::{DNS_LABEL_PATTERN, PolicyCheck};
use crate::policy::validate::Errors;

impl CheckBlock for PolicyCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        None
    }

    fn target(&self, _resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        let valid =
            !self.name.is_empty() && self.name.len() <= 253 && self.name.split('.').all(dns_label);
        if !valid {
            errors.push(
                format!("{block}.name"),
                format!(
                    "{:?} is not a HealthPolicy name (DNS labels {DNS_LABEL_PATTERN}, joined by dots)",
                    self.name
                ),
            );
            return None;
        }
        Some(Target::Policy {
            name: self.name.clone(),
        })
    }
}

fn dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// What a `type: policy` probe reads: the engine, for the namespace of the policy that asks.
pub trait Upstreams: Send + Sync {
    /// The upstream's state as an observation, and whether every one of its dependencies has a
    /// result yet (before that, an unchecked critical dependency reads as down).
    fn observe(&self, name: &str) -> (Observation, bool);
}

/// How often a probe looks again at an upstream that has not finished its first checks.
const SETTLE_POLL: Duration = Duration::from_millis(25);

pub struct PolicyProbe {
    upstreams: Arc<dyn Upstreams>,
    name: String,
    /// Waiting for an upstream's first results stops short of the check's timeout.
    patience: Duration,
}

impl PolicyProbe {
    pub fn new(upstreams: Arc<dyn Upstreams>, name: String, timeout: Duration) -> Self {
        Self {
            upstreams,
            name,
            patience: timeout.mul_f64(0.75),
        }
    }

    /// At start-up both policies begin checking at once: waiting for the upstream's first
    /// results keeps this dependency from reporting a down that never happened.
    pub async fn run(&self) -> Observation {
        let started = tokio::time::Instant::now();
        loop {
            let (observation, settled) = self.upstreams.observe(&self.name);
            if settled || started.elapsed() + SETTLE_POLL > self.patience {
                return observation;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
}
