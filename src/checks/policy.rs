//! `type: policy`: another HealthPolicy's aggregated status, read from the engine that runs it
//! (no I/O). A policy that depends on a service's policy is down *because of* that service, and
//! says which of its dependencies is the root cause.

use std::sync::Arc;

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
    fn observe(&self, name: &str) -> Observation;
}

pub struct PolicyProbe {
    upstreams: Arc<dyn Upstreams>,
    name: String,
}

impl PolicyProbe {
    pub fn new(upstreams: Arc<dyn Upstreams>, name: String) -> Self {
        Self { upstreams, name }
    }

    pub async fn run(&self) -> Observation {
        self.upstreams.observe(&self.name)
    }
}
