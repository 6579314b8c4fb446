//! The dependency kinds. Each kind lives in one file: how its CRD block becomes a [`Target`]
//! ([`CheckBlock`]) and its probe, which does exactly one round trip and describes what it saw
//! (timing, timeouts, thresholds and caching belong to the engine). This file lists the kinds;
//! `api.rs` holds their wire types. CONTRIBUTING.md has the recipe for adding one.

mod client_tls;
mod connections;
mod dns;
mod grpc;
mod guard;
mod http;
mod http_assert;
mod http_request;
mod mysql;
mod policy;
mod postgres;
mod redis;
mod sql;
mod tcp;
mod tls;
mod x509;

use std::sync::Arc;
use std::time::Duration;

pub use client_tls::ClientTls;
pub use connections::Connections;
pub use dns::DnsTarget;
pub use guard::{Blocked, Cidr, TargetGuard};
pub use http::HttpTarget;
pub use policy::Upstreams;
pub use redis::QueueTarget;
pub use tls::{CaBundle, TlsTarget};

use crate::api::{CaFrom, DependencyType, UrlFrom};
use crate::health::{Outcome, Reason};
use crate::policy::validate::{Errors, UrlResolver};
use crate::secret::SecretUrl;

/// A kind's check block, as written under `dependencies[].<kind>`.
pub trait CheckBlock {
    /// Where the block's connection URL comes from, if the kind has one. Declared once here, so
    /// validation resolves it and Secret rotation follows it without another list to update.
    fn url(&self) -> Option<UrlField<'_>>;

    /// Where the block's CA certificates come from, if it has any: declared here for the same
    /// reason as [`CheckBlock::url`].
    fn ca_from(&self) -> Option<CaField<'_>> {
        None
    }

    /// Other values the block reads from an environment variable or a Secret (HTTP header
    /// values), declared so Secret rotation follows them.
    fn values_from(&self) -> Vec<&UrlFrom> {
        Vec::new()
    }

    /// The checked, defaulted target, from what validation resolved for it. Problems go to
    /// `errors` at field paths under `block`, the path of this block.
    fn target(&self, resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target>;
}

/// A `caFrom` of a check block, and its path under the block (`caFrom`, `tls.caFrom`).
pub struct CaField<'a> {
    pub from: &'a CaFrom,
    pub at: &'static str,
}

/// What validation resolved for a block. `url` and `ca` are `None` when the kind declares
/// none, or when it did not resolve: that problem is already in the errors.
pub struct Resolved<'a> {
    /// The resolved [`CheckBlock::url`].
    pub url: Option<SecretUrl>,
    /// The parsed [`CheckBlock::ca_from`].
    pub ca: Option<CaBundle>,
    /// For the [`CheckBlock::values_from`] the block resolves itself (each at its own path).
    pub values: &'a dyn UrlResolver,
}

/// A URL field of a check block: written inline or read from `urlFrom`.
pub struct UrlField<'a> {
    pub inline: Option<&'a str>,
    pub from: Option<&'a UrlFrom>,
    /// The schemes the kind's client library accepts.
    pub schemes: &'static [&'static str],
}

/// What one dependency checks, validated: never a duration string, a missing block or an
/// unresolved URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Postgres {
        url: SecretUrl,
    },
    Redis {
        url: SecretUrl,
    },
    RedisQueue(QueueTarget),
    Http(HttpTarget),
    Tcp {
        address: String,
    },
    Grpc {
        address: String,
        service: String,
        tls: Option<ClientTls>,
    },
    Policy {
        name: String,
    },
    Tls(TlsTarget),
    Dns(DnsTarget),
    Mysql {
        url: SecretUrl,
    },
}

