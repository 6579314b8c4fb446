//! The managed service's own example endpoint, `/api/users/{id}`, backed by PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, field, info, warn};

use crate::metrics::registered;
use crate::secret::SecretUrl;

const POOL_SIZE: u32 = 8;
/// A request never waits longer than this for the database; after it the answer is 503.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const MIGRATION_RETRY_MAX: Duration = Duration::from_secs(5);
pub const MAX_ID_LEN: usize = 64;
const USER_QUERY: &str = "SELECT id, email, created_at FROM users WHERE id = $1";

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NotFound,
    InvalidId,
    Unavailable,
    Failed,
}

#[derive(Clone)]
pub struct Users {
    db: Option<(PgPool, SecretUrl)>,
    peer: Arc<DbPeer>,
    migrated: Arc<AtomicBool>,
}

/// Where the database is, for span attributes: never the user or password.
#[derive(Default)]
struct DbPeer {
    host: String,
    port: u16,
    database: String,
}

impl Users {
    /// A pool is created lazily: the service starts (and serves probes) with the database down.
    pub fn new(url: Option<SecretUrl>) -> Result<Self, String> {
        let mut peer = DbPeer::default();
        let db = match url {
            None => None,
            Some(url) => {
                let options = url
                    .expose()
                    .parse::<sqlx::postgres::PgConnectOptions>()
                    .map_err(|e| format!("--database-url: {}", url.scrub(&e.to_string())))?;
                peer = DbPeer {
                    host: options.get_host().to_string(),
                    port: options.get_port(),
                    database: options.get_database().unwrap_or_default().to_string(),
                };
                let pool = PgPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .acquire_timeout(QUERY_TIMEOUT)
                    .connect_lazy_with(options.application_name("healthgate-app"));
                Some((pool, url))
            }
        };
        Ok(Self {
            db,
            peer: Arc::new(peer),
            migrated: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Applies the schema, retrying with backoff while the database is unreachable.
    pub async fn migrate_until_ready(&self, cancel: CancellationToken) {
        let Some((pool, url)) = &self.db else { return };
        let migrator = Migrator::with_migrations(vec![Migration::new(
            1,
            "create users".into(),
            MigrationType::Simple,
            SqlStr::from_static(include_str!("../../migrations/0001_users.sql")),
            false,
        )]);
        let mut delay = Duration::from_millis(250);
        loop {
            match migrator.run(pool).await {
                Ok(()) => {
                    self.migrated.store(true, Ordering::Release);
                    info!(database = %url, "database schema is up to date");
                    return;
                }
                Err(e) => {
                    warn!(database = %url, error = %url.scrub(&e.to_string()), retry_in_ms = delay.as_millis() as u64, "database migration failed; retrying");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MIGRATION_RETRY_MAX);
        }
    }

    pub async fn lookup(&self, id: &str) -> Lookup {
        if !is_valid_id(id) {
            return Lookup::InvalidId;
        }
        let Some((pool, url)) = &self.db else {
            return Lookup::Unavailable;
        };
        if !self.migrated.load(Ordering::Acquire) {
            return Lookup::Unavailable;
        }
        let span = self.query_span();
        let query = sqlx::query_as::<_, (String, String, DateTime<Utc>)>(USER_QUERY)
            .bind(id)
            .fetch_optional(pool);
        let outcome = tokio::time::timeout(QUERY_TIMEOUT, query)
            .instrument(span.clone())
            .await;
        record_query(&span, &outcome);
        match outcome {
            Err(_) => Lookup::Unavailable,
            Ok(Ok(Some((id, email, created_at)))) => {
                let body = UserBody {
                    id,
                    email,
                    created_at: created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                };
                Lookup::Found(serde_json::to_string(&body).expect("a user serialises"))
            }
            Ok(Ok(None)) => Lookup::NotFound,
            Ok(Err(e)) if is_unavailable(&e) => Lookup::Unavailable,
            Ok(Err(e)) => {
                warn!(error = %url.scrub(&e.to_string()), "user lookup failed");
                Lookup::Failed
            }
        }
    }

    /// A client span per query with the OpenTelemetry database semantic conventions. The query
    /// text is the parameterised statement: the id a caller sent is never in it.
    fn query_span(&self) -> Span {
        let peer = &self.peer;
        tracing::info_span!(
            target: "healthgate::db",
            "db",
            otel.name = "SELECT users",
            otel.kind = "client",
            otel.status_code = field::Empty,
            db.system.name = "postgresql",
            db.namespace = peer.database.as_str(),
            db.operation.name = "SELECT",
            db.collection.name = "users",
            db.query.summary = "SELECT users",
            db.query.text = USER_QUERY,
            db.response.status_code = field::Empty,
            db.response.returned_rows = field::Empty,
            server.address = peer.host.as_str(),
            server.port = i64::from(peer.port),
            error.type = field::Empty,
        )
    }

    pub fn record_pool_metrics(&self, metrics: &PoolMetrics) {
        if let Some((pool, _)) = &self.db {
            let idle = pool.num_idle() as i64;
            let active = i64::from(pool.size()) - idle;
            let connections = &metrics.connections;
            connections.with_label_values(&["app", "idle"]).set(idle);
            connections
                .with_label_values(&["app", "active"])
                .set(active.max(0));
        }
    }

    pub async fn close(&self) {
        if let Some((pool, _)) = &self.db {
            pool.close().await;
        }
    }
}

type QueryOutcome<T> = Result<Result<Option<T>, sqlx::Error>, tokio::time::error::Elapsed>;

fn record_query<T>(span: &Span, outcome: &QueryOutcome<T>) {
    let error_type = match outcome {
        Ok(Ok(row)) => {
            span.record("db.response.returned_rows", i64::from(row.is_some()));
            return;
        }
        Err(_) => "timeout".to_string(),
        Ok(Err(sqlx::Error::Database(db))) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            span.record("db.response.status_code", code.as_str());
            code
        }
        Ok(Err(sqlx::Error::PoolTimedOut)) => "pool_timeout".to_string(),
        Ok(Err(sqlx::Error::Io(_))) => "io".to_string(),
        Ok(Err(_)) => "sqlx".to_string(),
    };
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type.as_str());
}

#[derive(Serialize)]
struct UserBody {
    id: String,
    email: String,
    created_at: String,
}

/// Ids are opaque but bounded, so a malformed one never reaches the database.
/// The users API's connection pool, read on each scrape.
#[derive(Clone)]
pub struct PoolMetrics {
    connections: prometheus::IntGaugeVec,
}

impl PoolMetrics {
    pub fn register(registry: &prometheus::Registry) -> Self {
        Self {
            connections: registered(
                registry,
                prometheus::IntGaugeVec::new(
                    prometheus::Opts::new(
                        "db_pool_connections",
                        "PostgreSQL pool connections by state (idle, active).",
                    ),
                    &["pool", "state"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    ) || matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_validation() {
        for ok in ["a", "user-1", "A_b-9", &"x".repeat(64)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "a%20b",
            "ü",
            "a.b",
            &"x".repeat(65),
            "1;DROP",
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
