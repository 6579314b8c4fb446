//! The validated, fully-defaulted policy the engine runs. Built only by [`validate`], so the
//! engine never sees a duration string, a missing block or an unresolved URL.

pub mod duration;
pub mod validate;

use std::time::Duration;

use std::collections::BTreeSet;

use crate::health::Window;
use crate::health::maintenance::When;

pub use crate::checks::{HttpTarget, QueueTarget, Target};
pub use validate::{FieldError, UrlResolver, validate};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub max_staleness: Duration,
    pub status_codes: StatusCodes,
    pub dependencies: Vec<DependencySpec>,
    /// spec.cascadeProtection when enabled: a critical dependency down on enough replicas
    /// degrades instead of downing (see `Engine::set_shared_outage`).
    pub cascade_protection: Option<CascadeRules>,
    /// spec.maintenance: when a failing dependency degrades instead of downing.
    pub maintenance: Vec<Maintenance>,
    /// spec.podSelector: the pods whose `healthgate.dev/ready` condition the leader writes
    /// (Kubernetes mode only; never empty). Not a checker setting, so changing it restarts none.
    pub pod_selector: Option<kube::core::Selector>,
}

/// One maintenance window and the dependencies it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct Maintenance {
    pub when: When,
    /// `None`: every dependency of the policy.
    pub dependencies: Option<BTreeSet<String>>,
}

impl Maintenance {
    pub fn covers(&self, dependency: &str) -> bool {
        self.dependencies
            .as_ref()
            .is_none_or(|names| names.contains(dependency))
    }
}

/// When cascade protection engages, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CascadeRules {
    pub min_replicas: u32,
    pub quorum_percent: u32,
    pub max_duration: Duration,
}

impl CascadeRules {
    pub const DEFAULT_MIN_REPLICAS: u32 = 2;
    pub const DEFAULT_QUORUM_PERCENT: u32 = 100;
    pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(600);
    pub const LONGEST_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

    /// Whether `down` of the `serving` replicas seeing a dependency down is enough.
    pub fn engages(&self, down: u32, serving: u32) -> bool {
        down >= self.min_replicas && down * 100 >= self.quorum_percent * serving
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusCodes {
    pub ok: u16,
    pub degraded: u16,
    pub down: u16,
}

impl StatusCodes {
    pub fn for_overall(self, overall: crate::health::Overall) -> u16 {
        match overall {
            crate::health::Overall::Ok => self.ok,
            crate::health::Overall::Degraded => self.degraded,
            crate::health::Overall::Down => self.down,
        }
    }
}

impl Default for StatusCodes {
    fn default() -> Self {
        Self {
            ok: 200,
            degraded: 207,
            down: 503,
        }
    }
}

/// One dependency; two specs that compare equal run the same checker, so an unchanged
/// dependency keeps its checker (and its hysteresis state) across policy updates.
#[derive(Clone, Debug, PartialEq)]
pub struct DependencySpec {
    pub name: String,
    pub critical: bool,
    pub schedule: Schedule,
    pub target: Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
    /// Checked this often while the dependency is failing or down; `None`: always `interval`.
    pub retry_interval: Option<Duration>,
    /// When a healthy dependency is reported down (failureThreshold N is N of N).
    pub failing: Window,
    /// When a down dependency is reported healthy again.
    pub recovering: Window,
    pub degraded_latency: Option<Duration>,
}
