//! The validated, fully-defaulted policy the engine runs. Built only by [`validate`], so the
//! engine never sees a duration string, a missing block or an unresolved URL.

pub mod duration;
mod validate;

use std::time::Duration;

use crate::api::{DependencyType, QueueKind};
use crate::secret::SecretUrl;

pub use validate::{FieldError, UrlResolver, validate};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub max_staleness: Duration,
    pub status_codes: StatusCodes,
    pub dependencies: Vec<DependencySpec>,
    /// spec.cascadeProtection.enabled: a critical dependency down on every replica degrades
    /// instead of downing (see `Engine::set_shared_outage`).
    pub cascade_protection: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusCodes {
    pub ok: u16,
    pub degraded: u16,
    pub down: u16,
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
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub degraded_latency: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Postgres { url: SecretUrl },
    Redis { url: SecretUrl },
    RedisQueue(QueueTarget),
    Http(HttpTarget),
    Tcp { address: String },
    Grpc { address: String, service: String },
}

impl Target {
    pub fn kind(&self) -> DependencyType {
        match self {
            Target::Postgres { .. } => DependencyType::Postgres,
            Target::Redis { .. } => DependencyType::Redis,
            Target::RedisQueue(_) => DependencyType::RedisQueue,
            Target::Http(_) => DependencyType::Http,
            Target::Tcp { .. } => DependencyType::Tcp,
            Target::Grpc { .. } => DependencyType::Grpc,
        }
    }

    /// Where the check goes, safe to log: credentials redacted.
    pub fn describe(&self) -> String {
        match self {
            Target::Postgres { url } | Target::Redis { url } => url.redacted(),
            Target::RedisQueue(q) => format!("{} key={}", q.url.redacted(), q.key),
            Target::Http(h) => h.url.redacted(),
            Target::Tcp { address } => address.clone(),
            Target::Grpc { address, service } => format!("{address} service={service:?}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueTarget {
    pub url: SecretUrl,
    pub key: String,
    pub kind: QueueKind,
    pub group: Option<String>,
    pub degraded_above: Option<u64>,
    pub down_above: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpTarget {
    /// An HTTP URL may carry basic-auth credentials or a token in its query.
    pub url: SecretUrl,
    pub expect_status: Vec<(u16, u16)>,
    pub body_contains: Option<String>,
}

impl HttpTarget {
    pub fn accepts(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}