/// A client shared between probes, named by what opens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedClient<'a> {
    Url(&'a SecretUrl),
    Address(&'a str),
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
            Target::Policy { .. } => DependencyType::Policy,
            Target::Tls(_) => DependencyType::Tls,
            Target::Dns(_) => DependencyType::Dns,
            Target::Mysql { .. } => DependencyType::Mysql,
        }
    }

    /// Where the check goes, safe to log: credentials redacted.
    pub fn describe(&self) -> String {
        match self {
            Target::Postgres { url } | Target::Redis { url } | Target::Mysql { url } => {
                url.redacted()
            }
            Target::RedisQueue(q) => format!("{} key={}", q.url.redacted(), q.key),
            Target::Http(h) => h.url.redacted(),
            Target::Tcp { address } => address.clone(),
            Target::Tls(t) => match t.ca {
                Some(_) => format!("{} ca=custom", t.address),
                None => t.address.clone(),
            },
            Target::Dns(d) => d.describe(),
            Target::Grpc {
                address,
                service,
                tls,
            } => match tls {
                Some(_) => format!("{address} service={service:?} tls"),
                None => format!("{address} service={service:?}"),
            },
            Target::Policy { name } => format!("policy {name}"),
        }
    }

    /// The pooled client the probe uses, if any; [`Connections::retain`] closes unused ones.
    pub fn shared_client(&self) -> Option<SharedClient<'_>> {
        match self {
            Target::Postgres { url } | Target::Redis { url } | Target::Mysql { url } => {
                Some(SharedClient::Url(url))
            }
            Target::RedisQueue(q) => Some(SharedClient::Url(&q.url)),
            Target::Grpc {
                address, tls: None, ..
            } => Some(SharedClient::Address(address)),
            Target::Grpc { tls: Some(_), .. } => None,
            Target::Http(_)
            | Target::Tcp { .. }
            | Target::Tls(_)
            | Target::Dns(_)
            | Target::Policy { .. } => None,
        }
    }
}

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
    /// When the server's certificate expires (Unix seconds), for TLS checks; exported as
    /// `healthgate_tls_cert_expiry_timestamp_seconds`.
    pub cert_not_after: Option<i64>,
}

impl Observation {
    pub fn ok(detail: impl Into<Option<String>>) -> Self {
        Self {
            outcome: Outcome::Ok,
            reason: Reason::Ok,
            detail: detail
                .into()
                .map(|d| crate::secret::redact(&d).into_owned()),
            error: None,
            queue_depth: None,
            cert_not_after: None,
        }
    }

    pub fn down(reason: Reason, error: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Down,
            reason,
            detail: None,
            // Shown on /ready, in spans, logs and status: redacted once, here.
            error: Some(crate::secret::redact(&error.into()).into_owned()),
            queue_depth: None,
            cert_not_after: None,
        }
    }

    pub fn blocked(blocked: &Blocked) -> Self {
        Self::down(Reason::Blocked, blocked.to_string())
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
    Http(http::HttpProbe),
    Tcp(tcp::TcpProbe),
    Grpc(grpc::GrpcProbe),
    Policy(policy::PolicyProbe),
    Tls(tls::TlsProbe),
    Dns(dns::DnsProbe),
    Mysql(mysql::MysqlProbe),
}

impl Probe {
    /// Builds the probe, taking pooled connections from `connections` and other policies'
    /// states from `upstreams`. Creating a probe never connects: a dependency that is down at
    /// start-up is simply reported down.
    pub fn new(
        target: &Target,
        timeout: Duration,
        connections: &Connections,
        upstreams: &Arc<dyn Upstreams>,
    ) -> Self {
        let guard = connections.guard();
        match target {
            Target::Postgres { url } => Probe::Postgres(postgres::PostgresProbe::new(
                postgres::source(connections, guard, url, timeout),
                url.clone(),
            )),
            Target::Redis { url } => Probe::Redis(redis::RedisProbe::new(redis::source(
                connections,
                guard,
                url,
            ))),
            Target::RedisQueue(queue) => {
                let QueueTarget { url, .. } = queue;
                Probe::RedisQueue(redis::QueueProbe::new(
                    redis::source(connections, guard, url),
                    queue.clone(),
                ))
            }
            Target::Http(target) => Probe::Http(match (guard, &target.tls) {
                (None, None) => http::HttpProbe::new(connections.http_client(), target.clone()),
                (guard, _) => http::HttpProbe::own(guard, target.clone()),
            }),
            Target::Tcp { address } => Probe::Tcp(tcp::TcpProbe::new(address.clone(), guard)),
            Target::Grpc {
                address,
                service,
                tls,
            } => Probe::Grpc(grpc::GrpcProbe::new(
                match tls {
                    None => connections.grpc(address, timeout),
                    Some(tls) => connections::grpc_tls_channel(address, timeout, guard, tls),
                },
                service.clone(),
            )),
            Target::Policy { name } => Probe::Policy(policy::PolicyProbe::new(
                upstreams.clone(),
                name.clone(),
                timeout,
            )),
            Target::Tls(target) => Probe::Tls(tls::TlsProbe::new(target.clone(), guard)),
            Target::Dns(target) => Probe::Dns(dns::DnsProbe::new(target.clone(), timeout, guard)),
            Target::Mysql { url } => Probe::Mysql(mysql::MysqlProbe::new(
                mysql::source(connections, guard, url, timeout),
                url.clone(),
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
            Probe::Policy(p) => p.run().await,
            Probe::Tls(p) => p.run().await,
            Probe::Dns(p) => p.run().await,
            Probe::Mysql(p) => p.run().await,
        }
    }
}
