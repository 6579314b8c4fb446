//! `type: redis` (PING) and `type: redisQueue` (the depth of a list or stream): two kinds in one
//! file because they share the connection manager and the error mapping.

use std::sync::Arc;

use redis::aio::ConnectionManager;

use super::connections::{Connections, redis_manager};
use super::guard::{ClientSource, PreCheck, TargetGuard};
use super::{CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::{QueueKind, RedisCheck, RedisQueueCheck};
use crate::health::{Outcome, Reason};
use crate::policy::validate::Errors;
use crate::secret::SecretUrl;

/// The schemes the redis crate accepts.
const SCHEMES: &[&str] = &["redis", "rediss"];

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueTarget {
    pub url: SecretUrl,
    pub key: String,
    pub kind: QueueKind,
    pub group: Option<String>,
    pub degraded_above: Option<u64>,
    pub down_above: Option<u64>,
}

impl CheckBlock for RedisCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        Some(UrlField {
            inline: self.url.as_deref(),
            from: self.url_from.as_ref(),
            schemes: SCHEMES,
        })
    }

    fn target(&self, resolved: Resolved, _block: &str, _errors: &mut Errors) -> Option<Target> {
        Some(Target::Redis { url: resolved.url? })
    }
}

impl CheckBlock for RedisQueueCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        Some(UrlField {
            inline: self.url.as_deref(),
            from: self.url_from.as_ref(),
            schemes: SCHEMES,
        })
    }

    fn target(&self, resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        let mut limit = |name: &str, value: Option<i64>| match value {
            Some(v) if v < 0 => {
                errors.push(
                    format!("{block}.{name}"),
                    format!("{v} must not be negative"),
                );
                None
            }
            other => other.map(|v| v as u64),
        };
        let degraded_above = limit("degradedAbove", self.degraded_above);
        let down_above = limit("downAbove", self.down_above);
        if let (Some(degraded), Some(down)) = (degraded_above, down_above)
            && down <= degraded
        {
            errors.push(
                format!("{block}.downAbove"),
                format!("{down} must be greater than degradedAbove ({degraded})"),
            );
        }
        if self.key.is_empty() {
            errors.push(format!("{block}.key"), "must not be empty");
        }
        if self.group.is_some() && self.kind != QueueKind::Stream {
            errors.push(format!("{block}.group"), "only valid with kind: stream");
        }
        Some(Target::RedisQueue(QueueTarget {
            url: resolved.url?,
            key: self.key.clone(),
            kind: self.kind,
            group: self.group.clone(),
            degraded_above,
            down_above,
        }))
    }
}

/// Where the probe's connection manager comes from. Guarded, it connects to the address the
/// guard judged (the host and port as the redis crate reads them, the URL's host replaced by that
/// address), and its reconnects go there too. `rediss` keeps the name for TLS and is judged
/// before each probe only. A Unix socket is not a network target and is not judged.
pub fn source(
    connections: &Connections,
    guard: Option<Arc<TargetGuard>>,
    url: &SecretUrl,
) -> ClientSource<ConnectionManager> {
    let shared = || connections.redis(url);
    let Some(guard) = guard else {
        return ClientSource::Shared(shared());
    };
    // The shared client reports an unusable URL, scrubbed.
    let Ok(client) = redis::Client::open(url.expose()) else {
        return ClientSource::Shared(shared());
    };
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => {
            let check = PreCheck::new(guard, host.clone(), *port);
            let url = url.clone();
            ClientSource::pinned(check, move |address| {
                let mut pinned =
                    url::Url::parse(url.expose()).map_err(|e| url.scrub(&e.to_string()))?;
                pinned
                    .set_ip_host(address.ip())
                    .and_then(|()| pinned.set_port(Some(address.port())))
                    .map_err(|()| "the Redis URL cannot take an address as its host".to_string())?;
                redis_manager(&SecretUrl::new(pinned.to_string()))
            })
        }
        redis::ConnectionAddr::TcpTls { host, port, .. } => {
            ClientSource::Checked(shared(), PreCheck::new(guard, host.clone(), *port))
        }
        _ => ClientSource::Shared(shared()),
    }
}

pub struct RedisProbe {
    client: ClientSource<ConnectionManager>,
}

