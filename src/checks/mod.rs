//! One probe per dependency kind. A probe does exactly one round trip and describes what it saw;
//! timing, timeouts, thresholds and caching belong to the engine.

mod connections;
mod net;
mod postgres;
mod redis;

use std::time::Duration;

pub use connections::Connections;

use crate::health::{Outcome, Reason};
use crate::policy::{QueueTarget, Target};

/// What one probe run saw. `detail` and `error` are shown in /ready, so they never carry a
/// credential: every probe scrubs driver messages through its `SecretUrl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub outcome: Outcome,
    pub reason: Reason,
    pub detail: Option<String>,
    pub error: Option<String>,
    /// Messages waiting, for queue checks; exported as `healthgate_queue_depth`.
    pub queue_depth: Option<u64>,
}

impl Observation {
    pub fn ok(detail: impl Into<Option<String>>) -> Self {
        Self {
            outcome: Outcome::Ok,
            reason: Reason::Ok,
            detail: detail.into(),
            error: None,
            queue_depth: None,
        }
    }

    pub fn down(reason: Reason, error: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Down,
            reason,
            detail: None,
            error: Some(error.into()),
            queue_depth: None,
        }
    }

    pub fn timed_out(timeout: Duration) -> Self {
        Self::down(
            Reason::Timeout,
            format!(
                "no answer within {}",
                crate::policy::duration::format(timeout)
            ),
        )
    }
}

/// A ready-to-run check: the target plus the pooled client it uses.
pub enum Probe {
    Postgres(postgres::PostgresProbe),
    Redis(redis::RedisProbe),
    RedisQueue(redis::QueueProbe),
    Http(net::HttpProbe),
    Tcp(net::TcpProbe),
    Grpc(net::GrpcProbe),
}

impl Probe {
    /// Builds the probe, taking pooled connections from `connections`. Creating a probe never
    /// connects: a dependency that is down at start-up is simply reported down.
    pub fn new(target: &Target, timeout: Duration, connections: &Connections) -> Self {
        match target {
            Target::Postgres { url } => Probe::Postgres(postgres::PostgresProbe::new(
                connections.postgres(url, timeout),
                url.clone(),
            )),
            Target::Redis { url } => Probe::Redis(redis::RedisProbe::new(connections.redis(url))),
            Target::RedisQueue(queue) => {
                let QueueTarget { url, .. } = queue;
                Probe::RedisQueue(redis::QueueProbe::new(
                    connections.redis(url),
                    queue.clone(),
                ))
            }
            Target::Http(http) => {
                Probe::Http(net::HttpProbe::new(connections.http_client(), http.clone()))
            }
            Target::Tcp { address } => Probe::Tcp(net::TcpProbe::new(address.clone())),
            Target::Grpc { address, service } => Probe::Grpc(net::GrpcProbe::new(
                connections.grpc(address, timeout),
                service.clone(),
            )),
        }
    }

    pub async fn run(&self) -> Observation {
        match self {
            Probe::Postgres(p) => p.run().await,
            Probe::Redis(p) => p.run().await,
            Probe::RedisQueue(p) => p.run().await,
            Probe::Http(p) => p.run().await,
            Probe::Tcp(p) => p.run().await,
            Probe::Grpc(p) => p.run().await,
        }
    }
}