impl RedisProbe {
    pub fn new(client: ClientSource<ConnectionManager>) -> Self {
        Self { client }
    }

    pub async fn run(&self) -> Observation {
        let mut conn = match self.client.get().await {
            Ok(conn) => conn,
            Err(observation) => return observation,
        };
        match redis::cmd("PING").query_async::<String>(&mut conn).await {
            Ok(reply) if reply == "PONG" => Observation::ok(None),
            Ok(reply) => {
                Observation::down(Reason::Error, format!("unexpected PING reply {reply:?}"))
            }
            Err(e) => failure(&e),
        }
    }
}

pub struct QueueProbe {
    client: ClientSource<ConnectionManager>,
    queue: QueueTarget,
}

impl QueueProbe {
    pub fn new(client: ClientSource<ConnectionManager>, queue: QueueTarget) -> Self {
        Self { client, queue }
    }

    pub async fn run(&self) -> Observation {
        let mut conn = match self.client.get().await {
            Ok(conn) => conn,
            Err(observation) => return observation,
        };
        let q = &self.queue;
        let depth = match (q.kind, &q.group) {
            (QueueKind::List, _) => {
                redis::cmd("LLEN")
                    .arg(&q.key)
                    .query_async::<u64>(&mut conn)
                    .await
            }
            (QueueKind::Stream, None) => {
                redis::cmd("XLEN")
                    .arg(&q.key)
                    .query_async::<u64>(&mut conn)
                    .await
            }
            (QueueKind::Stream, Some(group)) => pending(&mut conn, &q.key, group).await,
        };
        match depth {
            Ok(depth) => judge_depth(depth, q.degraded_above, q.down_above),
            Err(e) => failure(&e),
        }
    }
}

/// The pending-entries count of a stream consumer group (the summary form of XPENDING).
async fn pending(conn: &mut ConnectionManager, key: &str, group: &str) -> redis::RedisResult<u64> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(conn)
        .await?;
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(count)) => Ok((*count).max(0) as u64),
            _ => Err((
                redis::ErrorKind::UnexpectedReturnType,
                "XPENDING summary without a count",
            )
                .into()),
        },
        _ => Err((
            redis::ErrorKind::UnexpectedReturnType,
            "XPENDING did not return a summary",
        )
            .into()),
    }
}

pub fn judge_depth(
    depth: u64,
    degraded_above: Option<u64>,
    down_above: Option<u64>,
) -> Observation {
    let detail = Some(format!("depth={depth}"));
    let (outcome, reason) = if down_above.is_some_and(|limit| depth > limit) {
        (Outcome::Down, Reason::QueueDepth)
    } else if degraded_above.is_some_and(|limit| depth > limit) {
        (Outcome::Degraded, Reason::QueueDepth)
    } else {
        (Outcome::Ok, Reason::Ok)
    };
    Observation {
        outcome,
        reason,
        detail,
        error: None,
        queue_depth: Some(depth),
        cert_not_after: None,
    }
}

/// Redis errors describe the command and server reply, never the connection URL.
fn failure(error: &redis::RedisError) -> Observation {
    let reason = if is_auth_failure(error) {
        Reason::Auth
    } else if error.is_timeout() {
        Reason::Timeout
    } else if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped()
    {
        Reason::Connect
    } else {
        Reason::Error
    };
    Observation::down(reason, error.to_string())
}

/// A wrong password fails the connection's AUTH; a missing one fails the first command.
fn is_auth_failure(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_thresholds() {
        let cases = [
            (0, Some(10), Some(100), Outcome::Ok),
            (10, Some(10), Some(100), Outcome::Ok),
            (11, Some(10), Some(100), Outcome::Degraded),
            (100, Some(10), Some(100), Outcome::Degraded),
            (101, Some(10), Some(100), Outcome::Down),
            (101, None, Some(100), Outcome::Down),
            (1_000_000, None, None, Outcome::Ok),
        ];
        for (depth, degraded, down, expected) in cases {
            let observed = judge_depth(depth, degraded, down);
            assert_eq!(observed.outcome, expected, "depth {depth}");
            assert_eq!(
                observed.detail.as_deref(),
                Some(format!("depth={depth}").as_str())
            );
        }
    }
}
